"""`python -m vlm_eval list`: the known VLMs, encoders and tasks, and what is present locally.

Reads cards and looks at files and the Hugging Face cache only: no model code is imported.
"""

from __future__ import annotations

from pathlib import Path
from vlm_eval import cards
from vlm_eval.cards import EncoderCard, TaskCard, VlmCard


def vlm_status(card: VlmCard) -> tuple[bool, str]:
    from vlm_eval.vlms import VLM_FAMILIES

    return VLM_FAMILIES.get(card.family).weights_status(card)


def encoder_status(card: EncoderCard, weights_dir: Path | None) -> tuple[bool, str]:
    from vlm_eval.encoders import ENCODER_FAMILIES

    return ENCODER_FAMILIES.get(card.family).weights_status(card, weights_dir)


def task_status(card: TaskCard, data_root: Path | None) -> tuple[bool, str]:
    from vlm_eval.tasks.data import missing_files

    if card.members:
        ready = [name for name in card.members if task_status(cards.load_card("tasks", name), data_root)[0]]
        return len(ready) == len(card.members), f"suite: data for {len(ready)} of {len(card.members)} tasks"
    if card.generator is not None and data_root is None:
        return True, f"generated on first use ({card.generator})"
    missing = missing_files(card, data_root)
    if missing:
        return False, f"missing {len(missing)} of {len(card.files)} files, e.g. {missing[0]}"
    return True, "data present"


def _rows(title: str, entries: list[tuple[str, bool, str, str]]) -> list[str]:
    lines = [title]
    for name, present, where, description in entries:
        mark = "yes" if present else "no "
        lines.append(f"  {name:<20} {mark}  {where}")
        if description:
            lines.append(f"  {'':<20}      {description[:100]}")
    return lines


def listing(data_root: Path | None = None, weights_dir: Path | None = None) -> str:
    vlms = [(c.name, *vlm_status(c), c.description) for c in cards.all_cards("vlms").values()]
    encoders = [(c.name, *encoder_status(c, weights_dir), c.description) for c in cards.all_cards("encoders").values()]
    tasks = [(c.name, *task_status(c, data_root), c.description) for c in cards.all_cards("tasks").values()]
    alias_lines = [f"  {alias} -> {name}" for kind in ("vlms", "encoders", "tasks") for alias, name in sorted(cards.aliases(kind).items())]
    lines = _rows("VLMs (present?)", vlms) + [""] + _rows("Encoders (weights present?)", encoders) + [""]
    lines += _rows("Tasks (data present?)", tasks) + ["", "Aliases"] + alias_lines
    return "\n".join(lines)
