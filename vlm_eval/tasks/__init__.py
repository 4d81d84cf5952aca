"""Task types (captioning, VQA, zero-shot classification): prompts, answer post-processing and scoring of a task card."""

from vlm_eval.registry import Registry

TASK_TYPES = Registry("task type")
TASK_TYPES.register_lazy("captioning", "vlm_eval.tasks.captioning:Captioning")
TASK_TYPES.register_lazy("vqa", "vlm_eval.tasks.vqa:VQA")
TASK_TYPES.register_lazy("zeroshot", "vlm_eval.tasks.zeroshot:ZeroShot")
