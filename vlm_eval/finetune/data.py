"""What a recipe trains on, read offline from local files, in a deterministic order.

A recipe's `data` names its kind:

    {kind: karpathy, karpathy_json: .../dataset_coco.json, image_dir: ..., split: train}  # COCO / Flickr / mini world
    {kind: miniworld}                                       # the mini world's train split (written on first use)
    {kind: miniworld, labels: true}                         # its labelled single-shape training images (TeCoA)
    {kind: miniworld, labels: main-object}                  # its captioning scenes, labelled by their largest object
    {kind: coco, captions_json: .../captions_train2017.json, image_dir: .../train2017}
    {kind: csv, csv: pairs.csv, image_dir: ...}             # rows "path,caption" (paths relative to image_dir)
    {kind: imagefolder, image_dir: train/, class_index_json: imagenet_class_index.json}   # TeCoA's classes

Every kind may add `limit: N` (the first N items). The training loop draws batches from a permutation
of the items seeded by the recipe's seed and the epoch, so a resumed run meets the batches of the
uninterrupted one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm_eval.contracts import Json
from vlm_eval.data.images import load_image, preprocess_clip_image
from vlm_eval.errors import CardError, DataError, MissingResourceError


@dataclass
class TrainData:
    """Images with their captions (each item one or more) or class labels."""

    paths: list[Path]
    captions: list[tuple[str, ...]]  # per item; empty tuples for class folders
    labels: list[int] | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices: list[int], size: int,
             epochs: list[int] | None = None) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
        """(pixels (B, 3, size, size) in [0, 1], one caption per item (the next one each epoch), labels or None)."""
        pixels = torch.stack([preprocess_clip_image(load_image(self.paths[i], str(self.paths[i])), size) for i in indices])
        epochs = epochs or [0] * len(indices)
        captions = [self.captions[i][e % len(self.captions[i])] if self.captions[i] else "" for i, e in zip(indices, epochs)]
        labels = None if self.labels is None else torch.tensor([self.labels[i] for i in indices])
        return pixels, captions, labels


def read_train_data(spec: dict[str, Json]) -> TrainData:
    """The items a recipe's `data` names; clear errors for missing or malformed files."""
    if not isinstance(spec, dict) or spec.get("kind") not in READERS:
        raise CardError(f"recipe data {spec!r}: needs `kind`, one of {', '.join(READERS)}")
    data = READERS[spec["kind"]](spec)
    limit = spec.get("limit")
    if limit:
        data = TrainData(data.paths[:limit], data.captions[:limit],
                         None if data.labels is None else data.labels[:limit], data.class_names)
    if len(data) == 0:
        raise DataError(f"recipe data {spec!r}: no items")
    return data


def _path(spec: dict[str, Json], key: str) -> Path:
    if key not in spec:
        raise CardError(f"recipe data of kind {spec['kind']!r} needs `{key}`")
    path = Path(str(spec[key])).expanduser()
    if not path.exists():
        raise MissingResourceError(f"recipe data: {key} {path} not found")
    return path


def _karpathy(spec: dict[str, Json]) -> TrainData:
    from vlm_eval.data import read_karpathy_captions

    samples = read_karpathy_captions(_path(spec, "karpathy_json"), _path(spec, "image_dir"), spec.get("split", "train"))
    return TrainData([s.image_path for s in samples], [tuple(s.attack_texts or s.references) for s in samples])


def _miniworld(spec: dict[str, Json]) -> TrainData:
    from vlm_eval.miniworld.export import ensure_train_data
    from vlm_eval.tasks.data import generated_root

    root = Path(spec["root"]) if spec.get("root") else ensure_train_data(generated_root("miniworld"))
    if spec.get("labels") == "main-object":
        return _main_object_labels(root)
    if spec.get("labels"):
        return _imagefolder({"kind": "imagefolder", "image_dir": root / "zeroshot" / "train",
                             "class_index_json": root / "zeroshot" / "class_index.json"})
    return _karpathy({"kind": "karpathy", "karpathy_json": root / "dataset_miniworld.json", "image_dir": root / "images",
                      "split": "train"})


def _main_object_labels(root: Path) -> TrainData:
    """The captioning training scenes, each labelled by its largest object's class (ties: the first drawn):
    one label per image of a busier scene, as ImageNet's."""
    from vlm_eval.miniworld.export import image_path
    from vlm_eval.miniworld.language import class_name
    from vlm_eval.miniworld.scenes import sample_scene, zeroshot_classes

    classes = zeroshot_classes()
    n = len(list((root / "images" / "train").glob("*.png")))  # the world's own size (a test world is smaller)
    labels = [classes.index(_main_object(sample_scene("train", i))) for i in range(n)]
    return TrainData([image_path(root, "train", i) for i in range(n)], [()] * n, labels,
                     [class_name(color, shape) for color, shape in classes])


def _main_object(scene) -> tuple[str, str]:
    largest = max(scene.objects, key=lambda obj: obj.radius)
    return largest.color, largest.shape


def _coco(spec: dict[str, Json]) -> TrainData:
    from vlm_eval.data.samples import load_json_file, require, require_list

    path, image_dir = _path(spec, "captions_json"), _path(spec, "image_dir")
    raw = load_json_file(path)
    files = {str(require(im, "id", path, f"images[{i}]")): require(im, "file_name", path, f"images[{i}]")
             for i, im in enumerate(require_list(raw, "images", path, "top level"))}
    captions: dict[str, list[str]] = {}
    for i, ann in enumerate(require_list(raw, "annotations", path, "top level")):
        captions.setdefault(str(require(ann, "image_id", path, f"annotations[{i}]")), []).append(
            str(require(ann, "caption", path, f"annotations[{i}]")).strip())
    unknown = sorted(set(captions) - set(files))
    if unknown:
        raise DataError(f"{path}: captions of image ids with no entry in `images`: {unknown[:5]} ({len(unknown)})")
    ids = [i for i in files if i in captions]
    return TrainData([image_dir / files[i] for i in ids], [tuple(captions[i]) for i in ids])


def _csv(spec: dict[str, Json]) -> TrainData:
    path, image_dir = _path(spec, "csv"), _path(spec, "image_dir")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "caption"]:
        rows = rows[1:]
    bad = [n for n, row in enumerate(rows, 1) if len(row) < 2 or not row[0].strip() or not row[1].strip()]
    if bad:
        raise DataError(f"{path}: rows {bad[:5]} are not `path,caption`")
    return TrainData([image_dir / row[0].strip() for row in rows], [(row[1].strip(),) for row in rows])


def _imagefolder(spec: dict[str, Json]) -> TrainData:
    from vlm_eval.data import read_class_index, read_imagefolder

    image_dir, index = _path(spec, "image_dir"), _path(spec, "class_index_json")
    classes = read_class_index(index)
    label_of = {c.folder: c.index for c in classes}
    samples = read_imagefolder(image_dir, index)
    return TrainData([s.image_path for s in samples], [() for _ in samples],
                     [label_of[s.id.split("/", 1)[0]] for s in samples], [c.name for c in classes])


READERS = {"karpathy": _karpathy, "miniworld": _miniworld, "coco": _coco, "csv": _csv, "imagefolder": _imagefolder}
