"""Captioning samples (COCO, Flickr30k) from Karpathy split files.

The Karpathy files (`dataset_coco.json`, `dataset_flickr30k.json`) decide WHICH images form a
split; the references optionally come from a COCO-format captions file instead, because that
file is what pycocoevalcap's COCOEvalCap scores against (as OpenFlamingo and RobustVLM do).

The captions an untargeted attack aims away from (the k-th for the k-th run of the ensemble) are
the entry's Karpathy `sentences` in file order, as RobustVLM's `CaptionDataset` takes
`sentences[k]["raw"]`, even when the references come from the COCO-format file (whose order
differs); an entry without sentences falls back to its references.

Sample ids follow OpenFlamingo's `CaptionDataset`: the COCO id (`cocoid`) when the entry has one,
otherwise the filename up to its first dot (Flickr30k: "1000092795.jpg" -> "1000092795"), which is
also the image id of OpenFlamingo's `dataset_flickr30k_coco_style.json`. Ids of the COCO-format
file are matched as strings, so integer and string image ids both work.

Image paths: if `image_dir` has a subfolder named by an entry's `filepath` (COCO: "val2014",
"train2014"), the image is `image_dir/filepath/filename`; otherwise `image_dir/filename`. So
`image_dir` may point at the COCO root or straight at the image folder. Only one `is_dir` check
is made per distinct `filepath`; the images themselves are not checked here.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from vlm_eval.data.samples import Sample, load_json_file, refuse_unscorable, require, require_list, require_text
from vlm_eval.errors import DataError

logger = logging.getLogger(__name__)

# (the entry's Karpathy sentences, sample id, entry label for messages) -> reference captions.
_ReferencesOf = Callable[[dict[str, Any], str, str], tuple[str, ...]]


def read_karpathy_captions(
    karpathy_json: Path,
    image_dir: Path,
    split: str = "test",
    references_json: Path | None = None,
) -> list[Sample]:
    """Read the images of one Karpathy split, in file order, with their reference captions.

    Args:
        karpathy_json: `dataset_coco.json` or `dataset_flickr30k.json`.
        image_dir: Folder of the images, or the folder holding the `filepath` subfolders.
        split: "train", "val", "test" (or "restval" for COCO).
        references_json: Optional COCO-format captions file (`captions_val2014.json`,
            `dataset_flickr30k_coco_style.json`). When given, the references of an image are ALL
            its captions in this file, not the Karpathy sentences.

    Returns:
        One `Sample` per image of the split, in the order of the Karpathy file (the order
        OpenFlamingo's dataset indexes, which seeded subsets depend on).

    Raises:
        MissingResourceError: A JSON file does not exist.
        DataError: Invalid JSON, a missing key, an empty split, or an image without references.
    """
    karpathy_json, image_dir = Path(karpathy_json), Path(image_dir)
    entries = require_list(load_json_file(karpathy_json), "images", karpathy_json, "top level")
    selected = _select_split(entries, split, karpathy_json)
    references_of = _reference_source(karpathy_json, references_json)
    resolve_path = _PathResolver(image_dir)
    samples = []
    for index, entry in selected:
        where = f"images[{index}]"
        filename = require(entry, "filename", karpathy_json, where)
        if not isinstance(filename, str) or not filename:
            raise DataError(f"{karpathy_json}: {where} key 'filename' should be a non-empty string")
        sample_id = _sample_id(entry, filename)
        sentences = _raw_sentences(entry, karpathy_json, where)
        samples.append(
            Sample(
                id=sample_id,
                image_path=resolve_path(filename, entry.get("filepath")),
                references=references_of(sentences, sample_id, where),
                image_id=sample_id,
                attack_texts=sentences,
            )
        )
    logger.info("read %d %s images from %s", len(samples), split, karpathy_json)
    source = karpathy_json if references_json is None else f"{karpathy_json} (references: {references_json})"
    return refuse_unscorable(samples, source)


def read_coco_references(references_json: Path) -> dict[str, list[str]]:
    """Group the captions of a COCO-format file by image id (as a string), in file order.

    Raises:
        MissingResourceError: The file does not exist.
        DataError: Invalid JSON or an annotation without `image_id` / `caption`.
    """
    references_json = Path(references_json)
    data = load_json_file(references_json)
    annotations = require_list(data, "annotations", references_json, "top level")
    by_image: dict[str, list[str]] = defaultdict(list)
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = require(annotation, "image_id", references_json, where)
        by_image[str(image_id)].append(require_text(annotation, "caption", references_json, where))
    return dict(by_image)


def _select_split(entries: list, split: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The (index, entry) pairs of `split`; an empty result is an error listing the splits present."""
    selected, present = [], set()
    for index, entry in enumerate(entries):
        entry_split = require(entry, "split", path, f"images[{index}]")
        present.add(str(entry_split))
        if entry_split == split:
            selected.append((index, entry))
    if not selected:
        listed = ", ".join(sorted(present)) or "none"
        raise DataError(f"{path}: no images in split {split!r}; splits present: {listed}")
    return selected


def _sample_id(entry: dict[str, Any], filename: str) -> str:
    """COCO id when present, else the filename before its first dot (as OpenFlamingo does)."""
    if "cocoid" in entry:
        return str(entry["cocoid"])
    return filename.split(".")[0]


def _reference_source(karpathy_json: Path, references_json: Path | None) -> _ReferencesOf:
    """Where references come from: the COCO-format file when given, else the Karpathy sentences."""
    if references_json is None:
        return lambda sentences, sample_id, where: _karpathy_references(sentences, karpathy_json, where)
    references_json = Path(references_json)
    by_image = read_coco_references(references_json)
    return lambda sentences, sample_id, where: _coco_references_of(sample_id, by_image, references_json)


def _karpathy_references(sentences: tuple[str, ...], path: Path, where: str) -> tuple[str, ...]:
    if not sentences:
        raise DataError(f"{path}: {where} has no 'sentences' to score against (or give a references_json)")
    return sentences


def _raw_sentences(entry: dict[str, Any], path: Path, where: str) -> tuple[str, ...]:
    """The entry's `sentences[k]["raw"]` in file order; none when it has no sentences."""
    sentences = require_list(entry, "sentences", path, where) if "sentences" in entry else []
    return tuple(
        require_text(sentence, "raw", path, f"{where}.sentences[{i}]") for i, sentence in enumerate(sentences)
    )


def _coco_references_of(sample_id: str, by_image: dict[str, list[str]], path: Path) -> tuple[str, ...]:
    if sample_id not in by_image:
        raise DataError(
            f"{path}: no captions for image id {sample_id} (ids are matched as strings: "
            "COCO by 'cocoid', Flickr30k by the filename stem); is it the references file of this data set?"
        )
    return tuple(by_image[sample_id])


class _PathResolver:
    """Applies the image-path rule of the module docstring, caching one `is_dir` per `filepath`."""

    def __init__(self, image_dir: Path):
        self._image_dir = image_dir
        self._has_subdir: dict[str, bool] = {}

    def __call__(self, filename: str, filepath: Any) -> Path:
        if isinstance(filepath, str) and filepath:
            if filepath not in self._has_subdir:
                self._has_subdir[filepath] = (self._image_dir / filepath).is_dir()
            if self._has_subdir[filepath]:
                return self._image_dir / filepath / filename
        return self._image_dir / filename
