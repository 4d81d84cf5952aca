"""Zero-shot data in the forms it comes in offline: CIFAR's python batches (no pickled code runs),
CLIP_benchmark's webdataset shards and plain class folders, converted once into class folders."""

import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_eval import cards
from vlm_eval.cli import main
from vlm_eval.data import read_imagefolder
from vlm_eval.data.cifar import load_batch, read_cifar
from vlm_eval.data.convert import folder_class_name
from vlm_eval.errors import DataError, MissingResourceError
from vlm_eval.tasks.data import as_class_folders


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_EVAL_CACHE", str(tmp_path / "cache"))


def write_cifar10(folder: Path, n: int = 6) -> np.ndarray:
    """A CIFAR-10-format test batch and meta file, as the originals: protocol 2, bytes keys."""
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, (n, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [i % 3 for i in range(n)], b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"airplane", b"aquarium_fish", b"cat"], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return data


def card(reader: str, *keys: str) -> cards.TaskCard:
    return cards.TaskCard(name=reader, type="zeroshot", reader=reader, files={k: k for k in keys}, templates=("a {}",))


def test_cifar_batches_become_class_folders_with_the_same_pixels(tmp_path):
    data = write_cifar10(tmp_path / "cifar-10-batches-py")
    images, labels, names = read_cifar(tmp_path / "cifar-10-batches-py")
    assert names == ["airplane", "aquarium fish", "cat"] and labels == [0, 1, 2, 0, 1, 2]
    assert np.array_equal(images[4], data[4].reshape(3, 32, 32).transpose(1, 2, 0))  # planes -> HWC
    files = as_class_folders(card("cifar", "batches"), {"batches": tmp_path / "cifar-10-batches-py"})
    samples = read_imagefolder(files["image_dir"], files["class_index_json"])
    assert len(samples) == 6
    index = json.loads(files["class_index_json"].read_text())
    assert [v[1] for v in index.values()] == names
    fish = [s for s in samples if s.id.startswith(index["1"][0])]
    assert [s.id.split("/")[1] for s in fish] == ["00001", "00004"]
    assert np.array_equal(np.asarray(Image.open(fish[1].image_path)), images[4])


class Exploit:
    def __reduce__(self):
        return os.system, (f"touch {Path(os.environ['VLM_EVAL_CACHE']).parent / 'pwned'}",)


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match="refused to load posix.system|refused to load nt.system"):
        load_batch(folder / "test_batch")
    with pytest.raises(DataError, match="refused to load"):
        as_class_folders(card("cifar", "batches"), {"batches": folder})
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(MissingResourceError, match="neither CIFAR-10's test_batch nor CIFAR-100's test"):
        read_cifar(tmp_path)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def write_shard(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_become_class_folders(tmp_path):
    root = tmp_path / "wds_toy"
    write_shard(root / "test" / "0.tar", {"s0.cls": b"1", "s0.png": _png(10), "s1.cls": b"0\n", "s1.png": _png(20)})
    write_shard(root / "test" / "1.tar", {"s0.cls": b"1", "s0.png": _png(30)})
    (root / "classnames.txt").write_text("tench\ngreat white shark\n")
    wds = card("webdataset", "shards", "classnames_txt")
    files = as_class_folders(wds, {"shards": root / "test", "classnames_txt": root / "classnames.txt"})
    samples = read_imagefolder(files["image_dir"], files["class_index_json"])
    index = json.loads(files["class_index_json"].read_text())
    assert [v[1] for v in index.values()] == ["tench", "great white shark"]
    by_class = {folder: sorted(s.id.split("/")[1] for s in samples if s.id.startswith(folder))
                for folder, _ in index.values()}
    assert by_class == {index["0"][0]: ["0_s1"], index["1"][0]: ["0_s0", "1_s0"]}
    red = [np.asarray(Image.open(s.image_path))[0, 0, 0] for s in samples if s.id.endswith("1_s0")]
    assert red == [30]
    write_shard(root / "bad" / "0.tar", {"s0.cls": b"7", "s0.png": _png(1)})
    with pytest.raises(DataError, match="says class 7, but classnames.txt has 2 classes"):
        as_class_folders(wds, {"shards": root / "bad", "classnames_txt": root / "classnames.txt"})
    write_shard(root / "unlabelled" / "0.tar", {"s0.png": _png(1)})
    with pytest.raises(DataError, match="images without a .cls label"):
        as_class_folders(wds, {"shards": root / "unlabelled", "classnames_txt": root / "classnames.txt"})


def test_class_folders_take_their_names_from_the_folders(tmp_path):
    for folder in ("001.ak47", "063.electric-guitar-101", "257.clutter"):
        (tmp_path / "cats" / folder).mkdir(parents=True)
        (tmp_path / "cats" / folder / "a.jpg").write_bytes(_png(1))
    files = as_class_folders(card("folders", "image_dir"), {"image_dir": tmp_path / "cats"})
    index = json.loads(files["class_index_json"].read_text())
    assert [v[1] for v in index.values()] == ["ak47", "electric guitar", "clutter"]
    assert len(read_imagefolder(files["image_dir"], files["class_index_json"])) == 3
    assert folder_class_name("101.tennis-shoes") == "tennis shoes"


def test_every_zero_shot_dataset_of_the_protocol_has_a_card():
    names = {"cifar10", "cifar100", "stl10", "imagenet", "caltech101", "caltech256", "oxford-pets", "flowers102",
             "fgvc-aircraft", "stanford-cars", "sun397", "country211", "food101", "eurosat", "dtd", "pcam",
             "imagenet-r", "imagenet-sketch"}
    loaded = {name: cards.load_card("tasks", name) for name in names}
    assert all(c.type == "zeroshot" and c.obtain for c in loaded.values())
    assert len(loaded["imagenet"].templates) == 80 and loaded["cifar10"].templates == ("This is a photo of a {}.",)


def test_the_cifar10_card_runs_from_the_cli(tmp_path):
    write_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    out = tmp_path / "run"
    assert main(["--encoder", "mini-clip", "--task", "cifar10", "--data-root", str(tmp_path), "--n-samples", "all",
                 "--device", "cpu", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 6 and summary["metrics"]["n_classes"] == 3


def test_changed_data_is_converted_again(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, n=6)
    first = as_class_folders(card("cifar", "batches"), {"batches": folder})
    assert as_class_folders(card("cifar", "batches"), {"batches": folder}) == first  # reused
    shutil.rmtree(folder)
    write_cifar10(folder, n=9)
    again = as_class_folders(card("cifar", "batches"), {"batches": folder})
    assert again != first and len(read_imagefolder(again["image_dir"], again["class_index_json"])) == 9
