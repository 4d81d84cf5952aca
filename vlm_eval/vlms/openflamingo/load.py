"""Building an OpenFlamingo from its card: the language model through transformers, the Flamingo
parts from the released `checkpoint.pt` by their published names (every key checked), and the vision
encoder, which is any encoder card's CLIP ViT.

Where the files are: `status.py`. A card's other `settings`: `cross_attn_every_n_layers`,
`vision_encoder` (the encoder card used when none is swapped in), and `perceiver` / `cross_attention`
(the modules' sizes where they differ from the released models').
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlm_eval.cards import VlmCard
from vlm_eval.contracts import ImageEncoder
from vlm_eval.encoders.checkpoints import require_finite
from vlm_eval.errors import CheckpointError, MissingResourceError, VlmEvalError
from vlm_eval.vlms.folders import check_model_folder, transformers_refusals
from vlm_eval.vlms.openflamingo.adapter import FlamingoAdapter
from vlm_eval.vlms.openflamingo.model import FlamingoModel
from vlm_eval.vlms.openflamingo.mosaic import is_mosaic_gpt, load_mosaic_gpt
from vlm_eval.vlms.openflamingo.prompts import END_OF_CHUNK, IMAGE
from vlm_eval.vlms.openflamingo.status import Location, checkpoint_location, how_to_get, language_model_location

FLAMINGO_TOKENS = (END_OF_CHUNK, IMAGE)
RENAMED = {"gpt_neox": {"lang_encoder.embed_out.weight": "lang_encoder.lm_head.weight"}}  # published -> transformers 5


def load_openflamingo(card: VlmCard, encoder: ImageEncoder | None, dtype: torch.dtype, device: str,
                      allow_download: bool = False, device_map: str | None = None) -> FlamingoAdapter:
    """The Flamingo of an `openflamingo` card with `encoder` as its vision encoder (None: the card's own)."""
    if device_map is not None:
        raise VlmEvalError("--device-map is not supported for OpenFlamingo yet (the 9B model fits one GPU in fp16)")
    settings = card.settings or {}
    encoder = encoder or own_encoder(settings)
    lm, tokenizer = language_model(card, allow_download, dtype)
    add_flamingo_tokens(tokenizer, lm)
    model = FlamingoModel(encoder.visual, lm, tokenizer.convert_tokens_to_ids(IMAGE), encoder.visual.conv1.out_channels,
                          settings.get("cross_attn_every_n_layers", 1), settings.get("perceiver"),
                          settings.get("cross_attention"))
    if card.build is not None:
        from vlm_eval.vlms.openflamingo.tiny import open_gates

        open_gates(model, card.build.get("gates", 0.5), card.build.get("seed", 0))
    else:
        load_checkpoint(model, checkpoint_file(card, allow_download))
    model.to(device=device, dtype=dtype)
    return FlamingoAdapter(model, tokenizer, encoder.image_size)


def own_encoder(settings: dict[str, Any]) -> ImageEncoder:
    from vlm_eval import cards
    from vlm_eval.encoders import ENCODER_FAMILIES

    encoder_card = cards.load_card("encoders", settings.get("vision_encoder", "openai"))
    return ENCODER_FAMILIES.get(encoder_card.family).load_vision(encoder_card, None, False)


def add_flamingo_tokens(tokenizer, lm: torch.nn.Module) -> None:
    """`<|endofchunk|>`, `<image>` and, where the tokenizer has none, `<PAD>`, in OpenFlamingo's order;
    the embedding then has one row per token, as the released checkpoints do."""
    tokenizer.add_tokens(list(FLAMINGO_TOKENS), special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    tokenizer.padding_side = "left"
    if lm.get_input_embeddings().num_embeddings != len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)


def language_model(card: VlmCard, allow_download: bool, dtype: torch.dtype):
    """(causal LM, tokenizer): a random build, or the card's language model through transformers."""
    if card.build is not None:
        from vlm_eval.vlms.openflamingo.tiny import byte_tokenizer, random_language_model

        tokenizer = byte_tokenizer()
        spec = card.build["language_model"]
        return random_language_model(spec["kind"], spec["config"], len(tokenizer), card.build.get("seed", 0)), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = language_model_location(card)
    source = where.repo or where.name
    what = f"VLM {card.name!r}, language model"
    try:
        with transformers_refusals(what, source):
            folder = local_folder(where, allow_download)
            check_model_folder(folder, what, tokenizer=False)  # hub models may take their tokenizer from elsewhere
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download)
            if is_mosaic_gpt(json.loads((folder / "config.json").read_text())):  # OpenFlamingo-3B's MPT-1B
                lm = load_mosaic_gpt(folder, dtype)
            else:
                lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except OSError as exc:
        raise MissingResourceError(f"VLM {card.name!r}: cannot load its language model {source} "
                                   f"({exc.__class__.__name__}). {how_to_get(card)}") from exc
    require_finite(lm.named_parameters(), f"VLM {card.name!r}, language model {folder}")
    return lm, tokenizer


def local_folder(where: Location, allow_download: bool) -> Path:
    """The language model's folder: the card's own, or its hub snapshot (fetched only if allowed)."""
    if where.repo is None:
        return Path(where.name)
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
    return Path(snapshot_download(where.repo, allow_patterns=patterns, local_files_only=not allow_download))


def checkpoint_file(card: VlmCard, allow_download: bool) -> Path:
    where = checkpoint_location(card)
    if where.repo is None:
        if not Path(where.name).is_file():
            raise MissingResourceError(f"VLM {card.name!r}: no Flamingo checkpoint at {where}. {how_to_get(card)}")
        return Path(where.name)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(where.repo, where.name, local_files_only=not allow_download))
    except Exception as exc:  # the hub's errors for a missing file, offline or not, share no base class
        raise MissingResourceError(f"VLM {card.name!r}: the Flamingo checkpoint {where} is not in the local "
                                   f"Hugging Face cache. {how_to_get(card)}") from exc


def load_checkpoint(model: FlamingoModel, path: Path) -> None:
    """The checkpoint's tensors into `model`; missing, unexpected or misshapen keys fail, listed."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model_state_dict", state)
    state = canonical_keys(state, model)
    require_finite(state.items(), str(path))
    expected = model.state_dict()
    wanted = set(model.checkpoint_keys())
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    misshapen = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                 for k in sorted(wanted & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshapen:
        raise CheckpointError(f"{path} does not fit this OpenFlamingo card:" + "".join(
            f"\n  {what} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshapen))
            if keys))
    model.load_state_dict(state, strict=False)


def canonical_keys(state: dict[str, torch.Tensor], model: FlamingoModel) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by the names of the wrapped decoder layers.

    OpenFlamingo's model holds two aliases that some of its saved files keep: `lang_encoder.
    gated_cross_attn_layers.{i}` (the cross-attention of decoder layer i, mapped here) and
    `lang_encoder.old_decoder_blocks.{i}` (the frozen decoder layers, which the language model's own
    weights provide: dropped). transformers 5 calls GPT-NeoX's output embedding `lm_head` (`embed_out` before).
    """
    from vlm_eval.vlms.openflamingo.model import DECODER_LAYERS

    model_type = model.lang_encoder.config.model_type
    layers, renamed = DECODER_LAYERS[model_type], RENAMED.get(model_type, {})
    canonical = {}
    for key, tensor in state.items():
        if key.startswith("lang_encoder.old_decoder_blocks."):
            continue
        key = renamed.get(key, key)
        if key.startswith("lang_encoder.gated_cross_attn_layers."):
            index, rest = key.removeprefix("lang_encoder.gated_cross_attn_layers.").split(".", 1)
            key = f"lang_encoder.{layers}.{index}.gated_cross_attn_layer.{rest}"
        canonical[key] = tensor
    return canonical
