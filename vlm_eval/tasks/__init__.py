"""Task types (captioning, VQA): prompts, answer post-processing and scoring of a task card."""

from vlm_eval.registry import Registry

TASK_TYPES = Registry("task type")
TASK_TYPES.register_lazy("captioning", "vlm_eval.tasks.captioning:Captioning")
TASK_TYPES.register_lazy("vqa", "vlm_eval.tasks.vqa:VQA")
