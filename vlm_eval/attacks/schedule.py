"""Attacks as schedules: every attack the toolkit runs on a batch is a list of runs, executed by
`vlm_eval.attacks.executor`.

A single attack (`--attack apgd`, `pgd`, `targeted`) is a schedule of one run. The ensemble of the
papers is a YAML file (`schedules/<task type>.yaml` by default, `--schedule FILE` otherwise):

    runs:                          # in order; each run attacks the samples still in the schedule
      - {attack: apgd, precision: fp16, text: reference, index: 0}   # away from reference / answer 0
      - {attack: apgd, precision: fp32, text: best, start: best}     # the text that worked best, from the best point
      - {attack: apgd, precision: fp32, text: target, target: maybe} # towards a string, from the clean image
    stop_below: 10                 # optional: samples scoring under this leave (default: the task card's)

Samples scoring under `stop_below` are broken and leave the schedule; the threshold belongs to the
task (CIDEr 10 on COCO, 2 on Flickr30k), so it comes from the task card unless the schedule sets
one. Half-precision runs use autocast over the fp32 weights, so precision changes without reloading
the model; the clean pass runs in the first run's precision, as the reference's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from vlm_eval.attacks.logit_losses import LOGIT_LOSSES
from vlm_eval.attacks.targets import TARGET_PRESETS, target_hit
from vlm_eval.attacks.threat import ThreatModel
from vlm_eval.contracts import Json
from vlm_eval.errors import CardError, UnknownNameError

if TYPE_CHECKING:
    from vlm_eval.attacks.executor import Worst

PRECISIONS = ("fp16", "bf16", "fp32", "model")  # model: the weights' own dtype, no autocast (single attacks)
TEXTS = ("reference", "target", "best")
TARGETED = "targeted"  # the --attack name of the targeted APGD attack
ENSEMBLE = "ensemble"
# RobustVLM's VLM attack starts APGD with a step of 1 eps (AutoAttack: 2 eps) and no random start.
PROTOCOL_OPTIONS = {"apgd": {"initial_step": 1.0}}


@dataclass(frozen=True)
class Run:
    attack: str = "apgd"
    precision: str = "fp32"
    text: str = "reference"  # reference (the index-th reference / most frequent answer), target, or best
    index: int = 0
    target: str | None = None
    start: str = "clean"  # clean, or best: the worst-case image so far
    loss: str | None = None  # a classifier's run: its logit loss (attacks.logit_losses); index ranks the target class

    @property
    def label(self) -> str:
        if self.loss is not None:
            return f"{self.attack} {self.loss}" + (f" target {self.index}" if self.index else "")
        what = {"reference": f"reference {self.index}", "target": f"target {self.target!r}", "best": "best text"}
        return f"{self.attack} {self.precision} {what[self.text]}" + (" from best" if self.start == "best" else "")

    def text_for(self, references: list[str], best: str) -> str | None:
        """The text this run attacks a sample with; None where it has fewer references (the run skips it)."""
        if self.text == "target":
            return self.target
        if self.text == "best":
            return best
        return references[self.index] if self.index < len(references) else None


@dataclass(frozen=True)
class Schedule:
    runs: tuple[Run, ...]
    stop_below: float | None  # None: the task card's
    source: str

    @classmethod
    def load(cls, path: Path) -> Schedule:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CardError(f"schedule {path}: cannot read it ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not data["runs"]:
            raise CardError(f"schedule {path}: needs a list `runs:` (and optionally `stop_below: <score>`)")
        stop_below = data.get("stop_below")
        if stop_below is not None and (isinstance(stop_below, bool) or not isinstance(stop_below, (int, float))):
            raise CardError(f"schedule {path}: stop_below must be a number, got {stop_below!r}")
        runs = tuple(_parse_run(item, path, i) for i, item in enumerate(data["runs"]))
        return cls(runs, None if stop_below is None else float(stop_below), str(path))

    def describe(self) -> dict[str, Json]:
        return {"source": self.source, "runs": [r.label for r in self.runs]}


def _parse_run(item: object, path: Path, i: int) -> Run:
    from vlm_eval.attacks import ATTACKS

    known = {f.name for f in fields(Run)}
    unknown = set(item) - known if isinstance(item, dict) else {"(not a mapping)"}
    if unknown:
        raise CardError(f"schedule {path}, run {i}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    run = Run(**item)
    problems = [f"attack {run.attack!r}"] if run.attack not in ATTACKS else []
    problems += [f"precision {run.precision!r}"] if run.precision not in PRECISIONS else []
    problems += [f"text {run.text!r}"] if run.text not in TEXTS else []
    problems += ["text: target without target:"] if run.text == "target" and not run.target else []
    problems += [f"start {run.start!r}"] if run.start not in ("clean", "best") else []
    problems += [f"loss {run.loss!r}"] if run.loss is not None and run.loss not in LOGIT_LOSSES else []
    if problems:
        raise CardError(f"schedule {path}, run {i}: bad {', '.join(problems)}")
    return run


def _classifier_attacks() -> dict[str, tuple[Run, ...]]:
    """`--attack` on a zero-shot task: each a schedule of runs on the logits. apgd-t is AutoAttack's
    APGD-T: targeted DLR towards the 2nd, ..., 10th largest clean logits (run index k: the k-th class
    after the true one); autoattack is APGD-CE then APGD-T, the version the TeCoA, FARE and TTC
    evaluations run (AutoAttack's FAB-T and Square left out, as they do). text and bimodal are MMCoA's:
    the class prompts attacked first (`PROMPT_ATTACKS`), then, bimodal, APGD-CE on the image against them."""
    apgd_t = tuple(Run("apgd", "model", index=k, loss="dlr-targeted") for k in range(1, 10))
    apgd_ce = (Run("apgd", "model", loss="ce"),)
    return {"apgd-ce": apgd_ce, "apgd-t": apgd_t, "pgd": (Run("pgd", "model", loss="ce"),),
            "cw": (Run("pgd", "model", loss="cw"),), "autoattack": (*apgd_ce, *apgd_t), "text": (),
            "bimodal": apgd_ce}


CLASSIFIER_ATTACKS = _classifier_attacks()
PROMPT_ATTACKS = ("text", "bimodal")
# AutoAttack's APGD: a first step of 2 eps from a uniform random start; PGD: Madry et al.'s random start.
CLASSIFIER_OPTIONS = {"apgd": {"initial_step": 2.0, "random_start": True}, "pgd": {"random_start": True}}
STILL_CORRECT = 100.0  # a classifier's per-sample score is 100 (right) or 0: runs attack the samples still right


@dataclass(frozen=True)
class AttackPlan:
    """What to do to each batch's images: a schedule in one threat model, `steps` per run.

    `ensemble`: each sample keeps the worst of the clean pass and every run (judged by the task's score;
    samples under `stop_below` leave); otherwise the schedule's one run is the attack, kept whatever its score.
    """

    name: str
    schedule: Schedule
    threat: ThreatModel
    steps: int
    options: dict[str, dict[str, Json]] = field(default_factory=dict)  # per algorithm
    stop_below: float = -math.inf
    target: str | None = None  # a single targeted attack's string
    check_every: int = 0  # targeted: every N steps, samples whose best image makes the model say the target stop
    on_prompts: bool = False  # a classifier's class prompts are attacked first (MMCoA's text attack)

    @classmethod
    def single(cls, name: str, eps: str, norm: str, steps: int, target: str | None = None,
               check_every: int = 0) -> AttackPlan:
        """`--attack NAME`: a registered algorithm, or "targeted" (APGD towards `target`, a string or preset)."""
        from vlm_eval.attacks import ATTACKS

        known = sorted([*ATTACKS.names(), TARGETED])
        if name not in known:
            raise UnknownNameError(f"unknown attack {name!r}; known: none, {', '.join(known)}, {ENSEMBLE}")
        if name == TARGETED:
            if not target:
                raise ValueError(f"--attack targeted needs --target: a string or a preset ({', '.join(TARGET_PRESETS)})")
            target = TARGET_PRESETS.get(target, target)
        elif target:
            raise ValueError(f"--target is for --attack targeted, not {name}")
        if check_every < 0:
            raise ValueError(f"--check-every must be >= 0 (0: never), got {check_every}")
        algorithm = "apgd" if name == TARGETED else name
        run = Run(algorithm, "model", "target" if target else "reference", 0, target)
        options = {algorithm: dict(PROTOCOL_OPTIONS.get(algorithm, {}))}
        return cls(name, Schedule((run,), None, name), ThreatModel.parse(eps, norm), steps, options,
                   target=target, check_every=check_every if target else 0)

    @classmethod
    def on_classifier(cls, name: str, eps: str, norm: str, steps: int) -> AttackPlan:
        """`--attack NAME` on a zero-shot task: each run attacks the samples every earlier run left correct,
        and each sample keeps its worst outcome (AutoAttack's robust accuracy)."""
        if name not in CLASSIFIER_ATTACKS:
            raise UnknownNameError(f"unknown attack {name!r} for a zero-shot task; known: none, "
                                   f"{', '.join(CLASSIFIER_ATTACKS)}")
        runs = CLASSIFIER_ATTACKS[name]
        options = {run.attack: dict(CLASSIFIER_OPTIONS[run.attack]) for run in runs}
        return cls(name, Schedule(runs, STILL_CORRECT, name), ThreatModel.parse(eps, norm), steps, options,
                   STILL_CORRECT, on_prompts=name in PROMPT_ATTACKS)

    @classmethod
    def ensemble_of(cls, schedule: Schedule, threat: ThreatModel, steps: int, stop_below: float) -> AttackPlan:
        return cls(ENSEMBLE, schedule, threat, steps, dict(PROTOCOL_OPTIONS), stop_below)

    @property
    def ensemble(self) -> bool:
        return self.name == ENSEMBLE

    @property
    def on_logits(self) -> bool:
        """A classifier's attack (its runs name logit losses)."""
        return self.name in CLASSIFIER_ATTACKS

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def clean_precision(self) -> str:
        """The ensemble's clean pass runs in its first run's precision (the reference loads its model in fp16
        for both); a single attack's in the weights' own."""
        return self.schedule.runs[0].precision if self.ensemble else "model"

    def describe(self) -> dict[str, Json]:
        threat = self.threat.describe()
        if self.on_logits:
            return {"name": self.name, **threat, "steps": self.steps, "runs": [r.label for r in self.schedule.runs],
                    "options": self.options, "prompts": "hotflip" if self.on_prompts else None}
        if self.ensemble:
            return {"name": self.name, **threat, "steps": self.steps, "schedule": self.schedule.describe(),
                    "stop_below": self.stop_below, "clean_precision": self.clean_precision, "options": self.options}
        run = self.schedule.runs[0]
        extra = {"algorithm": run.attack, "target": self.target, "check_every": self.check_every} if self.targeted else {}
        return {"name": self.name, **extra, **threat, "steps": self.steps, **self.options.get(run.attack, {})}

    def outcome(self, worst: Worst, i: int) -> dict[str, Json]:
        """What made sample i's kept adversarial output, for its record (the outputs themselves aside)."""
        if self.ensemble:
            return {"target": worst.text[i], "attack": worst.by[i], "runs": worst.runs[i]}
        fields = {"target": self.target or worst.text[i], "loss": worst.loss[i], "steps": worst.steps[i],
                  "attack": self.name}
        if self.targeted:  # success is judged on the raw output: post-processing may cut the target
            fields["target_in_output"], fields["exact_match"] = target_hit(worst.output[i], self.target)
        return fields
