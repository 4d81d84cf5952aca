"""CLIP vision encoders: building, loading checkpoints, converting to transformers.

Families (the code that serves a card's `family`) are registered lazily, and the public functions are
re-exported lazily too (PEP 562 `__getattr__`): importing `vlm_eval.encoders` imports neither torch
nor open_clip, so that listing encoders stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlm_eval.registry import Registry

ENCODER_FAMILIES = Registry("encoder family")
ENCODER_FAMILIES.register_lazy("openclip", "vlm_eval.encoders.openclip_family:load_openclip_encoder")

# public name -> submodule that defines it
_EXPORTS = {
    "LoadedEncoder": "openclip_family",
    "load_openclip_encoder": "openclip_family",
    "build_visual": "openclip_family",
    "model_config": "openclip_family",
    "resolve_checkpoint": "openclip_family",
    "weights_status": "openclip_family",
    "encoder_card_from_spec": "openclip_family",
    "FORMATS": "checkpoints",
    "sha256_file": "checkpoints",
    "read_state_dict": "checkpoints",
    "extract_visual_state_dict": "checkpoints",
    "load_visual_weights": "checkpoints",
    "UnsupportedArchitectureError": "convert",
    "hf_vision_config": "convert",
    "convert_visual_state_dict": "convert",
    "to_hf_vision_model": "convert",
}

__all__ = ["ENCODER_FAMILIES", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
