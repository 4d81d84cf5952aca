"""Adversarial fine-tuning of CLIP encoders: FARE, TeCoA, Sim-CLIP (both forms) and MMCoA.

`python -m vlm_eval finetune RECIPE [--key value ...]` (docs/finetune.md). One objective per module
of `objectives/`, registered lazily in OBJECTIVES; one training loop (`loop.py`) over accelerate.
"""

from vlm_eval.registry import Registry

OBJECTIVES = Registry("fine-tuning objective")
OBJECTIVES.register_lazy("fare", "vlm_eval.finetune.objectives.fare:Fare")
OBJECTIVES.register_lazy("tecoa", "vlm_eval.finetune.objectives.tecoa:TeCoA")
OBJECTIVES.register_lazy("simclip", "vlm_eval.finetune.objectives.simclip:SimClip")
OBJECTIVES.register_lazy("simclip-released", "vlm_eval.finetune.objectives.simclip:SimClipReleased")
OBJECTIVES.register_lazy("mmcoa", "vlm_eval.finetune.objectives.mmcoa:MMCoA")
