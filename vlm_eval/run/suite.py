"""A suite card (`type: suite`): its member tasks run one after the other with the same settings, each in
its own folder of the suite's run folder, then their metrics are averaged.

Every member's data is checked before the first one starts. A member already finished (its
summary.json is there) is kept, an interrupted one resumed, so running the same command again
finishes a suite that was stopped.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

from vlm_eval import cards, results
from vlm_eval.cards import TaskCard
from vlm_eval.config import EvalConfig
from vlm_eval.errors import MissingResourceError, VlmEvalError

SKIPPED_IN_AVERAGE = ("n_classes",)


def run_suite(config: EvalConfig, card: TaskCard) -> Path:
    """Run every member of the suite `card`; returns the suite's folder (its summary.json averages them)."""
    from vlm_eval.run.runner import complete

    if config.data:
        raise VlmEvalError(f"--data names one task's files; the suite {card.name!r} runs {len(card.members)} tasks: "
                           "use --data-root")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suite_dir = Path(config.output_dir or Path("results") / f"{card.name}-{Path(config.encoder).name}-{stamp}")
    members = {name: dataclasses.replace(config, task=name, output_dir=str(suite_dir / name)) for name in card.members}
    check_member_data(card, members)
    for member in members.values():
        complete(member)
    write_suite_summary(suite_dir, card, config)
    return suite_dir


def check_member_data(card: TaskCard, members: dict[str, EvalConfig]) -> None:
    """Fail before any work if a member's data is missing (generated worlds are written when they run)."""
    from vlm_eval.run.plan import optional_path
    from vlm_eval.tasks.data import check_task_data

    problems = []
    for name, config in members.items():
        member = cards.load_card("tasks", name)
        if member.type == "suite":
            raise VlmEvalError(f"suite {card.name!r}: member {name!r} is itself a suite")
        try:
            if member.generator is None:
                check_task_data(member, optional_path(config.data_root))
        except MissingResourceError as exc:
            problems.append(str(exc))
    if problems:
        raise MissingResourceError(f"suite {card.name!r}: {len(problems)} of {len(members)} tasks lack data\n\n"
                                   + "\n\n".join(problems))


def write_suite_summary(suite_dir: Path, card: TaskCard, config: EvalConfig) -> None:
    """summary.json: each member's metrics and, for the metrics all of them have, the mean over them."""
    per_task = {name: json.loads((suite_dir / name / "summary.json").read_text())["metrics"] for name in card.members}
    shared = set.intersection(*(set(m) for m in per_task.values())) - set(SKIPPED_IN_AVERAGE)
    average = {key: statistics.fmean(m[key] for m in per_task.values()) for key in sorted(shared)}
    results.write_json(suite_dir / "summary.json", {"suite": card.name, "tasks": per_task, "metrics": average,
                                                    "config": config.to_dict()})


def suite_table(suite_dir: Path) -> str:
    """The terminal's view: one line per task, then the average."""
    summary = json.loads((suite_dir / "summary.json").read_text())
    keys = list(summary["metrics"])
    lines = ["", f"run folder  {suite_dir}", f"{'task':<18}" + "".join(f"{k:>18}" for k in keys)]
    for name, metrics in [*summary["tasks"].items(), ("average", summary["metrics"])]:
        lines.append(f"{name:<18}" + "".join(f"{metrics[k]:>18.2f}" for k in keys))
    return "\n".join(lines)
