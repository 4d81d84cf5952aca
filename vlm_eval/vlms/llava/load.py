"""Loading a LLaVA-1.5 checkpoint (or a random-weight build) with a CLIP encoder swapped in."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPVisionModel, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from vlm_eval.cards import VlmCard, card_relative
from vlm_eval.contracts import ImageEncoder
from vlm_eval.encoders.checkpoints import require_finite
from vlm_eval.errors import CheckpointError, MissingResourceError, VlmEvalError
from vlm_eval.vlms.folders import check_model_folder, transformers_refusals
from vlm_eval.vlms.llava.adapter import LlavaAdapter


def swap_vision_tower(model: LlavaForConditionalGeneration, vision_model: CLIPVisionModel) -> None:
    """Put a converted `CLIPVisionModel` into LLaVA in place of its own tower, projector unchanged."""
    if (model.config.vision_feature_layer, model.config.vision_feature_select_strategy) != (-2, "default"):
        raise CheckpointError(
            "the robust-encoder protocol reads vision layer -2 without CLS; this LLaVA uses layer "
            f"{model.config.vision_feature_layer} with strategy {model.config.vision_feature_select_strategy!r}"
        )
    projector_in = model.model.multi_modal_projector.linear_1.in_features
    if vision_model.config.hidden_size != projector_in:
        raise CheckpointError(
            f"the encoder's width {vision_model.config.hidden_size} does not fit this LLaVA's projector "
            f"(expects {projector_in}); pick an encoder of the VLM's vision architecture"
        )
    param = next(model.model.vision_tower.parameters())  # where the tower sits (split models: on its own GPU)
    model.model.vision_tower = vision_model.to(device=param.device, dtype=param.dtype).eval()
    model.config.vision_config = vision_model.config


def load_llava(card: VlmCard, encoder: ImageEncoder | None, dtype: torch.dtype, device: str, allow_download: bool = False,
               device_map: str | None = None) -> LlavaAdapter:
    """Build the LLaVA of a VLM card, with `encoder` swapped in (robust protocol) or its own tower.

    Args:
        card: a `VlmCard` of family "llava" (an `hf_id`, or a `build` for random weights).
        encoder: an `ImageEncoder` to swap in, or None for the native tower.
        dtype: weights' dtype (losses are always computed in fp32).
        device: torch device.
        allow_download: let transformers fetch missing files from the hub.
        device_map: None (all of it on `device`), or transformers' split of the layers over the visible
            GPUs ("auto", "balanced", ...) for a model that does not fit on one.
    """
    model, tokenizer = _load_model(card, dtype, allow_download, device_map)
    if encoder is not None:
        swap_vision_tower(model, encoder.hf_vision_model())
    if device_map is None:
        model.to(device=device, dtype=dtype)
    return LlavaAdapter(model, tokenizer, mode="robust" if encoder is not None else "native")


def _load_model(card: VlmCard, dtype: torch.dtype, allow_download: bool,
                device_map: str | None) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase]:
    if card.build is not None:
        if device_map is not None:
            raise VlmEvalError(f"--device-map splits a checkpoint as it loads; VLM {card.name!r} is built with "
                               "random weights in memory: drop --device-map")
        from vlm_eval.vlms.llava.tiny import byte_tokenizer, random_llava

        return random_llava(card.build["vision"], card.build["text"], card.build.get("seed", 0)), byte_tokenizer()
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    source = local_path(card) or card.hf_id
    if card.path is not None:
        check_model_folder(Path(source), f"VLM {card.name!r}")
    try:
        with transformers_refusals(f"VLM {card.name!r}", source):
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
            model = LlavaForConditionalGeneration.from_pretrained(source, dtype=dtype, device_map=device_map,
                                                                  local_files_only=not allow_download)
    except OSError as exc:
        if card.path is not None:
            raise MissingResourceError(f"VLM {card.name!r}: cannot load {source}: {exc}") from exc
        raise MissingResourceError(
            f"VLM {card.name!r}: the weights of {card.hf_id} are not in the local Hugging Face cache "
            f"({exc.__class__.__name__}). Get them with `hf download {card.hf_id}` (about 14 GB), "
            "or run with --allow-download."
        ) from exc
    require_finite(model.named_parameters(), f"VLM {card.name!r} ({source})")
    return model, tokenizer


def local_path(card: VlmCard) -> str | None:
    """The card's shipped model folder (relative to the card), or None for hub models."""
    if card.path is None:
        return None
    return str(card_relative(card, card.path))
