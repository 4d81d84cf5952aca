"""The LLaVA-1.5 family: what the wiring asks of it (`VlmFamily`), without importing transformers.

    adapter.py  LlavaAdapter: prompts ids, batched generation, loss closures, over [0, 1] pixels
    load.py     checkpoint or random build -> adapter, the encoder swapped in
    prompts.py  the vicuna_v1 prompts of the evaluations
    tiny.py     random-weight models of the real architecture (tests, demo)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlm_eval.errors import VlmEvalError
from vlm_eval.vlms.llava.prompts import INSTRUCTIONS

if TYPE_CHECKING:
    import torch

    from vlm_eval.cards import VlmCard
    from vlm_eval.contracts import VLM, ImageEncoder

ROBUST_RESOLUTION = 224  # the robust encoders' size: they replace the tower (256 image tokens)
NATIVE_ENCODERS = ("openai", "clip", "native")  # names that may stand for LLaVA's own 336-px tower


class LlavaFamily:
    prompts = tuple(INSTRUCTIONS)
    postprocess = "llava"  # LLaVA's own evaluation's clean-up

    def demonstrations(self, shots: int) -> tuple[int, bool]:
        if shots:
            raise VlmEvalError(f"--shots {shots}: LLaVA-1.5 is evaluated without in-context demonstrations")
        return 0, False

    def encoder_swapped(self, resolution: int, encoder: str) -> bool:
        """224 px: the encoder replaces the tower (the robust-encoder protocol); else LLaVA's own tower."""
        if resolution == ROBUST_RESOLUTION:
            return True
        if encoder not in NATIVE_ENCODERS:
            raise VlmEvalError(
                f"--resolution {resolution} runs LLaVA's own tower, so --encoder {encoder!r} would be "
                "ignored; robust encoders are 224-px models: use --resolution 224"
            )
        return False

    def weights_status(self, card: VlmCard) -> tuple[bool, str]:
        """Whether the card's weights are local, and where (cheap: no model code)."""
        from vlm_eval.cards import card_relative

        if card.build is not None:
            return True, "random weights, built on the fly"
        if card.path is not None:
            from vlm_eval.errors import CheckpointError
            from vlm_eval.vlms.folders import check_model_folder

            folder = card_relative(card, card.path)
            try:  # files only, cheap: a broken folder is refused before anything loads
                check_model_folder(folder, f"VLM {card.name}")
            except CheckpointError as exc:
                return False, str(exc)
            return True, str(folder)
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(card.hf_id, "config.json"), str):
            return True, f"HF cache ({card.hf_id})"
        return False, f"missing: `hf download {card.hf_id}`"

    def load(self, card: VlmCard, encoder: ImageEncoder | None, dtype: torch.dtype, device: str,
             allow_download: bool, device_map: str | None = None) -> VLM:
        from vlm_eval.vlms.llava.load import load_llava

        return load_llava(card, encoder, dtype, device, allow_download, device_map)


FAMILY = LlavaFamily()
