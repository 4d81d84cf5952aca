"""Evaluation data: annotation readers, seeded subsets and image preprocessing."""

from vlm_eval.data.images import (
    CLIP_MEAN,
    CLIP_MEAN_RGB,
    CLIP_STD,
    expand_to_square,
    load_image,
    preprocess_clip_image,
    preprocess_image,
)
from vlm_eval.data.imagefolder import ImageClass, read_class_index, read_class_names, read_imagefolder
from vlm_eval.data.karpathy import read_coco_references, read_karpathy_captions
from vlm_eval.data.samples import Sample
from vlm_eval.data.subset import save_subset_ids, select_subset, subset_indices
from vlm_eval.data.vqa import read_vqa

__all__ = [
    "CLIP_MEAN",
    "CLIP_MEAN_RGB",
    "CLIP_STD",
    "ImageClass",
    "Sample",
    "expand_to_square",
    "load_image",
    "preprocess_clip_image",
    "preprocess_image",
    "read_class_index",
    "read_class_names",
    "read_coco_references",
    "read_imagefolder",
    "read_karpathy_captions",
    "read_vqa",
    "save_subset_ids",
    "select_subset",
    "subset_indices",
]
