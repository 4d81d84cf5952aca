"""Writing the mini world to disk in the formats of the real data sets, so the real readers load it.

Layout under the world's root (the cache, `$VLM_EVAL_CACHE/miniworld`, unless --data-root says otherwise):

    world.json                        version stamp and what has been rendered
    dataset_miniworld.json            Karpathy split file (train / val / test), like dataset_coco.json
    captions_miniworld.json           COCO-format reference captions, like captions_val2014.json
    vqa/miniworld_{split}_questions.json, vqa/miniworld_{split}_annotations.json   VQA v2 format
    images/{train,val,test}/{image_id}.png
    zeroshot/class_index.json         ImageNet class-index format: {"0": [folder, class name], ...}
    zeroshot/test/{folder}/{image_id}.png
    zeroshot/train/{folder}/{image_id}.png   labelled single-shape training images (TeCoA's), with the train split

Annotations for every split are written at once (text is cheap); images are rendered per split on
demand: the evaluation splits on first use (seconds), the 10,000 training images (and 2,400 labelled
ones) only for the recipes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from vlm_eval.errors import DataError, MissingResourceError
from vlm_eval.miniworld import language
from vlm_eval.miniworld.render import render
from vlm_eval.miniworld.scenes import SPLIT_CODES, WORLD_SEED, sample_scene, zeroshot_class, zeroshot_classes

log = logging.getLogger(__name__)

WORLD_VERSION = 3  # bump whenever a change to the world changes a file: stale caches are rewritten
SPLIT_SIZES = {"train": 10_000, "val": 500, "test": 500, "zeroshot": 600, "classes": 2_400}
SAMPLE_SIZES = {"train": 0, "val": 8, "test": 12, "zeroshot": 24, "classes": 0}  # committed in assets/miniworld/sample
EVAL_SPLITS = ("val", "test", "zeroshot")
QUESTIONS_PER_IMAGE = 3
WORLD_ENTRIES = ("dataset_miniworld.json", "captions_miniworld.json", "vqa", "images", "zeroshot")  # what a rewrite replaces


def image_id(split: str, index: int) -> int:
    return SPLIT_CODES[split] * 1_000_000 + index


def caption_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([WORLD_SEED, SPLIT_CODES[split], index, 1])


def vqa_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([WORLD_SEED, SPLIT_CODES[split], index, 2])


def image_path(root: Path, split: str, index: int) -> Path:
    if split in ("zeroshot", "classes"):  # class folders: zeroshot/test (evaluation), zeroshot/train (TeCoA)
        folder = "test" if split == "zeroshot" else "train"
        return root / "zeroshot" / folder / class_folder(*zeroshot_class(index)) / f"{image_id(split, index)}.png"
    return root / "images" / split / f"{image_id(split, index)}.png"


def class_folder(color: str, shape: str) -> str:
    return f"{color}_{shape}"


def ensure_eval_data(root: Path, full: bool = True) -> Path:
    """The world's annotations and evaluation images under `root`, written if absent, stale or partial.

    With `full=False` (a folder the user named) a world of other sizes, such as the committed
    sample, is kept at its own sizes; the default cache always holds the full world.
    """
    sizes = SPLIT_SIZES if full else _read_stamp(Path(root)).get("sizes", SPLIT_SIZES)
    return ensure(root, sizes, render_splits=EVAL_SPLITS)


def ensure_train_data(root: Path) -> Path:
    """Everything, the 10,000 training images included (for the training recipes)."""
    return ensure(root, SPLIT_SIZES, render_splits=tuple(SPLIT_SIZES))


def existing_world(root: Path, split: str) -> Path:
    """`root` if it holds a written world with `split` rendered; else a clear error."""
    stamp = _read_stamp(Path(root))
    if stamp.get("version") != WORLD_VERSION or split not in stamp.get("rendered", []):
        raise MissingResourceError(
            f"{root} holds no mini world (version {WORLD_VERSION}) with its {split} images; "
            f"write one with `python -m vlm_eval.miniworld {root}`"
        )
    return Path(root)


def ensure(root: Path, sizes: dict[str, int], render_splits: tuple[str, ...], workers: int | None = None) -> Path:
    """Write what is missing of a world with `sizes` images per split; rewrite it all if stale.

    Holds a lock on the folder, so concurrent runs wait for one writer instead of racing.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        stamp = _read_stamp(root)
        expected = {"version": WORLD_VERSION, "seed": WORLD_SEED, "sizes": sizes}
        if {k: stamp.get(k) for k in expected} != expected:
            _clear(root, had_world=bool(stamp))
            write_annotations(root, sizes)
            stamp = {**expected, "rendered": []}
            _write_json(root / "world.json", stamp)
        for split in render_splits:
            if split not in stamp["rendered"] and sizes.get(split):
                render_split(root, split, sizes[split], workers)
                stamp["rendered"].append(split)
                _write_json(root / "world.json", stamp)  # after the images: a killed run re-renders the split
    return root


def _clear(root: Path, had_world: bool) -> None:
    """Remove a stale world (stamp first, so an interrupted rewrite is never trusted); refuse foreign folders."""
    written = [root / name for name in WORLD_ENTRIES if (root / name).exists()]
    if written and not had_world:
        raise DataError(f"{root} holds {written[0].name} but no mini world (world.json); "
                        "use an empty folder or the default cache for the mini world")
    (root / "world.json").unlink(missing_ok=True)
    for path in written:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_annotations(root: Path, sizes: dict[str, int]) -> None:
    """The Karpathy, COCO-caption, VQA and class-index files of every split."""
    caption_splits = [s for s in ("train", "val", "test") if sizes.get(s)]
    entries = [_karpathy_entry(split, i) for split in caption_splits for i in range(sizes[split])]
    _write_json(root / "dataset_miniworld.json", {"dataset": "miniworld", "images": entries})
    _write_json(root / "captions_miniworld.json", _coco_captions(entries))
    for split in caption_splits:
        questions, annotations = _vqa_split(split, sizes[split])
        _write_json(root / "vqa" / f"miniworld_{split}_questions.json", questions)
        _write_json(root / "vqa" / f"miniworld_{split}_annotations.json", annotations)
    if sizes.get("zeroshot"):
        classes = {str(i): [class_folder(c, s), language.class_name(c, s)] for i, (c, s) in enumerate(zeroshot_classes())}
        _write_json(root / "zeroshot" / "class_index.json", classes)


def render_split(root: Path, split: str, n: int, workers: int | None = None) -> None:
    """Render images 0..n-1 of a split as PNG files, in parallel."""
    from tqdm import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    jobs = [(str(root), split, i) for i in range(n)]
    with ProcessPoolExecutor(workers) as pool:
        list(tqdm(pool.map(_render_one, jobs, chunksize=32), total=n, desc=f"mini world: {split} images", unit="img"))


def _render_one(job: tuple[str, str, int]) -> None:
    root, split, index = job
    path = image_path(Path(root), split, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(render(sample_scene(split, index))).save(partial, format="PNG")
    partial.replace(path)  # readers never see a half-written image


def _karpathy_entry(split: str, index: int) -> dict:
    image = image_id(split, index)
    texts = language.captions(sample_scene(split, index), caption_rng(split, index))
    sentences = [{"raw": t, "tokens": t.replace(",", " ,").replace(":", " :").split(), "imgid": index,
                  "sentid": image * 10 + k} for k, t in enumerate(texts)]
    return {"filepath": split, "filename": f"{image}.png", "cocoid": image, "imgid": index, "split": split,
            "sentences": sentences, "sentids": [s["sentid"] for s in sentences]}


def _coco_captions(entries: list[dict]) -> dict:
    images = [{"id": e["cocoid"], "file_name": e["filename"], "width": 224, "height": 224} for e in entries]
    annotations = [{"image_id": e["cocoid"], "id": s["sentid"], "caption": s["raw"]} for e in entries for s in e["sentences"]]
    return {"info": {"description": "vlm_eval mini world"}, "images": images, "annotations": annotations}


def _vqa_split(split: str, n: int) -> tuple[dict, dict]:
    questions, annotations = [], []
    for index in range(n):
        image, rng = image_id(split, index), vqa_rng(split, index)
        for k, (kind, question, answer) in enumerate(language.questions(sample_scene(split, index), rng, QUESTIONS_PER_IMAGE)):
            qid = image * 10 + k
            answers = language.human_answers(answer, rng)
            questions.append({"image_id": image, "question": question, "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image, "question_type": kind,
                "answer_type": "yes/no" if kind == "yes/no" else ("number" if kind == "count" else "other"),
                "multiple_choice_answer": answer,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)],
            })
    info = {"description": "vlm_eval mini world", "data_subtype": split}
    return {**info, "questions": questions}, {**info, "annotations": annotations}


def _read_stamp(root: Path) -> dict:
    try:
        return json.loads((root / "world.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(obj))
    partial.replace(path)
