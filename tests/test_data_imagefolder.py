"""ImageNet-style class folders + `imagenet_class_index.json` reader, on small files in that format."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm_eval.cards import TaskCard
from vlm_eval.data import read_class_index, read_class_names, read_imagefolder
from vlm_eval.errors import CardError, DataError, MissingResourceError
from vlm_eval.tasks.data import read_task_samples

# Label order is not the folder order: the class index decides, as in ImageNet's file.
INDEX = {"0": ["n02", "tench"], "1": ["n01", "goldfish"], "2": ["n03", "crane"], "3": ["n04", "crane"]}


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path)


@pytest.fixture
def imagenet(tmp_path):
    """Class folders with images under several names and suffixes, plus files that are not images."""
    images = tmp_path / "val"
    for folder, names in {"n01": ["b.png", "a.JPEG"], "n02": ["z.jpg", "c.png"], "n03": ["x.png"], "n04": ["y.jpg"]}.items():
        for name in names:
            write_png(images / folder / name)
    (images / "n01" / "notes.txt").write_text("not an image")
    (images / "n99").mkdir()  # a folder the class index does not list
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps(INDEX))
    return images, index


def test_samples_are_sorted_by_class_index_then_file_name(imagenet):
    samples = read_imagefolder(*imagenet)
    assert [s.id for s in samples] == ["n02/c", "n02/z", "n01/a", "n01/b", "n03/x", "n04/y"]
    assert [s.references for s in samples] == [("tench",)] * 2 + [("goldfish",)] * 2 + [("crane",)] * 2
    assert all(s.image_id == s.id and s.question is None for s in samples)
    assert samples[2].image_path == imagenet[0] / "n01" / "a.JPEG"


def test_class_names_in_label_order_repeats_included(imagenet):
    assert read_class_names(imagenet[1]) == ["tench", "goldfish", "crane", "crane"]
    assert [(c.index, c.folder) for c in read_class_index(imagenet[1])] == [(0, "n02"), (1, "n01"), (2, "n03"), (3, "n04")]


def test_the_task_reader_is_registered(imagenet):
    images, index = imagenet
    card = TaskCard(name="imagenet", type="zeroshot", reader="imagefolder", prompt="",
                    files={"image_dir": "val", "class_index_json": "imagenet_class_index.json"}, card_path="/c/imagenet.yaml")
    assert len(read_task_samples(card, {"image_dir": images, "class_index_json": index})) == 6
    incomplete = TaskCard(name="x", type="zeroshot", reader="imagefolder", prompt="", files={"image_dir": "val"},
                          card_path="/c/x.yaml")
    with pytest.raises(CardError, match="class_index_json"):
        read_task_samples(incomplete, {"image_dir": images})


@pytest.mark.parametrize("content,message", [
    ("{not json", "invalid JSON"),
    ("[]", "non-empty JSON object"),
    ("{}", "non-empty JSON object"),
    ('{"0": ["n01", "a"], "one": ["n02", "b"]}', "key 'one' is not a class index"),
    ('{"0": ["n01", "a"], "01": ["n02", "b"]}', "key '01' is not a class index"),
    ('{"0": ["n01", "a"], "2": ["n02", "b"]}', "class index 1 is missing"),
    ('{"0": ["n01"]}', 'entry "0" should be \\[folder, class name\\]'),
    ('{"0": ["n01", "a"], "1": ["n01", "b"]}', 'entries "0" and "1" both name folder'),
    ('{"0": ["../n01", "a"]}', "plain folder name"),
])
def test_malformed_class_index_names_the_file_and_the_entry(tmp_path, content, message):
    path = tmp_path / "class_index.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_class_index(path)
    assert str(path) in str(info.value)


def test_missing_files_and_folders(imagenet, tmp_path):
    images, index = imagenet
    with pytest.raises(MissingResourceError, match="nowhere.json"):
        read_imagefolder(images, tmp_path / "nowhere.json")
    with pytest.raises(MissingResourceError, match="image folder not found"):
        read_imagefolder(tmp_path / "no_images", index)
    for path in (images / "n03").iterdir():
        path.unlink()
    (images / "n03").rmdir()
    with pytest.raises(MissingResourceError) as info:
        read_imagefolder(images, index)
    assert str(images / "n03") in str(info.value) and '"2"' in str(info.value) and str(index) in str(info.value)


def test_empty_class_folder_and_colliding_stems(imagenet):
    images, index = imagenet
    (images / "n04" / "y.jpg").unlink()
    with pytest.raises(DataError, match=r"n04 has no .*images"):
        read_imagefolder(images, index)
    write_png(images / "n04" / "y.jpg")
    write_png(images / "n04" / "y.png")
    with pytest.raises(DataError, match="several images named 'y'"):
        read_imagefolder(images, index)
