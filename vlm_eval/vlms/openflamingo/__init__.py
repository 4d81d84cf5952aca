"""The OpenFlamingo family, written for current transformers: what the wiring asks of it (`VlmFamily`).

    modules.py  Perceiver resampler, gated cross-attention, the wrapped decoder layer
    model.py    FlamingoModel: vision encoder -> resampler -> a transformers causal LM, media located by `<image>`
    adapter.py  FlamingoAdapter: prompts ids, beam search, summed-CE loss closures over [0, 1] pixels
    load.py     card -> language model + checkpoint (strict keys) + any encoder card as the vision encoder
    prompts.py  OpenFlamingo's evaluation prompts, demonstrations and generation settings
    tiny.py     random-weight models of the real architecture (tests, demo)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlm_eval.errors import VlmEvalError
from vlm_eval.vlms.openflamingo.prompts import CHUNKS, demonstration_count

if TYPE_CHECKING:
    import torch

    from vlm_eval.cards import VlmCard
    from vlm_eval.contracts import VLM, ImageEncoder

RESOLUTION = 224  # OpenFlamingo's CLIP ViT-L/14 input; every encoder card is a 224-px ViT


class OpenFlamingoFamily:
    prompts = tuple(CHUNKS)
    postprocess = "openflamingo"

    def encoder_swapped(self, resolution: int, encoder: str) -> bool:
        if resolution != RESOLUTION:
            raise VlmEvalError(f"OpenFlamingo reads 224-px images; --resolution {resolution} does not apply to it")
        return True

    def demonstrations(self, shots: int) -> tuple[int, bool]:
        """(demonstrations per sample, whether they carry images): "0 shots" is two text-only ones."""
        return demonstration_count(shots)

    def weights_status(self, card: VlmCard) -> tuple[bool, str]:
        from vlm_eval.vlms.openflamingo.status import weights_status

        return weights_status(card)

    def load(self, card: VlmCard, encoder: ImageEncoder | None, dtype: torch.dtype, device: str,
             allow_download: bool, device_map: str | None = None) -> VLM:
        from vlm_eval.vlms.openflamingo.load import load_openflamingo

        return load_openflamingo(card, encoder, dtype, device, allow_download, device_map)


FAMILY = OpenFlamingoFamily()
