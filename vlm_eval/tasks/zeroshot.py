"""Zero-shot image classification: the encoder's CLIP picks one of the task's classes per image.

The model is a `Classifier` (the encoder family builds it from the class names and the card's
templates, `vlm_eval.encoders.zeroshot`); the task reads the classes, turns logits into records and
scores accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from vlm_eval.cards import TaskCard
from vlm_eval.contracts import Classifier, Json, Record, Step
from vlm_eval.data.imagefolder import ImageClass
from vlm_eval.data.samples import Sample
from vlm_eval.encoders.zeroshot import template_problem
from vlm_eval.errors import CardError

TOP_K = 5  # predictions listed per sample


class ZeroShot:
    """Zero-shot task type: the class with the highest logit is the prediction; accuracy x100."""

    metric = "accuracy"
    model_kind = "classifier"

    def __init__(self, card: TaskCard, options: dict[str, Json]):
        self.card = card
        problem = template_problem(card.templates)
        if problem:
            raise CardError(f"task card {card.card_path}: field `templates`: {problem}")
        self.templates = tuple(card.templates)
        self.classes: list[ImageClass] = []

    def check_requirements(self) -> None:
        pass

    def setup(self, files: dict[str, Path]) -> None:
        """Read the task's classes (`ImageClass`: index, folder, name) in label order."""
        from vlm_eval.data import read_class_index

        if "class_index_json" not in files:
            raise CardError(f"task card {self.card.card_path}: a zeroshot task needs `class_index_json` under `files`")
        self.classes = read_class_index(files["class_index_json"])

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def evaluate_batch(self, classifier: Classifier, samples: list[Sample], pixels: torch.Tensor,
                       step: Step) -> list[Record]:
        with torch.no_grad():
            return self.records(samples, classifier(pixels.to(classifier.device)), self.classes)

    def records(self, samples: Sequence[Sample], logits: torch.Tensor, classes: Sequence[ImageClass]) -> list[Record]:
        """One result record per sample from its row of logits (score 100 if right, else 0)."""
        from vlm_eval.data.imagefolder import label_folder

        label_of = {c.folder: c.index for c in classes}
        ranked = logits.float().topk(min(TOP_K, len(classes)), dim=-1).indices.tolist()
        records = []
        for sample, top in zip(samples, ranked):
            label = label_of[label_folder(sample)]
            records.append({
                "id": sample.id, "image": str(sample.image_path),
                "label": classes[label].name, "prediction": classes[top[0]].name,
                "score": 100.0 if top[0] == label else 0.0,
                "top5": [classes[i].name for i in top], "label_index": label, "prediction_index": top[0],
            })
        return records

    def aggregate(self, records: list[Record], step: Step) -> dict[str, float]:
        """Accuracy (mean per-sample score, x100), chance level (100 / n_classes) and n_classes."""
        return self.metrics(records, len(self.classes))

    def metrics(self, records: list[Record], n_classes: int) -> dict[str, float]:
        accuracy = sum(r["score"] for r in records) / len(records) if records else float("nan")
        return {"accuracy": accuracy, "chance": 100.0 / n_classes, "n_classes": n_classes}

    def options(self) -> dict[str, Json]:
        return {"templates": list(self.templates)}
