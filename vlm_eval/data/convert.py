"""Zero-shot data sets in the forms they come in offline, written once as class folders.

Every zero-shot task is read as ImageNet-style class folders plus a class-index file
(`imagefolder.py`). The other forms are converted on first use into a cache folder
($VLM_EVAL_CACHE or ~/.cache/vlm_eval, `converted/<reader>-<fingerprint of the source>/`: its path
and its entries' names, sizes and times), written whole before a stamp file marks it complete, so an
interrupted conversion starts again and changed data is converted anew:

* `cifar`: CIFAR-10/100's python batches (`cifar.py`, no pickled code runs);
* `webdataset`: CLIP_benchmark's shards (`test/*.tar` holding `<key>.cls` and `<key>.<image>`, and
  `classnames.txt`, one class per line in label order); image bytes are copied, not decoded;
* `folders`: one folder per class, classes in sorted folder order, named by their folder
  (Caltech-256's `001.ak47` -> "ak47").
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path
from typing import Callable

from vlm_eval.errors import DataError, MissingResourceError

STAMP = ".complete"
IMAGE_MEMBER = re.compile(r"^(?P<key>.+)\.(?P<ext>png|jpg|jpeg|webp)$", re.IGNORECASE)


def converted(reader: str, source: Path, write: Callable[[Path], list[str]]) -> dict[str, Path]:
    """The class-folder files of `source` as converted by `write(folder) -> class names`, written once."""
    from vlm_eval.data.cache import cache_root

    folder = cache_root() / "converted" / f"{reader}-{fingerprint(Path(source))}"
    files = {"image_dir": folder / "images", "class_index_json": folder / "class_index.json"}
    if (folder / STAMP).is_file():
        return files
    shutil.rmtree(folder, ignore_errors=True)
    files["image_dir"].mkdir(parents=True)
    names = write(files["image_dir"])
    index = {str(i): [class_folder(i, name), name] for i, name in enumerate(names)}
    files["class_index_json"].write_text(json.dumps(index, indent=1))
    (folder / STAMP).write_text(str(source))
    return files


def fingerprint(source: Path) -> str:
    """Of the source's path and its entries' names, sizes and times: changed data is converted again."""
    if not source.exists():
        raise MissingResourceError(f"not found: {source}")
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir()) \
        if source.is_dir() else []
    return hashlib.sha256(repr((str(source.resolve()), entries)).encode()).hexdigest()[:12]


def class_folder(index: int, name: str) -> str:
    return f"{index:04d}_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def write_cifar(source: Path) -> Callable[[Path], list[str]]:
    def write(images_dir: Path) -> list[str]:
        from PIL import Image

        from vlm_eval.data.cifar import read_cifar

        images, labels, names = read_cifar(source)
        for i, (image, label) in enumerate(zip(images, labels)):
            target = images_dir / class_folder(label, names[label])
            target.mkdir(exist_ok=True)
            Image.fromarray(image).save(target / f"{i:05d}.png")
        return names

    return write


def write_webdataset(shards_dir: Path, classnames_txt: Path) -> Callable[[Path], list[str]]:
    def write(images_dir: Path) -> list[str]:
        names = [line.strip() for line in read_text(classnames_txt).splitlines() if line.strip()]
        shards = sorted(Path(shards_dir).glob("*.tar"))
        if not shards:
            raise MissingResourceError(f"no .tar shards in {shards_dir}")
        for shard in shards:
            for key, label, ext, data in shard_samples(shard, len(names)):
                target = images_dir / class_folder(label, names[label])
                target.mkdir(exist_ok=True)
                (target / f"{shard.stem}_{key}.{ext.lower()}").write_bytes(data)
        return names

    return write


def shard_samples(shard: Path, n_classes: int) -> list[tuple[str, int, str, bytes]]:
    """(key, label, image extension, image bytes) of every sample of one webdataset shard."""
    images: dict[str, tuple[str, bytes]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                match = IMAGE_MEMBER.match(name)
                if match:
                    images[match["key"]] = (match["ext"], tar.extractfile(member).read())
                elif name.endswith(".cls"):
                    labels[name[: -len(".cls")]] = _label(tar.extractfile(member).read(), shard, name, n_classes)
    except tarfile.TarError as exc:
        raise DataError(f"{shard}: not a readable tar shard: {exc}") from exc
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        raise DataError(f"{shard}: images without a .cls label, e.g. {unlabelled[0]!r}")
    return [(key, labels[key], *images[key]) for key in sorted(images)]


def _label(raw: bytes, shard: Path, name: str, n_classes: int) -> int:
    try:
        label = int(raw.decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise DataError(f"{shard}: {name} is not a class number: {raw[:20]!r}") from None
    if not 0 <= label < n_classes:
        raise DataError(f"{shard}: {name} says class {label}, but classnames.txt has {n_classes} classes")
    return label


def write_folders(root: Path) -> Callable[[Path], list[str]]:
    def write(images_dir: Path) -> list[str]:
        from vlm_eval.data.imagefolder import IMAGE_SUFFIXES

        folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
        if not folders:
            raise DataError(f"{root}: no class folders")
        names = [folder_class_name(p.name) for p in folders]
        for label, folder in enumerate(folders):
            target = images_dir / class_folder(label, names[label])
            target.mkdir()
            for image in sorted(folder.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    (target / image.name).symlink_to(image.resolve())
        return names

    return write


def folder_class_name(folder: str) -> str:
    """"001.ak47" -> "ak47", "063.electric-guitar-101" -> "electric guitar" (Caltech-256's folders)."""
    name = re.sub(r"^\d+\.", "", folder)
    return re.sub(r"-101$", "", name).replace("-", " ").replace("_", " ")


def read_text(path: Path) -> str:
    if not Path(path).is_file():
        raise MissingResourceError(f"file not found: {path}")
    return Path(path).read_text(encoding="utf-8")
