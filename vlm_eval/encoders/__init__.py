"""CLIP vision encoders: building, loading checkpoints, converting to transformers.

Families (the code that serves a card's `family`) are registered lazily, so importing this package
imports neither torch nor open_clip and listing encoders stays fast.
"""

from vlm_eval.registry import Registry

ENCODER_FAMILIES = Registry("encoder family")
ENCODER_FAMILIES.register_lazy("openclip", "vlm_eval.encoders.openclip_family:FAMILY")  # a contracts.EncoderFamily
DEFAULT_FAMILY = "openclip"  # the family of an encoder given as a checkpoint path or hf-hub: id
