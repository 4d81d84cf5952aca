"""Classification samples from ImageNet-style class folders and a class-index JSON.

The layout is the one of ImageNet's validation set as torchvision and the CLIP zero-shot
evaluations read it:

* `image_dir/<folder>/<any name>.{png,jpg,jpeg}`: one subfolder per class, named by the class's
  folder id (ImageNet: the WordNet id, e.g. "n01440764");
* `class_index_json`: `imagenet_class_index.json`'s format,
  `{"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"], ...}`: key = class index (label
  order), value = [folder, human-readable class name].

Class names may repeat (ImageNet has two "crane" and two "maillot" classes), so a label is the class
index, not the name. The class-index file defines the label set and its order: folders it does not
list are ignored with a warning (torchvision's `ImageFolder` would instead make every folder a class,
numbered alphabetically, which need not be the label order of the file).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_eval.data.samples import Sample, load_json_file
from vlm_eval.errors import DataError, MissingResourceError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class ImageClass:
    """One class of a class-index file: its label (index), image folder and name."""

    index: int
    folder: str
    name: str


def read_class_index(class_index_json: Path) -> list[ImageClass]:
    """The classes of an `imagenet_class_index.json`-format file, in label order.

    Raises:
        MissingResourceError: The file does not exist.
        DataError: Invalid JSON, not an object, keys that are not the indices 0..n-1, an entry
            that is not `[folder, name]`, or a folder listed twice.
    """
    class_index_json = Path(class_index_json)
    raw = load_json_file(class_index_json)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{class_index_json}: expected a non-empty JSON object "
                        '{"0": [folder, class name], ...}, got ' + _kind(raw))
    by_index = {_index(key, class_index_json): value for key, value in raw.items()}
    classes = [_entry(i, by_index, class_index_json) for i in range(len(by_index))]
    _check_unique_folders(classes, class_index_json)
    return classes


def read_class_names(class_index_json: Path) -> list[str]:
    """The human-readable class names in label order (what zero-shot prompts are built from)."""
    return [c.name for c in read_class_index(class_index_json)]


def label_folder(sample: Sample) -> str:
    """The class folder of a sample of `read_imagefolder` (the part of its id before the '/')."""
    return sample.id.split("/", 1)[0]


def read_imagefolder(image_dir: Path, class_index_json: Path) -> list[Sample]:
    """Every image of every listed class, sorted by class index and then by file name.

    Returns:
        One `Sample` per image: id = image_id = "<folder>/<file stem>", references = (class name,).

    Raises:
        MissingResourceError: The class-index file, `image_dir` or a listed class folder is absent.
        DataError: A malformed class index, a class folder without images, or two images of one
            folder with the same stem (their ids would collide).
    """
    image_dir, class_index_json = Path(image_dir), Path(class_index_json)
    classes = read_class_index(class_index_json)
    if not image_dir.is_dir():
        raise MissingResourceError(f"image folder not found: {image_dir}")
    samples = [s for c in classes for s in _class_samples(c, image_dir, class_index_json)]
    _log_unlisted_folders(image_dir, classes)
    logger.info("read %d images of %d classes from %s", len(samples), len(classes), image_dir)
    return samples


def _index(key: str, path: Path) -> int:
    if not (key.isascii() and key.isdigit() and str(int(key)) == key):
        raise DataError(f"{path}: key {key!r} is not a class index (keys are \"0\", \"1\", ...)")
    return int(key)


def _entry(index: int, by_index: dict[int, Any], path: Path) -> ImageClass:
    """The class at `index`; the keys must be exactly 0..n-1, so a gap is reported by its index."""
    if index not in by_index:
        extra = sorted(k for k in by_index if k >= len(by_index))
        raise DataError(f"{path}: class index {index} is missing (keys must be 0..{len(by_index) - 1}; "
                        f"found {extra[0]} instead)")
    value = by_index[index]
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) and v for v in value)):
        raise DataError(f'{path}: entry "{index}" should be [folder, class name] (two non-empty strings), '
                        f"got {value!r}")
    folder, name = value
    if "/" in folder or "\\" in folder or folder in (".", ".."):
        raise DataError(f'{path}: entry "{index}" names folder {folder!r}; expected a plain folder name')
    return ImageClass(index, folder, name)


def _check_unique_folders(classes: list[ImageClass], path: Path) -> None:
    seen: dict[str, int] = {}
    for c in classes:
        if c.folder in seen:
            raise DataError(f'{path}: entries "{seen[c.folder]}" and "{c.index}" both name folder {c.folder!r}')
        seen[c.folder] = c.index


def _class_samples(c: ImageClass, image_dir: Path, class_index_json: Path) -> list[Sample]:
    folder = image_dir / c.folder
    if not folder.is_dir():
        raise MissingResourceError(
            f'class folder not found: {folder} (entry "{c.index}" {c.name!r} of {class_index_json})'
        )
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"class folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} images "
                        f'(entry "{c.index}" {c.name!r} of {class_index_json})')
    repeated = sorted(stem for stem, n in Counter(p.stem for p in files).items() if n > 1)
    if repeated:
        raise DataError(f"class folder {folder} holds several images named {repeated[0]!r}.*; "
                        "sample ids are '<folder>/<file stem>', so stems must be unique")
    samples = []
    for path in files:
        sample_id = f"{c.folder}/{path.stem}"
        samples.append(Sample(id=sample_id, image_path=path, references=(c.name,), image_id=sample_id))
    return samples


def _log_unlisted_folders(image_dir: Path, classes: list[ImageClass]) -> None:
    listed = {c.folder for c in classes}
    unlisted = sorted(p.name for p in image_dir.iterdir() if p.is_dir() and p.name not in listed)
    if unlisted:
        logger.warning("%s: ignoring %d folder(s) not in the class index, e.g. %s", image_dir, len(unlisted), unlisted[0])


def _kind(value: Any) -> str:
    return "an empty object" if value == {} else type(value).__name__
