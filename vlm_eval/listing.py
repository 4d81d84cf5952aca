"""`python -m vlm_eval list`: the known VLMs, encoders and tasks, and what is present locally.

Reads cards and looks at files and the Hugging Face cache only: no model code is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlm_eval import cards


def vlm_status(card: Any) -> tuple[bool, str]:
    if card.build is not None:
        return True, "random weights, built on the fly"
    if card.path is not None:
        folder = cards.card_relative(card, card.path)
        return (folder / "config.json").is_file(), str(folder)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(card.hf_id, "config.json")
    if isinstance(cached, str):
        return True, f"HF cache ({card.hf_id})"
    return False, f"missing: `hf download {card.hf_id}`"


def task_status(card: Any, data_root: Path | None) -> tuple[bool, str]:
    from vlm_eval.tasks.data import missing_files

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
    from vlm_eval.encoders.openclip_family import weights_status

    vlms = [(c.name, *vlm_status(c), c.description) for c in cards.all_cards("vlms").values()]
    encoders = [(c.name, *weights_status(c, weights_dir), c.description) for c in cards.all_cards("encoders").values()]
    tasks = [(c.name, *task_status(c, data_root), c.description) for c in cards.all_cards("tasks").values()]
    alias_lines = [f"  {alias} -> {name}" for kind in ("vlms", "encoders", "tasks") for alias, name in sorted(cards.aliases(kind).items())]
    lines = _rows("VLMs (present?)", vlms) + [""] + _rows("Encoders (weights present?)", encoders) + [""]
    lines += _rows("Tasks (data present?)", tasks) + ["", "Aliases"] + alias_lines
    return "\n".join(lines)
