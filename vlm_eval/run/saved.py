"""A finished run's task, rebuilt from its config.json: to score its records again without any model."""

from __future__ import annotations

from pathlib import Path

from vlm_eval import cards
from vlm_eval.contracts import Json, Record, TaskType
from vlm_eval.errors import VlmEvalError
from vlm_eval.results import read_samples
from vlm_eval.run.runner import read_config

SCORING_OPTIONS = ("vqa_normalize", "postprocess", "masked_lm")  # what a task's scoring may depend on


def saved_task(run_dir: Path, **options: Json) -> TaskType:
    """The run's task type with the scoring options it ran with, or `options` instead."""
    resolved = read_config(run_dir)["resolved"]
    from vlm_eval.tasks import TASK_TYPES

    card = cards.load_card("tasks", resolved["task_card"])
    saved = {key: resolved[key] for key in SCORING_OPTIONS if key in resolved}
    try:
        return TASK_TYPES.get(card.type)(card, {**saved, **options})
    except ValueError as exc:
        raise VlmEvalError(f"task {card.name!r}: {exc}") from exc


def scored_records(run_dir: Path) -> list[Record]:
    """The records of a finished run, in subset order; a clear error for an unfinished one."""
    if not (Path(run_dir) / "summary.json").is_file():
        raise VlmEvalError(f"{run_dir} is not a finished run (no summary.json); finish it with "
                           f"python -m vlm_eval resume {run_dir}")
    return read_samples(run_dir)
