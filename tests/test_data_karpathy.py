"""Karpathy-split captioning reader, on small files in the real COCO / Flickr30k formats."""

import json
from pathlib import Path

import pytest

from vlm_eval.data import Sample, read_karpathy_captions
from vlm_eval.errors import DataError, MissingResourceError


def _sentences(*raws):
    return [{"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": i} for i, raw in enumerate(raws)]


def _coco_entry(cocoid, split, filepath="val2014", n_sentences=5):
    return {
        "filepath": filepath,
        "sentids": list(range(n_sentences)),
        "filename": f"COCO_{filepath}_{cocoid:012d}.jpg",
        "imgid": cocoid % 1000,
        "split": split,
        "sentences": _sentences(*(f"karpathy caption {k} of {cocoid}" for k in range(n_sentences))),
        "cocoid": cocoid,
    }


def _flickr_entry(name, split):
    return {
        "sentids": [0, 1],
        "imgid": 7,
        "sentences": _sentences(f"a flickr caption of {name}", f"another one of {name}"),
        "split": split,
        "filename": f"{name}.jpg",
    }


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco_karpathy(tmp_path):
    images = [
        _coco_entry(9, "train", filepath="train2014"),
        _coco_entry(391895, "test"),
        _coco_entry(522418, "val"),
        _coco_entry(184613, "test"),
        _coco_entry(318219, "restval"),
    ]
    return _write(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})


@pytest.fixture
def coco_captions(tmp_path):
    """A COCO-format captions file with 6 and 7 captions for the two test images."""
    annotations = [{"image_id": 391895, "id": 100 + k, "caption": f"coco caption {k} of 391895"} for k in range(6)]
    annotations += [{"image_id": 184613, "id": 200 + k, "caption": f"coco caption {k} of 184613"} for k in range(7)]
    annotations.insert(3, {"image_id": 522418, "id": 999, "caption": "a val image"})
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (391895, 184613, 522418)]
    return _write(tmp_path / "captions_val2014.json", {"images": images, "annotations": annotations})


def test_coco_test_split_in_file_order_with_karpathy_sentences(coco_karpathy, tmp_path):
    samples = read_karpathy_captions(coco_karpathy, tmp_path / "val2014")
    assert [s.id for s in samples] == ["391895", "184613"]
    first = samples[0]
    assert isinstance(first, Sample)
    assert first.image_id == "391895"
    assert first.question is None
    assert first.image_path == tmp_path / "val2014" / "COCO_val2014_000000391895.jpg"
    assert first.references == tuple(f"karpathy caption {k} of 391895" for k in range(5))


def test_split_filtering(coco_karpathy, tmp_path):
    assert [s.id for s in read_karpathy_captions(coco_karpathy, tmp_path, split="train")] == ["9"]
    assert [s.id for s in read_karpathy_captions(coco_karpathy, tmp_path, split="val")] == ["522418"]
    assert [s.id for s in read_karpathy_captions(coco_karpathy, tmp_path, split="restval")] == ["318219"]


def test_image_dir_may_hold_the_filepath_subfolders(coco_karpathy, tmp_path):
    (tmp_path / "val2014").mkdir()
    samples = read_karpathy_captions(coco_karpathy, tmp_path)
    assert samples[0].image_path == tmp_path / "val2014" / "COCO_val2014_000000391895.jpg"
    # Without a matching subfolder the file is expected directly in image_dir.
    train = read_karpathy_captions(coco_karpathy, tmp_path, split="train")
    assert train[0].image_path == tmp_path / "COCO_train2014_000000000009.jpg"


def test_references_from_coco_file_win_over_karpathy_sentences(coco_karpathy, coco_captions, tmp_path):
    samples = read_karpathy_captions(coco_karpathy, tmp_path, references_json=coco_captions)
    assert samples[0].references == tuple(f"coco caption {k} of 391895" for k in range(6))
    assert samples[1].references == tuple(f"coco caption {k} of 184613" for k in range(7))


def test_the_kth_attacked_caption_is_the_kth_karpathy_sentence(coco_karpathy, coco_captions, tmp_path):
    """RobustVLM attacks `sentences[k]["raw"]` of the split file, whatever file the references come from."""
    from vlm_eval import cards
    from vlm_eval.tasks import TASK_TYPES

    task = TASK_TYPES.get("captioning")(cards.load_card("tasks", "coco"), {})
    samples = read_karpathy_captions(coco_karpathy, tmp_path, references_json=coco_captions)
    assert task.attack_texts(samples[0]) == [f"karpathy caption {k} of 391895" for k in range(5)]
    # an entry without sentences falls back to its references
    entries = json.loads(coco_karpathy.read_text())
    for entry in entries["images"]:
        entry["sentences"] = []
    bare = read_karpathy_captions(_write(tmp_path / "bare.json", entries), tmp_path, references_json=coco_captions)
    assert task.attack_texts(bare[1]) == [f"coco caption {k} of 184613" for k in range(7)]
    with pytest.raises(DataError, match=r"images\[1\] has no 'sentences'"):  # nothing to score against
        read_karpathy_captions(tmp_path / "bare.json", tmp_path)


def test_flickr_ids_are_filename_stems_and_match_coco_style_ids(tmp_path):
    karpathy = _write(
        tmp_path / "dataset_flickr30k.json",
        {
            "images": [
                _flickr_entry("1000092795", "train"),
                _flickr_entry("1007129816", "test"),
                _flickr_entry("1009434119", "test"),
            ],
            "dataset": "flickr30k",
        },
    )
    # Integer ids in one annotation, string ids in another: both match the filename stem.
    coco_style = _write(
        tmp_path / "dataset_flickr30k_coco_style.json",
        {
            "images": [{"id": 1007129816}, {"id": "1009434119"}],
            "annotations": [
                {"image_id": 1007129816, "id": 1, "caption": "a man with a hat"},
                {"image_id": "1009434119", "id": 2, "caption": "a dog on grass"},
                {"image_id": 1007129816, "id": 3, "caption": "a man in orange"},
            ],
        },
    )
    images = tmp_path / "flickr30k-images"
    plain = read_karpathy_captions(karpathy, images)
    assert [s.id for s in plain] == ["1007129816", "1009434119"]
    assert plain[0].image_path == images / "1007129816.jpg"
    assert plain[0].references == ("a flickr caption of 1007129816", "another one of 1007129816")
    scored = read_karpathy_captions(karpathy, images, references_json=coco_style)
    assert scored[0].references == ("a man with a hat", "a man in orange")
    assert scored[1].references == ("a dog on grass",)


def test_empty_split_lists_the_splits_present(coco_karpathy, tmp_path):
    with pytest.raises(DataError, match=r"no images in split 'tset'.*restval, test, train, val") as info:
        read_karpathy_captions(coco_karpathy, tmp_path, split="tset")
    assert str(coco_karpathy) in str(info.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "dataset_coco.json"
    with pytest.raises(MissingResourceError, match=str(missing)):
        read_karpathy_captions(missing, tmp_path)


def test_missing_references_file(coco_karpathy, tmp_path):
    missing = tmp_path / "captions_val2014.json"
    with pytest.raises(MissingResourceError, match=str(missing)):
        read_karpathy_captions(coco_karpathy, tmp_path, references_json=missing)


def test_malformed_json(tmp_path):
    bad = tmp_path / "dataset_coco.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="invalid JSON") as info:
        read_karpathy_captions(bad, tmp_path)
    assert str(bad) in str(info.value)


def test_missing_top_level_key(tmp_path):
    bad = _write(tmp_path / "dataset_coco.json", {"imgs": []})
    with pytest.raises(DataError, match="'images'") as info:
        read_karpathy_captions(bad, tmp_path)
    assert str(bad) in str(info.value)


def test_missing_entry_key_names_entry_key_and_file(tmp_path):
    entry = _coco_entry(391895, "test")
    del entry["filename"]
    bad = _write(tmp_path / "dataset_coco.json", {"images": [_coco_entry(9, "test"), entry]})
    with pytest.raises(DataError, match=r"images\[1\] has no key 'filename'") as info:
        read_karpathy_captions(bad, tmp_path)
    assert str(bad) in str(info.value)


def test_missing_sentence_raw(tmp_path):
    entry = _coco_entry(391895, "test")
    del entry["sentences"][2]["raw"]
    bad = _write(tmp_path / "dataset_coco.json", {"images": [entry]})
    with pytest.raises(DataError, match=r"images\[0\]\.sentences\[2\] has no key 'raw'"):
        read_karpathy_captions(bad, tmp_path)


def test_missing_caption_key_in_references(coco_karpathy, tmp_path):
    bad = _write(tmp_path / "captions.json", {"annotations": [{"image_id": 391895, "id": 1}]})
    with pytest.raises(DataError, match=r"annotations\[0\] has no key 'caption'") as info:
        read_karpathy_captions(coco_karpathy, tmp_path, references_json=bad)
    assert str(bad) in str(info.value)


def test_image_without_references_in_coco_file(coco_karpathy, tmp_path):
    refs = _write(tmp_path / "captions.json", {"annotations": [{"image_id": 391895, "id": 1, "caption": "x"}]})
    with pytest.raises(DataError, match="no captions for image id 184613") as info:
        read_karpathy_captions(coco_karpathy, tmp_path, references_json=refs)
    assert str(refs) in str(info.value)


def test_images_are_not_checked_at_read_time(coco_karpathy, tmp_path):
    samples = read_karpathy_captions(coco_karpathy, tmp_path / "does-not-exist")
    assert len(samples) == 2 and not samples[0].image_path.exists()


def test_a_repeated_image_or_empty_references_are_refused(tmp_path):
    repeated = _write(tmp_path / "repeated.json", {"images": [_coco_entry(9, "test"), _coco_entry(9, "test")]})
    with pytest.raises(DataError, match="repeated.json: ids that occur more than once .*: 9"):
        read_karpathy_captions(repeated, tmp_path)
    blank = _coco_entry(7, "test")
    blank["sentences"] = _sentences("", "  ")
    empty = _write(tmp_path / "empty.json", {"images": [_coco_entry(9, "test"), blank]})
    with pytest.raises(DataError, match="references are all empty .*: 7"):
        read_karpathy_captions(empty, tmp_path)
    numbered = _coco_entry(5, "test")
    numbered["sentences"][1]["raw"] = 42
    with pytest.raises(DataError, match=r"images\[0\].sentences\[1\] key 'raw' should be a string, got 42"):
        read_karpathy_captions(_write(tmp_path / "numbered.json", {"images": [numbered]}), tmp_path)
