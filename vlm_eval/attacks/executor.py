"""The one executor: runs an `AttackPlan`'s schedule on a batch, each sample keeping its worst outcome.

It knows neither models nor tasks. The caller supplies what it needs as functions of batch rows:
the loss to attack (`Target.loss_for`), what the model says on some images (`Target.generate`) and,
for an ensemble, how good that is (`Target.score`). A `Checkpoint` sees every run and step, so a
killed run resumes inside the schedule and inside the attack, and ends where it would have.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import asdict, dataclass
from typing import Any, ContextManager, Protocol

import torch

from vlm_eval.attacks.schedule import AttackPlan, Run
from vlm_eval.attacks.state import AttackHook
from vlm_eval.attacks.targets import stop_on_target
from vlm_eval.contracts import Json, LossFn

log = logging.getLogger(__name__)

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def precision(device: torch.device | str, name: str) -> ContextManager[Any]:
    """Autocast to a half precision over fp32 weights, as `as_run` chooses it for the device; fp32 and the
    model's own precision run as they are."""
    name = as_run(device, name)
    if name not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST[name])


def as_run(device: torch.device | str, name: str) -> str:
    """The precision a schedule's run executes in: on a GPU as written (the protocol's fp16); on a CPU, half
    precision is bf16 where the CPU has bf16 hardware (AVX512-BF16 or AMX) and fp32 elsewhere, where bf16 is
    emulated at several times fp32's cost (fp16 autocast on a CPU is slower still; docs/performance.md)."""
    if name not in AUTOCAST or torch.device(device).type != "cpu":
        return name
    return "bf16" if cpu_has_bf16() else "fp32"


@functools.cache
def cpu_has_bf16() -> bool:
    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if not native:
        log.info("this CPU has no bf16 hardware (AVX512-BF16, AMX): half-precision attack runs execute in fp32")
    return native


@dataclass
class Worst:
    """Per sample: the worst outcome so far, the image that made it, the run (`by`) and its details."""

    pixels: torch.Tensor  # (n, 3, H, W) in [0, 1]
    output: list[str]  # the model's raw output on `pixels`
    score: list[float]  # its score (inf where nothing is scored: single attacks)
    by: list[str]  # "clean" or the label of the run
    text: list[str]  # the attacked text that worked best so far (references only, never a target string)
    runs: list[list[float | None]]  # each run's score (None: the sample was not in it)
    loss: list[float | None]  # the attack's loss at the kept image
    steps: list[int | None]  # the steps the attack that made it ran

    @classmethod
    def start(cls, pixels: torch.Tensor, outputs: list[str], scores: list[float], texts: list[list[str]]) -> Worst:
        n = len(outputs)
        return cls(pixels.clone(), list(outputs), list(scores), ["clean"] * n, [t[0] for t in texts],
                   [[] for _ in range(n)], [None] * n, [None] * n)

    def lists(self) -> dict[str, list[Json]]:
        """Everything but the pixels, as JSON-able lists (for snapshots)."""
        return {k: v for k, v in asdict(self).items() if k != "pixels"}


class Target(Protocol):
    """What the executor asks of the model under attack, by batch rows."""

    def loss_for(self, rows: list[int], texts: list[str], run: Run) -> LossFn: ...

    def seeds(self, rows: list[int], run_index: int) -> list[int] | None: ...  # of random starts (None: by row)

    def generate(self, rows: list[int], pixels: torch.Tensor) -> list[str]: ...

    def score(self, rows: list[int], outputs: list[str]) -> list[float] | None: ...  # None: not scored


class Checkpoint(Protocol):
    """Progress and resumption of one batch's schedule."""

    def restore(self) -> tuple[int, Worst] | None: ...  # (runs finished, worst so far) of an interrupted run

    def watch(self, index: int, run: Run, rows: list[int], worst: Worst) -> ContextManager[AttackHook]: ...

    def finished(self, index: int, worst: Worst) -> None: ...


def execute(plan: AttackPlan, x: torch.Tensor, device: torch.device | str, texts: list[list[str]], worst: Worst,
            target: Target, checkpoint: Checkpoint) -> Worst:
    """Run the plan's schedule on the batch `x` (n images in [0, 1]); `texts[i]`: sample i's texts to attack,
    best first (reference captions, or answers by frequency). Returns each sample's worst outcome."""
    first = 0
    restored = checkpoint.restore()
    if restored is not None:
        first, worst = restored
    for index, run in enumerate(plan.schedule.runs):
        if index < first:
            continue
        run_texts = [run.text_for(refs, worst.text[i]) for i, refs in enumerate(texts)]
        rows = [i for i, text in enumerate(run_texts) if text is not None and worst.score[i] >= plan.stop_below]
        scores = {}
        if rows:
            scores = _attack_rows(plan, run, index, x, device, rows, [run_texts[i] for i in rows], worst, target,
                                  checkpoint)
        for i, runs in enumerate(worst.runs):
            runs.append(scores.get(i))
        checkpoint.finished(index, worst)
    return worst


def _attack_rows(plan: AttackPlan, run: Run, index: int, x: torch.Tensor, device: torch.device | str, rows: list[int],
                 texts: list[str], worst: Worst, target: Target, checkpoint: Checkpoint) -> dict[int, float | None]:
    """Attack the rows, keep what is worse than their worst so far; returns each row's score."""
    from vlm_eval.attacks import ATTACKS

    done = None
    if run.text == "target" and plan.check_every:
        done = stop_on_target(lambda sub, pixels: target.generate([rows[j] for j in sub.tolist()], pixels),
                              run.target, plan.check_every)
    start = worst.pixels[rows].to(device) if run.start == "best" else None
    with precision(device, run.precision), checkpoint.watch(index, run, rows, worst) as hook:
        result = ATTACKS.get(run.attack)(target.loss_for(rows, texts, run), x[rows].to(device), plan.threat,
                                         plan.steps, maximize=run.text != "target", x_init=start, done=done,
                                         hook=hook, seeds=target.seeds(rows, index),
                                         **plan.options.get(run.attack, {}))
        outputs = target.generate(rows, result.x_adv)
    scores = target.score(rows, outputs)
    by_row = {}
    for k, i in enumerate(rows):
        value = by_row[i] = None if scores is None else scores[k]
        if value is None or value < worst.score[i]:
            worst.output[i], worst.by[i] = outputs[k], run.label
            worst.score[i] = worst.score[i] if value is None else value
            worst.pixels[i] = result.x_adv[k].to(worst.pixels.device)
            worst.loss[i], worst.steps[i] = result.loss[k].item(), int(result.steps[k])
            if run.text != "target":  # "best text" is the reference that worked best, never a target string
                worst.text[i] = texts[k]
    return by_row
