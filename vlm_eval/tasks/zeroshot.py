"""Zero-shot image classification: the encoder's CLIP picks one of the task's classes per image.

The model is a `Classifier` (the encoder family builds it from the class names and the card's
templates, `vlm_eval.encoders.zeroshot`); the task reads the classes, turns logits into records and
scores accuracy.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from vlm_eval.cards import TaskCard
from vlm_eval.contracts import Classifier, Json, LossFn, Record, Step
from vlm_eval.data.imagefolder import ImageClass
from vlm_eval.data.samples import Sample
from vlm_eval.encoders.zeroshot import template_problem
from vlm_eval.errors import CardError, NonFiniteOutputError
from vlm_eval.metrics.bootstrap import weighted_means

if TYPE_CHECKING:
    from vlm_eval.attacks.executor import Worst
    from vlm_eval.attacks.schedule import Run

TOP_K = 5  # predictions listed per sample
TARGET_CLASSES = 9  # APGD-T's targets: the classes after the true one by clean logit


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
        self.masked_lm_name = options.get("masked_lm")
        self.masked_lm: tuple[object, object] | None = None  # BERT-Attack's on the class prompts, if named

    def check_requirements(self) -> None:
        if self.masked_lm_name:
            from vlm_eval.attacks.text import load_masked_lm

            self.masked_lm = load_masked_lm(self.masked_lm_name)

    def setup(self, files: dict[str, Path]) -> None:
        """Read the task's classes (`ImageClass`: index, folder, name) in label order."""
        from vlm_eval.data import read_class_index

        from vlm_eval.tasks.data import as_class_folders

        self.classes = read_class_index(as_class_folders(self.card, files)["class_index_json"])

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def evaluate_batch(self, classifier: Classifier, samples: list[Sample], pixels: torch.Tensor,
                       step: Step) -> list[Record]:
        """The batch's records: the clean prediction and, in an attacked run, each sample's worst one."""
        with torch.no_grad():
            logits = classifier(pixels.to(classifier.device))
        if not bool(torch.isfinite(logits).all()):  # an argmax over NaN is a silent wrong answer
            raise NonFiniteOutputError("the zero-shot classifier's logits", [s.id for s in samples],
                                       str(classifier.dtype))
        records = self.records(samples, logits, self.classes)
        if step.attack is not None:
            self.attack(classifier, samples, pixels, logits, records, step)
        return records

    def attack(self, classifier: Classifier, samples: list[Sample], pixels: torch.Tensor, logits: torch.Tensor,
               records: list[Record], step: Step) -> None:
        """Run the attack's schedule (each run on the samples still right) and add `adversarial` to each record."""
        from vlm_eval.attacks.executor import Worst, execute
        from vlm_eval.attacks.snapshot import BatchSnapshot
        from vlm_eval.metrics.similarity import perturbation_norms
        from vlm_eval.results import save_adversarial

        plan, ids = step.attack, [s.id for s in samples]
        folders = [c.folder for c in self.classes]
        texts = [[folders[r["label_index"]]] + ranked_others(row, r["label_index"], TARGET_CLASSES, folders)
                 for r, row in zip(records, logits.float().tolist())]
        clean = [folders[r["prediction_index"]] for r in records]
        worst = Worst.start(pixels, clean, [r["score"] for r in records], texts)
        own_weights = prompts = None
        if plan.on_prompts:  # MMCoA's text attack first: each sample's own class prompts
            from vlm_eval.tasks.prompt_attack import attack_prompts

            labels = torch.tensor([r["label_index"] for r in records])
            own_weights, prompts = attack_prompts(classifier, pixels, labels, self.masked_lm)
        target = ClassifierTarget(classifier, [t[0] for t in texts], folders, ids, own_weights)
        if prompts:
            keep_worse(worst, target, pixels, "prompts " + ("bert-attack" if self.masked_lm else "hotflip"))
        checkpoint = BatchSnapshot(step.run_dir, ids, plan.describe(), plan.steps, len(plan.schedule.runs))
        worst = execute(plan, pixels, classifier.device, texts, worst, target, checkpoint)
        save_adversarial(step.run_dir, ids, worst.pixels)
        names = {c.folder: c.name for c in self.classes}
        for i, (record, size) in enumerate(zip(records, perturbation_norms(pixels, worst.pixels))):
            record["adversarial"] = {"prediction": names[worst.output[i]], "score": worst.score[i],
                                     "attack": worst.by[i], "runs": worst.runs[i], "loss": worst.loss[i],
                                     "steps": worst.steps[i], "perturbation": size}
            if prompts:
                record["adversarial"]["prompts"] = prompts[i]

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
        """Accuracy (mean per-sample score, x100), chance level (100 / n_classes) and n_classes; attacked, the
        robust accuracy (right on the clean image and after every run)."""
        metrics = self.metrics(records, len(self.classes))
        if records and "adversarial" in records[0]:
            metrics["accuracy_robust"] = sum(r["adversarial"]["score"] for r in records) / len(records)
        return metrics

    def resampled(self, records: list[Record], draws: np.ndarray) -> dict[str, np.ndarray]:
        """Accuracy and robust accuracy under each bootstrap resample (`draws`, over `records` in order)."""
        values = {"accuracy": weighted_means(draws, np.array([r["score"] for r in records]))}
        if records and "adversarial" in records[0]:
            values["accuracy_robust"] = weighted_means(draws, np.array([r["adversarial"]["score"] for r in records]))
        return values

    def metrics(self, records: list[Record], n_classes: int) -> dict[str, float]:
        accuracy = sum(r["score"] for r in records) / len(records) if records else float("nan")
        return {"accuracy": accuracy, "chance": 100.0 / n_classes, "n_classes": n_classes}

    def options(self) -> dict[str, Json]:
        return {"templates": list(self.templates)}


def keep_worse(worst: Worst, target: ClassifierTarget, pixels: torch.Tensor, by: str) -> None:
    """Where the target (attacked prompts) does worse on the clean images than the clean pass, keep that."""
    rows = list(range(len(pixels)))
    outputs = target.generate(rows, pixels)
    for i, (output, score) in enumerate(zip(outputs, target.score(rows, outputs))):
        if score < worst.score[i]:
            worst.output[i], worst.score[i], worst.by[i] = output, score, by


def ranked_others(logits: list[float], label: int, k: int, names: list[str]) -> list[str]:
    """The k classes other than `label` with the largest logits, largest first (APGD-T's targets)."""
    order = sorted(range(len(logits)), key=lambda c: -logits[c])
    return [names[c] for c in order if c != label][:k]


class ClassifierTarget:
    """The executor's view of a classifier on one batch (`attacks.executor.Target`): texts are class folders,
    outputs the predicted class's folder, scores 100 (right) or 0."""

    def __init__(self, classifier: Classifier, labels: list[str], folders: list[str], ids: list[str],
                 own_weights: torch.Tensor | None = None):
        self.classifier, self.labels, self.ids = classifier, labels, ids
        self.index = {folder: i for i, folder in enumerate(folders)}
        self.folders = folders
        self.label_index = torch.tensor([self.index[y] for y in labels], device=classifier.device)  # by batch row
        self.own_weights = own_weights  # per sample, its class's weight from attacked prompts (MMCoA)

    def logits(self, rows: list[int], pixels: torch.Tensor, attack: bool = False) -> list[torch.Tensor]:
        """The logits of `rows` (several under EOT when `attack`), with attacked prompts where there are."""
        if self.own_weights is not None:
            return [self.classifier.logits_with(pixels, self.label_index[rows], self.own_weights[rows])]
        return self.classifier.attack_logits(pixels) if attack else [self.classifier(pixels)]

    def loss_for(self, rows: list[int], texts: list[str], run: Run) -> LossFn:
        from vlm_eval.attacks.logit_losses import LOGIT_LOSSES, MIN_CLASSES

        if len(self.folders) < MIN_CLASSES[run.loss]:
            raise CardError(f"the {run.loss} loss needs at least {MIN_CLASSES[run.loss]} classes; "
                            f"this task has {len(self.folders)}: use --attack apgd-ce or pgd")
        loss, device = LOGIT_LOSSES[run.loss], self.classifier.device
        labels = self.label_index[rows]
        targets = torch.tensor([self.index[t] for t in texts], device=device)

        def loss_fn(pixels: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
            views = self.logits([rows[j] for j in sub.tolist()], pixels, attack=True)  # several under EOT
            sub = sub.to(device)
            return sum(loss(logits, labels[sub], targets[sub]) for logits in views) / len(views)

        return loss_fn

    def generate(self, rows: list[int], pixels: torch.Tensor) -> list[str]:
        with torch.no_grad():
            return [self.folders[c] for c in self.logits(rows, pixels)[0].argmax(-1).tolist()]

    def score(self, rows: list[int], outputs: list[str]) -> list[float]:
        return [100.0 if out == self.labels[i] else 0.0 for i, out in zip(rows, outputs)]

    def seeds(self, rows: list[int], run_index: int) -> list[int]:
        """Per sample and run: its random start does not depend on the batch it falls in."""
        return [zlib.crc32(f"{self.ids[i]}/{run_index}".encode()) for i in rows]
