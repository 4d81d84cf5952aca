"""The ensemble schedule: several attacks per sample, keeping each sample's worst output.

A schedule is a YAML file (`schedules/<task type>.yaml` by default, `--schedule FILE` otherwise):

    runs:                          # in order; each run attacks the samples still in the schedule
      - {attack: apgd, precision: fp16, text: reference, index: 0}   # away from reference / answer 0
      - {attack: apgd, precision: fp32, text: best, start: best}     # the text that worked best, from the best point
      - {attack: apgd, precision: fp32, text: target, target: maybe} # towards a string, from the clean image
    stop_below: 10                 # optional: samples scoring under this leave (default: the task card's)

Samples scoring under `stop_below` are broken and leave the schedule; the threshold belongs to the
task (CIDEr 10 on COCO, 2 on Flickr30k), so it comes from the task card unless the schedule sets
one. Half-precision runs use autocast over the fp32 weights, so precision changes without reloading
the model; the clean pass runs in the first run's precision, as the reference's does. After each
run, every attacked sample is scored with the task metric and its worst output, image and the run
that produced them are kept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch

from vlm_eval.errors import CardError

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TEXTS = ("reference", "target", "best")


@dataclass(frozen=True)
class Run:
    attack: str = "apgd"
    precision: str = "fp32"
    text: str = "reference"  # reference (the index-th reference / most frequent answer), target, or best
    index: int = 0
    target: str | None = None
    start: str = "clean"  # clean, or best: the worst-case image so far

    @property
    def label(self) -> str:
        what = {"reference": f"reference {self.index}", "target": f"target {self.target!r}", "best": "best text"}
        return f"{self.attack} {self.precision} {what[self.text]}" + (" from best" if self.start == "best" else "")


@dataclass(frozen=True)
class Schedule:
    runs: tuple[Run, ...]
    stop_below: float | None  # None: the task card's
    source: str

    @classmethod
    def load(cls, path: Path) -> Schedule:
        import yaml

        from vlm_eval.attacks import ATTACKS

        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CardError(f"schedule {path}: cannot read it ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
            raise CardError(f"schedule {path}: needs a list `runs:` (and optionally `stop_below: <score>`)")
        stop_below = data.get("stop_below")
        if stop_below is not None and (isinstance(stop_below, bool) or not isinstance(stop_below, (int, float))):
            raise CardError(f"schedule {path}: stop_below must be a number, got {stop_below!r}")
        known = {f.name for f in fields(Run)}
        runs = []
        for i, item in enumerate(data["runs"]):
            unknown = set(item) - known if isinstance(item, dict) else {"(not a mapping)"}
            if unknown:
                raise CardError(f"schedule {path}, run {i}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
            run = Run(**item)
            problems = [f"attack {run.attack!r}"] if run.attack not in ATTACKS else []
            problems += [f"precision {run.precision!r}"] if run.precision not in PRECISIONS else []
            problems += [f"text {run.text!r}"] if run.text not in TEXTS else []
            problems += ["text: target without target:"] if run.text == "target" and not run.target else []
            problems += [f"start {run.start!r}"] if run.start not in ("clean", "best") else []
            if problems:
                raise CardError(f"schedule {path}, run {i}: bad {', '.join(problems)}")
            runs.append(run)
        return cls(tuple(runs), None if stop_below is None else float(stop_below), str(path))

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "runs": [r.label for r in self.runs]}


def precision(device: torch.device, name: str):
    """Autocast to a half precision over fp32 weights; fp32 runs as is."""
    if name == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[name])


@dataclass(frozen=True)
class EnsembleSpec:
    """`--attack ensemble`: a schedule of attacks in one threat model, `steps` each; samples scoring under
    `stop_below` leave."""

    schedule: Schedule
    threat: Any
    steps: int
    options: dict[str, Any]
    stop_below: float
    name = "ensemble"
    targeted = False

    @property
    def clean_precision(self) -> str:
        """The clean pass runs in the first run's precision (the reference loads its model in fp16 for both)."""
        return self.schedule.runs[0].precision

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.threat.describe(), "steps": self.steps, "schedule": self.schedule.describe(),
                "stop_below": self.stop_below, "clean_precision": self.clean_precision, "options": self.options}


def run_schedule(vlm: Any, batch: Any, references: list[list[str]], clean: list[str], clean_scores: list[float],
                 spec: EnsembleSpec, generate: Callable[[Any], list[str]],
                 score: Callable[[list[int], list[str]], list[float]],
                 progress: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Run the schedule on one batch; per sample the worst output, score, image, run, text and each run's score.

    `references[i]`: sample i's texts to attack, best first (reference captions, or answers by frequency);
    `generate(batch)`: the VLM's raw outputs; `score(rows, outputs)`: the task metric of those rows' outputs;
    `progress(run label)`: a context manager giving the run's attack hook (a progress bar, say).
    """
    from vlm_eval.attacks.vlm import attack_vlm
    from vlm_eval.vlms.base import Batch

    schedule, threat, steps, options = spec.schedule, spec.threat, spec.steps, spec.options
    n = len(clean)
    worst = {"output": list(clean), "score": list(clean_scores), "pixels": batch.pixels.clone(),
             "by": ["clean"] * n, "text": [refs[0] for refs in references], "runs": [[] for _ in range(n)]}
    device = torch.device(vlm.device)
    for run in schedule.runs:
        texts = [_text(run, refs, worst["text"][i]) for i, refs in enumerate(references)]
        rows = [i for i in range(n) if worst["score"][i] >= spec.stop_below and texts[i] is not None]
        for i in range(n):
            worst["runs"][i].append(None)
        if not rows:
            continue
        sub = batch.select(rows, batch.pixels[rows].to(device))
        start = worst["pixels"][rows].to(device) if run.start == "best" else None
        watch = progress(run.label) if progress else contextlib.nullcontext()
        with precision(device, run.precision), watch as hook:
            result = attack_vlm(vlm, sub, [texts[i] for i in rows], run.attack, threat, steps, hook=hook,
                                maximize=run.text != "target", x_init=start, **options.get(run.attack, {}))
            outputs = generate(Batch(sub.ids, result.x_adv, sub.prompts))
        for k, (i, output, value) in enumerate(zip(rows, outputs, score(rows, outputs))):
            worst["runs"][i][-1] = value
            if value < worst["score"][i]:
                worst["output"][i], worst["score"][i], worst["by"][i] = output, value, run.label
                worst["pixels"][i] = result.x_adv[k].to(worst["pixels"].device)
                if run.text != "target":  # "best text" is the reference that worked best, never a target string
                    worst["text"][i] = texts[i]
    return worst


def _text(run: Run, references: list[str], best: str) -> str | None:
    if run.text == "target":
        return run.target
    if run.text == "best":
        return best
    return references[run.index] if run.index < len(references) else None  # fewer answers: the run skips it
