"""What captioning and VQA share: one batch's step on a VLM (clean, then attacked) and the scoring.

A task type that generates text subclasses `GenerationTask` and says how to prompt, what to attack
with, how to clean up outputs and how to score them; the step and the aggregation are written once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from vlm_eval.attacks.executor import Worst, execute, precision
from vlm_eval.attacks.snapshot import BatchSnapshot
from vlm_eval.contracts import VLM, Batch, Json, LossFn, Record, Step
from vlm_eval.data.samples import Sample
from vlm_eval.results import save_adversarial
from vlm_eval.tasks.scoring import ResampledScores, resampled_metrics, score_records
from vlm_eval.timing import SCORING, SEMANTIC, phase

if TYPE_CHECKING:
    from pathlib import Path

    from vlm_eval.tasks.demonstrations import Demonstrations

    from vlm_eval.attacks.schedule import Run

    from vlm_eval.cards import TaskCard


class Attacked(NamedTuple):
    pixels: torch.Tensor  # the adversarial images
    outputs: list[str]  # the VLM's raw outputs on them
    fields: list[dict[str, Json]]  # per sample, what made them (target, attack, loss, steps, ...)


class GenerationTask:
    """A task whose model is a VLM that answers each sample's prompt with text."""

    metric: str
    model_kind = "vlm"
    card: TaskCard
    demonstrations: Demonstrations | None = None  # in-context demonstrations, for VLMs that take them
    _wanted: tuple[int, bool, int, Path | None] | None = None

    def check_requirements(self) -> None:
        pass

    def want_demonstrations(self, per_sample: int, with_images: bool, seed: int, data_root: Path | None) -> None:
        """Give each prompt `per_sample` demonstrations from the task's training split (read by `setup`)."""
        self._wanted = (per_sample, with_images, seed, data_root) if per_sample else None

    def setup(self, files: dict[str, Path]) -> None:
        if self._wanted is not None:
            from vlm_eval.tasks.demonstrations import read_demonstrations

            per_sample, with_images, seed, data_root = self._wanted
            self.demonstrations = read_demonstrations(self.card, data_root, per_sample, with_images, seed)

    def demonstration_options(self) -> dict[str, Json]:
        if self._wanted is None:
            return {}
        return {"demonstrations": self._wanted[0], "demonstration_images": self._wanted[1]}

    def prompt_args(self, sample: Sample) -> tuple[str, str | None]:
        raise NotImplementedError

    def attack_texts(self, sample: Sample) -> list[str]:
        raise NotImplementedError

    def postprocess(self, text: str) -> str:
        raise NotImplementedError

    def score(self, references: dict[str, list[str]], outputs: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
        raise NotImplementedError

    def batch_of(self, vlm: VLM, samples: list[Sample], pixels: torch.Tensor) -> Batch:
        """The VLM's batch: each sample's prompt (after its demonstrations, if any) and the demonstrations' images."""
        ids, demos = [s.id for s in samples], self.demonstrations
        if demos is None:
            return Batch(ids, pixels, [vlm.prompt(*self.prompt_args(s)) for s in samples], self.card.prompt)
        from vlm_eval.tasks.demonstrations import texts

        drawn = [demos.draw(s) for s in samples]
        prompts = [vlm.prompt(*self.prompt_args(s), texts(d), demos.with_images) for s, d in zip(samples, drawn)]
        return Batch(ids, pixels, prompts, self.card.prompt, demos.images(vlm.preprocess, drawn))

    def evaluate_batch(self, vlm: VLM, samples: list[Sample], pixels: torch.Tensor, step: Step) -> list[Record]:
        """The batch's records: the clean outputs and, in an attacked run, the adversarial ones with their checks."""
        batch = self.batch_of(vlm, samples, pixels)
        with precision(vlm.device, step.attack.clean_precision if step.attack else "model"):
            outputs = vlm.generate(batch, self.card.max_new_tokens)
        records = [self.record(s, raw) for s, raw in zip(samples, outputs)]
        if step.replay is not None:
            attacked = self.replayed(vlm, batch, samples, step)
        elif step.attack is not None:
            attacked = self.attacked(vlm, batch, samples, records, step)
        else:
            return records
        for record, raw, fields in zip(records, attacked.outputs, attacked.fields):
            record["adversarial"] = {"output": self.postprocess(raw), "raw_output": raw, **fields}
        add_semantic_checks(records, pixels, attacked.pixels, step)
        return records

    def record(self, sample: Sample, raw: str) -> Record:
        record: Record = {"id": sample.id, "output": self.postprocess(raw), "raw_output": raw,
                          "references": list(sample.references)}
        if sample.question is not None:
            record["question"] = sample.question
        record["image"] = str(sample.image_path)
        return record

    def replayed(self, vlm: VLM, batch: Batch, samples: list[Sample], step: Step) -> Attacked:
        """What the VLM says on the images another run saved (`--from-adversarial`)."""
        pixels = step.replay.load(batch.ids)
        outputs = vlm.generate(dataclasses.replace(batch, pixels=pixels), self.card.max_new_tokens)
        fields = [{"target": self.attack_texts(s)[0], "loss": None, "steps": None, "attack": step.replay.name}
                  for s in samples]
        return Attacked(pixels, outputs, fields)

    def attacked(self, vlm: VLM, batch: Batch, samples: list[Sample], records: list[Record], step: Step) -> Attacked:
        """Run the attack's schedule on the batch, keep each sample's worst outcome and save its image."""
        plan, texts = step.attack, [self.attack_texts(s) for s in samples]
        clean = [r["raw_output"] for r in records]
        target = VlmTarget(self, vlm, batch, step)
        scores = target.score(list(range(len(samples))), clean) if plan.ensemble else [math.inf] * len(samples)
        settings = {**plan.describe(), "dtype": str(vlm.dtype)}
        checkpoint = BatchSnapshot(step.run_dir, batch.ids, settings, plan.steps, len(plan.schedule.runs))
        worst = execute(plan, batch.pixels, vlm.device, texts, Worst.start(batch.pixels, clean, scores, texts), target,
                        checkpoint)
        save_adversarial(step.run_dir, batch.ids, worst.pixels)
        return Attacked(worst.pixels, worst.output, [plan.outcome(worst, i) for i in range(len(samples))])

    # (references, outputs, draws (r, n)) -> (r, n): per-sample scores under each bootstrap resample, for a metric
    # whose per-sample score depends on the set (CIDEr's idf); None: it does not, and the records' scores serve
    resampled_scores: ResampledScores | None = None

    def aggregate(self, records: list[Record], step: Step) -> dict[str, float]:
        return score_records(self.score, self.metric, records, step.attack)

    def resampled(self, records: list[Record], draws: np.ndarray) -> dict[str, np.ndarray]:
        return resampled_metrics(self.resampled_scores, self.metric, records, draws)


class VlmTarget:
    """The executor's view of a VLM on one batch (`attacks.executor.Target`)."""

    def __init__(self, task: GenerationTask, vlm: VLM, batch: Batch, step: Step):
        self.task, self.vlm, self.batch = task, vlm, batch
        # an ensemble scores samples against the whole set's references (CIDEr's idf), not the batch's
        self.references = {s.id: list(s.references) for s in step.samples} if step.attack.ensemble else None

    def loss_for(self, rows: list[int], texts: list[str], run: Run) -> LossFn:
        return self.vlm.loss_closure(self.batch.select(rows, self.batch.pixels[rows]), texts)

    def seeds(self, rows: list[int], run_index: int) -> None:
        return None  # the VLM attacks of the protocol start at the image

    def generate(self, rows: list[int], pixels: torch.Tensor) -> list[str]:
        return self.vlm.generate(self.batch.select(rows, pixels), self.task.card.max_new_tokens)

    def score(self, rows: list[int], raw: list[str]) -> list[float] | None:
        if self.references is None:
            return None
        ids = self.batch.ids
        with phase(SCORING):
            _, per_item = self.task.score(self.references, {ids[i]: self.task.postprocess(r) for i, r in zip(rows, raw)})
        return [per_item[ids[i]] for i in rows]


def add_semantic_checks(records: list[Record], clean: torch.Tensor, adversarial: torch.Tensor, step: Step) -> None:
    """Each attacked record gets its perturbation's size and the semantic checks (vlm_eval.semantic)."""
    from vlm_eval.metrics.similarity import perturbation_norms

    outputs = [[r["raw_output"] for r in records], [r["adversarial"]["raw_output"] for r in records]]
    targets = [r["adversarial"]["target"] for r in records] if step.attack is not None and step.attack.targeted else None
    with phase(SEMANTIC):
        checks = step.judge.check(clean, adversarial, *outputs, targets)
    for record, size, check in zip(records, perturbation_norms(clean, adversarial), checks):
        record["adversarial"].update(perturbation=size, semantic=check)
