"""Reading encoder checkpoints and loading them into an open_clip vision tower (or a whole CLIP).

Robust CLIP encoders are released in three layouts, all holding open_clip `VisionTransformer` weights:

* `raw_visual`: `model.visual.state_dict()` itself (keys `conv1.weight`, `transformer.resblocks.0...`);
  FARE / TeCoA `.pt` files of the RobustVLM release and Sim-CLIP.
* `vision_encoder_state_dict`: `{'vision_encoder_state_dict': {...raw visual...}, ...}` (TeCoA / TTC
  training scripts).
* `open_clip_full`: a whole CLIP state dict (`visual.*`, `token_embedding.*`, `logit_scale`, ...), as
  open_clip pushes to the HF hub (`open_clip_model.safetensors`, `open_clip_pytorch_model.bin`).

open_clip training checkpoints wrap the state dict as `{'epoch', 'name', 'state_dict', 'optimizer'}`
and DataParallel/DDP prefix every key with `module.`; both are undone here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_eval.errors import CheckpointError, MissingResourceError, NonFiniteWeightsError

log = logging.getLogger(__name__)

FORMATS = ("auto", "raw_visual", "vision_encoder_state_dict", "open_clip_full")
TECOA_KEY = "vision_encoder_state_dict"
TEXT_TOWER_KEY = "token_embedding.weight"  # present in every open_clip CLIP with its own text tower
MAX_LISTED = 10  # keys listed per category in an error message


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file into its top-level mapping, without executing pickled code.

    `.safetensors` files are read with safetensors; anything else with
    `torch.load(weights_only=True)`, which refuses arbitrary pickled objects (a whole model, an
    argparse namespace, ...). The mapping may still be nested (`{'state_dict': ...}`,
    `{'vision_encoder_state_dict': ...}`); `extract_visual_state_dict` unpacks it.

    Raises:
        MissingResourceError: the file does not exist.
        CheckpointError: the file cannot be read, or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, safetensors and I/O errors all mean "unusable file"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {_reason(exc)}\n"
            "Checkpoints are read with torch.load(weights_only=True) (or safetensors), which refuses "
            "pickled objects other than tensors and plain containers. If this file stores a whole "
            "model object from a source you trust, re-save its weights: "
            "torch.save(model.visual.state_dict(), 'visual.pt')."
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; "
            "re-save it with torch.save(model.visual.state_dict(), path)"
        )
    return dict(obj)


def extract_visual_state_dict(obj: Mapping[str, Any], fmt: str) -> dict[str, torch.Tensor]:
    """The open_clip `VisionTransformer` state dict inside a checkpoint of layout `fmt`.

    Args:
        obj: what `read_state_dict` returned.
        fmt: one of `FORMATS`; "auto" detects the layout from the keys.

    Raises:
        CheckpointError: unknown format, or `obj` does not have the layout `fmt` names.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    obj = _unwrap(obj)
    if fmt == "auto":
        fmt = detect_format(obj)
        log.info("checkpoint format detected: %s", fmt)
    if fmt == "vision_encoder_state_dict":
        if not isinstance(obj.get(TECOA_KEY), Mapping):
            raise CheckpointError(
                f"format vision_encoder_state_dict needs a {TECOA_KEY!r} entry; this checkpoint's "
                f"top-level keys are {_sample(obj)}; try format auto"
            )
        obj = _strip_prefix(obj[TECOA_KEY], "module.")
    elif fmt == "open_clip_full":
        visual = {k[len("visual."):]: v for k, v in obj.items() if k.startswith("visual.")}
        if not visual:
            raise CheckpointError(
                f"format open_clip_full needs 'visual.*' keys; this checkpoint has {_sample(obj)} "
                "(a raw visual state dict? then use format raw_visual or auto)"
            )
        obj = visual
    _check_tensors(obj)
    return dict(obj)


def extract_clip_state_dict(obj: Mapping[str, Any], fmt: str) -> dict[str, torch.Tensor]:
    """The whole open_clip CLIP state dict (vision and text towers, `logit_scale`) in a checkpoint.

    Zero-shot classification needs the text tower, so only the `open_clip_full` layout will do; a
    vision-only checkpoint is refused with an explanation rather than a list of missing keys.

    Args:
        obj: what `read_state_dict` returned.
        fmt: one of `FORMATS`; "auto" detects the layout from the keys.

    Raises:
        CheckpointError: unknown format, unknown layout, or a checkpoint without the text tower.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    obj = _unwrap(obj)
    layout = detect_format(obj) if fmt in ("auto", "open_clip_full") else fmt
    if layout == "open_clip_full" and TEXT_TOWER_KEY not in obj and any(str(k).startswith("text.") for k in obj):
        raise CheckpointError(
            "this checkpoint's text tower is a custom one (keys text.*, open_clip's CustomTextCLIP, e.g. a HF text "
            "model); zero-shot classification supports CLIP models with open_clip's own text tower"
        )
    if layout != "open_clip_full" or TEXT_TOWER_KEY not in obj:
        raise CheckpointError(
            f"this checkpoint holds only a vision tower (layout {layout}, no {TEXT_TOWER_KEY!r}), but zero-shot "
            "classification needs the text tower too. Name the encoder card whose text tower it pairs with in its "
            "card (`text_tower: openai`, as the robust FARE / TeCoA / Sim-CLIP cards do), or use a full open_clip "
            "CLIP checkpoint (model.state_dict(), keys visual.*, token_embedding.*, logit_scale, ...)."
        )
    _check_tensors(obj)
    return dict(obj)


def detect_format(obj: Mapping[str, Any]) -> str:
    """Which of the concrete `FORMATS` an (unwrapped) checkpoint mapping has.

    Raises:
        CheckpointError: none fits; the message says what the keys look like instead.
    """
    keys = list(obj)
    if TECOA_KEY in obj:
        return "vision_encoder_state_dict"
    if any(k.startswith("visual.") for k in keys):
        return "open_clip_full"
    if "conv1.weight" in obj or any(k.startswith("transformer.resblocks.") for k in keys):
        return "raw_visual"
    hint = ""
    if any(k.startswith(("vision_model.", "embeddings.patch_embedding")) for k in keys):
        hint = " These are transformers (HF) CLIP keys; this loader needs open_clip weights."
    raise CheckpointError(f"cannot tell the layout of a checkpoint with keys {_sample(obj)}.{hint}")


def load_weights_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `module` strictly, or explain exactly why it does not fit.

    Strict on purpose: a non-strict load with a wrong prefix "succeeds" while loading nothing.
    Works on a module built on the meta device too (tensors are then assigned, not copied).

    Args:
        module: an open_clip vision tower or whole CLIP.
        state_dict: its weights, keys relative to the module.
        source: where the weights came from, named in errors.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys, listed (up to `MAX_LISTED` each).
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(source, missing, unexpected, mismatched))
    on_meta = any(t.is_meta for t in expected.values())
    result = module.load_state_dict(state_dict, strict=True, assign=on_meta)
    assert not result.missing_keys and not result.unexpected_keys, result  # strict already raised


def require_finite(tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Refuse weights with a NaN or infinite value, naming `source` and the first tensor that holds one: such a
    model still runs and scores (CIDEr 0, accuracy at chance) as if nothing were wrong."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteWeightsError(
                f"{source}: tensor {name!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the file is "
                "damaged or comes from a training run that diverged: use another checkpoint")


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """Undo `module.` prefixes and open_clip's `{'state_dict': ...}` training wrapper."""
    obj = _strip_prefix(obj, "module.")
    while isinstance(obj.get("state_dict"), Mapping):
        obj = _strip_prefix(obj["state_dict"], "module.")
    return obj


def _strip_prefix(obj: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
        return {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def _check_tensors(obj: Mapping[str, Any]) -> None:
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint entries that are not tensors: {bad[:MAX_LISTED]}")


def _mismatch_message(source: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    lines = [f"checkpoint {source} does not fit the encoder architecture:"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:MAX_LISTED])}{more}")
    lines.append(f"Likely cause: {_likely_cause(missing, unexpected, mismatched)}")
    return "\n".join(lines)


def _likely_cause(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    if any(k.startswith("visual.") for k in unexpected):
        return "a full CLIP checkpoint given as raw_visual; use format open_clip_full (or auto)."
    if any(".ls_1." in k or ".ls_2." in k for k in unexpected):
        return "the checkpoint has layer scale (ls_1/ls_2) that the card's architecture lacks."
    if mismatched:
        return "a different architecture (width, depth, patch or image size) than the card's `arch`."
    if missing and not unexpected:
        if set(missing) == {"proj"}:
            return "the checkpoint was saved without the output projection `proj`."
        return "a truncated checkpoint, or a shallower architecture than the card's `arch`."
    return "the checkpoint is not an open_clip ViT of the card's `arch` (compare the key names)."


def _sample(obj: Mapping[str, Any]) -> list[str]:
    return [str(k) for k in list(obj)[:MAX_LISTED]]


def _reason(exc: BaseException) -> str:
    """The informative line of an exception (weights_only errors bury it under boilerplate)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line[:300]
    return lines[0][:300] if lines else ""
