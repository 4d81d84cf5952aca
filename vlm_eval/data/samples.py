"""The `Sample` record shared by all tasks, and the JSON helpers the annotation readers share.

The helpers turn every way an annotation file can be wrong (absent, not JSON, a key missing) into
a `MissingResourceError` or `DataError` whose message names the file, the entry and the key, so a
user can fix the file without reading a traceback.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_eval.errors import DataError, MissingResourceError, preview


@dataclass(frozen=True)
class Sample:
    """One evaluation item: an image, its reference texts and, for VQA, the question.

    Attributes:
        id: Unique id within the data set: the COCO id or Flickr30k filename stem for
            captioning, the question id for VQA. Always a string so ids from different
            formats compare and serialise alike.
        image_path: Where the image is expected; existence is only checked when it is loaded.
        references: The reference captions, or the human answers of a VQA question, in file order.
        question: The VQA question; None for captioning.
        image_id: The id of the image (for VQA several questions share one image).
        attack_texts: Captioning: the captions untargeted attacks aim away from, k-th first, in the
            reference code's order (the Karpathy sentences); empty: the references.
    """

    id: str
    image_path: Path
    references: tuple[str, ...]
    question: str | None = None
    image_id: str | None = None
    attack_texts: tuple[str, ...] = ()


def load_json_file(path: Path) -> Any:
    """Parse a JSON file, raising errors that name the file.

    Raises:
        MissingResourceError: `path` does not exist.
        DataError: `path` is not a readable file or not valid UTF-8 JSON.
    """
    path = Path(path)
    if not path.exists():
        raise MissingResourceError(f"annotation file not found: {path}")
    if not path.is_file():
        raise DataError(f"annotation path is not a file: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from err


def require(entry: Any, key: str, path: Path, where: str) -> Any:
    """Return `entry[key]`, or raise a DataError naming the file, the entry and the key.

    Args:
        entry: A JSON object (dict) expected to hold `key`.
        key: The required key.
        path: The file the entry comes from, for the message.
        where: Which entry, e.g. "top level" or "images[3]", for the message.
    """
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {where} should be a JSON object, got {type(entry).__name__}")
    if key not in entry:
        raise DataError(f"{path}: {where} has no key {key!r}")
    return entry[key]


def require_list(entry: Any, key: str, path: Path, where: str) -> list:
    """Like `require`, but the value must also be a JSON array."""
    value = require(entry, key, path, where)
    if not isinstance(value, list):
        raise DataError(f"{path}: {where} key {key!r} should be a list, got {type(value).__name__}")
    return value


def require_text(entry: Any, key: str, path: Path, where: str) -> str:
    """Like `require`, but the value must be a string (a number or null is not text: it would be scored as
    "5" or "None")."""
    value = require(entry, key, path, where)
    if not isinstance(value, str):
        raise DataError(f"{path}: {where} key {key!r} should be a string, got {json.dumps(value)}")
    return value


def refuse_unscorable(samples: list[Sample], path: Path | str) -> list[Sample]:
    """The samples, unless some cannot be scored honestly: an id that occurs twice (evaluated and counted twice),
    an empty question, or references that are all empty (nothing to score against). One error names every kind
    found, with the first ids and the count; these are defects of the file, so no sample is skipped quietly."""
    repeated = [key for key, count in Counter(s.id for s in samples).items() if count > 1]
    blank_questions = [s.id for s in samples if s.question is not None and not s.question.strip()]
    blank_references = [s.id for s in samples if not any(r.strip() for r in s.references)]
    problems = [f"{what}: {preview(ids)}" for what, ids in (
        ("ids that occur more than once (each would be evaluated and counted twice)", repeated),
        ("empty questions", blank_questions),
        ("samples whose references are all empty (nothing to score against)", blank_references)) if ids]
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + ". Fix the file, or use the one released with the "
                        "data set (docs/data.md)")
    return samples
