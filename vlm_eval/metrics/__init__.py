"""Scoring: CIDEr-D for captions, VQA accuracy, and per-model answer post-processing.

Each function reproduces a reference implementation (pycocoevalcap, the official VQA
evaluation, LLaVA's and OpenFlamingo's evaluation code); see the module docstrings.
"""

from vlm_eval.metrics.answers import (
    CAPTION_STYLES,
    VQA_ANSWER_STYLES,
    postprocess_caption,
    postprocess_vqa_answer,
)
from vlm_eval.metrics.cider import CiderSet, cider, require_java
from vlm_eval.metrics.vqa import VQA_NORMALIZE_MODES, normalize_answer, vqa_accuracy

__all__ = [
    "CAPTION_STYLES",
    "VQA_ANSWER_STYLES",
    "VQA_NORMALIZE_MODES",
    "CiderSet",
    "cider",
    "normalize_answer",
    "postprocess_caption",
    "postprocess_vqa_answer",
    "require_java",
    "vqa_accuracy",
]
