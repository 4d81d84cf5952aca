"""From a task card and a data root to the task's samples, with a clear error when data is missing."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vlm_eval.cards import TaskCard, card_relative
from vlm_eval.errors import CardError, MissingResourceError, UnknownNameError
from vlm_eval.registry import Registry

if TYPE_CHECKING:
    from vlm_eval.data.samples import Sample  # the data package imports torch; `list` must not

READERS = Registry("data reader")
GENERATORS = Registry("data generator")  # name -> ensure(root, full): writes a synthetic world's files if absent or stale
GENERATORS.register_lazy("miniworld", "vlm_eval.miniworld.export:ensure_eval_data")

DEFAULT_DATA_ROOT = Path("data")


def generated_root(generator: str) -> Path:
    """Where a generated world lives unless --data-root says otherwise: $VLM_EVAL_CACHE or ~/.cache/vlm_eval."""
    from vlm_eval.data.cache import cache_root

    return cache_root() / generator


def prepare_generated_data(card: TaskCard, data_root: Path | None, overrides: dict[str, str] | None = None) -> None:
    """Write a generated task's data on first use (seconds for the evaluation splits).

    The default cache gets the whole world; a folder named by --data-root keeps the sizes of the
    world it holds. Nothing is written when --data overrides every file.
    """
    if card.generator is None or set(card.files) <= set(overrides or {}):
        return
    root = Path(data_root) if data_root else generated_root(card.generator)
    try:
        GENERATORS.get(card.generator)(root, full=data_root is None)
    except OSError as exc:
        raise MissingResourceError(
            f"task {card.name!r}: cannot write its generated data into {root}: {exc.strerror or exc}; "
            "set VLM_EVAL_CACHE or --data-root to a writable folder"
        ) from exc


def task_files(card: TaskCard, data_root: Path | None, overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """The card's data files as paths: overrides win, then the card's own root, then `data_root`."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(card.files))
    if unknown:
        raise UnknownNameError(
            f"task {card.name!r} has no data file {unknown[0]!r}; its files are: {', '.join(sorted(card.files))}"
        )
    default = generated_root(card.generator) if card.generator else DEFAULT_DATA_ROOT
    root = _card_root(card) or Path(data_root or default)
    return {key: Path(overrides.get(key) or root / rel).expanduser() for key, rel in card.files.items()}


def missing_files(card: TaskCard, data_root: Path | None, overrides: dict[str, str] | None = None) -> list[Path]:
    return [p for p in task_files(card, data_root, overrides).values() if not p.exists()]


def check_task_data(card: TaskCard, data_root: Path | None, overrides: dict[str, str] | None = None) -> dict[str, Path]:
    """The task's files, or a `MissingResourceError` listing what is missing and how to get it."""
    files = task_files(card, data_root, overrides)
    missing = [f"  {key}: {path.absolute()}" for key, path in files.items() if not path.exists()]
    if missing:
        raise MissingResourceError(
            f"task {card.name!r}: data not found:\n" + "\n".join(missing) + "\n"
            f"Set --data-root (the folder holding them), or a single file with --data KEY=PATH.\n"
            f"How to get it: {card.obtain}"
        )
    return files


def read_task_samples(card: TaskCard, files: dict[str, Path]) -> list[Sample]:
    """All samples of the task's split, through the reader the card names."""
    return READERS.get(card.reader)(card, files)


def _require_files(card: TaskCard, *keys: str) -> None:
    missing = [key for key in keys if key not in card.files]
    if missing:
        raise CardError(f"task card {card.card_path}: reader {card.reader!r} needs {missing} under `files`")


@READERS.register("karpathy")
def _read_karpathy(card: TaskCard, files: dict[str, Path]) -> list[Sample]:
    from vlm_eval.data import read_karpathy_captions

    _require_files(card, "karpathy_json", "image_dir")
    return read_karpathy_captions(
        files["karpathy_json"], files["image_dir"], split=card.split, references_json=files.get("references_json")
    )


@READERS.register("vqa")
def _read_vqa(card: TaskCard, files: dict[str, Path]) -> list[Sample]:
    from vlm_eval.data import read_vqa

    _require_files(card, "questions_json", "annotations_json", "image_dir")
    if card.image_file is None:
        raise CardError(f"task card {card.card_path}: reader 'vqa' needs `image_file`, e.g. \"{{image_id}}.jpg\"")
    return read_vqa(files["questions_json"], files["annotations_json"], files["image_dir"], card.image_file)


@READERS.register("imagefolder")
@READERS.register("cifar")
@READERS.register("webdataset")
@READERS.register("folders")
def _read_imagefolder(card: TaskCard, files: dict[str, Path]) -> list[Sample]:
    from vlm_eval.data import read_imagefolder

    files = as_class_folders(card, files)
    return read_imagefolder(files["image_dir"], files["class_index_json"])


def as_class_folders(card: TaskCard, files: dict[str, Path]) -> dict[str, Path]:
    """A zero-shot task's files as class folders and a class-index file, converting other forms once
    (`vlm_eval.data.convert`): `cifar` needs `batches` (cifar-10-batches-py/ or cifar-100-python/);
    `webdataset` needs `shards` and `classnames_txt`; `folders` needs `image_dir`."""
    from vlm_eval.data import convert

    if card.reader == "imagefolder":
        _require_files(card, "image_dir", "class_index_json")
        return files
    if card.reader == "cifar":
        _require_files(card, "batches")
        return convert.converted("cifar", files["batches"], convert.write_cifar(files["batches"]))
    if card.reader == "webdataset":
        _require_files(card, "shards", "classnames_txt")
        return convert.converted("webdataset", files["shards"],
                                 convert.write_webdataset(files["shards"], files["classnames_txt"]))
    _require_files(card, "image_dir")
    return convert.converted("folders", files["image_dir"], convert.write_folders(files["image_dir"]))


def _card_root(card: TaskCard) -> Path | None:
    if card.data_root is None:
        return None
    return card_relative(card, card.data_root)
