"""The mini world's generator: determinism, scene validity, language, and loading through the real readers."""

import json
from pathlib import Path

import numpy as np
import pytest

from vlm_eval.miniworld import export, language
from vlm_eval.miniworld.render import render
from vlm_eval.miniworld.scenes import IMAGE_SIZE, SHAPES, sample_scene, zeroshot_classes

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "miniworld" / "sample"


@pytest.fixture(scope="module")
def fresh_sample(tmp_path_factory) -> Path:
    """The committed sample, regenerated from scratch."""
    root = tmp_path_factory.mktemp("world")
    return export.ensure(root, export.SAMPLE_SIZES, render_splits=tuple(export.SAMPLE_SIZES), workers=1)


def test_regenerated_sample_equals_the_committed_one(fresh_sample):
    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != ".lock")

    committed = files(SAMPLE)
    assert committed == files(fresh_sample)
    for rel in committed:
        if rel.suffix == ".json":
            assert json.loads((SAMPLE / rel).read_text()) == json.loads((fresh_sample / rel).read_text()), rel
        else:  # compare pixels, not bytes: PNG compression may differ across zlib versions
            from PIL import Image

            assert np.array_equal(np.asarray(Image.open(SAMPLE / rel)), np.asarray(Image.open(fresh_sample / rel))), rel


def test_scenes_and_images_are_pure_functions_of_split_and_index():
    assert sample_scene("test", 7) == sample_scene("test", 7)
    assert sample_scene("test", 7) != sample_scene("test", 8)
    assert np.array_equal(render(sample_scene("val", 3)), render(sample_scene("val", 3)))


@pytest.mark.parametrize("split,index", [("train", i) for i in range(40)] + [("test", i) for i in range(40)])
def test_objects_are_separate_inside_the_image_and_in_distinct_regions(split, index):
    objs = sample_scene(split, index).objects
    assert 1 <= len(objs) <= 3
    assert len({o.region for o in objs}) == len(objs)
    for i, a in enumerate(objs):
        assert a.radius <= a.center[0] <= IMAGE_SIZE - a.radius and a.radius <= a.center[1] <= IMAGE_SIZE - a.radius
        for b in objs[i + 1 :]:
            assert np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]) >= a.radius + b.radius


@pytest.mark.parametrize("index", [0, 2, 10, 36])
def test_train_twins_differ_in_shape_only(index):
    scene, twin = sample_scene("train", index), sample_scene("train", index + 1)
    assert scene.background_seed == twin.background_seed
    assert [(o.color, o.size, o.center) for o in scene.objects] == [(o.color, o.size, o.center) for o in twin.objects]
    assert [o.shape for o in scene.objects] != [o.shape for o in twin.objects]


def test_zeroshot_images_hold_one_object_of_their_class():
    classes = zeroshot_classes()
    assert len(classes) == len(set(classes)) == 24
    for index in range(48):
        (obj,) = sample_scene("zeroshot", index).objects
        assert (obj.color, obj.shape) == classes[index % 24]


@pytest.mark.parametrize("index", range(30))
def test_captions_name_every_object_in_five_forms(index):
    scene = sample_scene("test", index)
    texts = language.captions(scene, export.caption_rng("test", index))
    assert len(set(texts)) == language.N_CAPTIONS
    for text in texts:
        for obj in scene.objects:
            assert f"{obj.color} {obj.shape}" in text


@pytest.mark.parametrize("index", range(30))
def test_vqa_answers_follow_from_the_scene(index):
    scene = sample_scene("test", index)
    rng = export.vqa_rng("test", index)
    asked = language.questions(scene, rng)
    assert len({kind for kind, _, _ in asked}) == len(asked) == 3
    colors_shapes = {(o.color, o.shape) for o in scene.objects}
    for kind, question, answer in asked:
        if kind == "count":
            assert answer == str(len(scene.objects))
        elif kind == "yes/no":
            words = question.rstrip("?").split()
            assert (answer == "yes") == ((words[-2], words[-1]) in colors_shapes)
            assert words[-3] == ("an" if words[-2][0] in "aeiou" else "a")  # "is there an orange square?"
        elif kind == "color":
            shape = question.split()[-1].rstrip("?")
            assert [o.color for o in scene.objects if o.shape == shape] == [answer]
        elif kind == "position":
            color, shape = question.rstrip("?").split()[-2:]
            assert [o.region for o in scene.objects if (o.color, o.shape) == (color, shape)] == [answer]
        elif kind == "shape":
            color = question.split()[-2]
            assert [o.shape for o in scene.objects if o.color == color] == [answer]
            assert answer in SHAPES
        answers = language.human_answers(answer, rng)
        assert len(answers) == 10 and answers.count(answer) >= 6  # the canonical answer is the clear majority


def test_sample_loads_through_the_real_readers():
    from vlm_eval.data import load_image, read_imagefolder, read_karpathy_captions, read_vqa

    captions = read_karpathy_captions(SAMPLE / "dataset_miniworld.json", SAMPLE / "images", "test",
                                      SAMPLE / "captions_miniworld.json")
    assert len(captions) == 12 and all(len(s.references) == 5 for s in captions)
    assert load_image(captions[0].image_path, captions[0].id).size == (IMAGE_SIZE, IMAGE_SIZE)
    questions = read_vqa(SAMPLE / "vqa/miniworld_test_questions.json", SAMPLE / "vqa/miniworld_test_annotations.json",
                         SAMPLE / "images/test", "{image_id}.png")
    assert len(questions) == 36 and all(len(q.references) == 10 and q.image_path.is_file() for q in questions)
    classified = read_imagefolder(SAMPLE / "zeroshot/test", SAMPLE / "zeroshot/class_index.json")
    assert len(classified) == 24
    for sample in classified:
        color, shape = sample.references[0].split()
        (obj,) = sample_scene("zeroshot", int(sample.image_path.stem) % 1_000_000).objects
        assert (obj.color, obj.shape) == (color, shape)


def test_a_stale_world_is_replaced_whole(tmp_path):
    sizes = {"test": 2}
    export.ensure(tmp_path, sizes, render_splits=("test",), workers=1)
    stamp = json.loads((tmp_path / "world.json").read_text())
    (tmp_path / "world.json").write_text(json.dumps({**stamp, "version": 0}))
    (tmp_path / "images/test/leftover.png").write_bytes(b"")
    export.ensure(tmp_path, sizes, render_splits=("test",), workers=1)
    assert sorted(p.name for p in (tmp_path / "images/test").iterdir()) == ["3000000.png", "3000001.png"]
    assert json.loads((tmp_path / "world.json").read_text())["version"] == export.WORLD_VERSION


def test_a_folder_of_other_data_is_never_overwritten(tmp_path):
    from vlm_eval.errors import DataError

    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no mini world"):
        export.ensure(tmp_path, {"test": 2}, render_splits=("test",), workers=1)
    assert (tmp_path / "images").is_dir()


def test_tasks_write_the_world_on_first_use_into_the_cache(tmp_path, monkeypatch):
    from vlm_eval import cards
    from vlm_eval.tasks.data import check_task_data, prepare_generated_data

    monkeypatch.setenv("VLM_EVAL_CACHE", str(tmp_path))
    monkeypatch.setattr(export, "SPLIT_SIZES", {"train": 2, "val": 0, "test": 3, "zeroshot": 24})
    card = cards.load_card("tasks", "mini-coco")
    prepare_generated_data(card, None)
    files = check_task_data(card, None)
    assert files["karpathy_json"] == tmp_path / "miniworld" / "dataset_miniworld.json"
    assert len(list((tmp_path / "miniworld/images/test").glob("*.png"))) == 3
    assert not (tmp_path / "miniworld/images/train").exists()  # training images only for the recipes


def test_recipes_refuse_a_folder_without_a_world(tmp_path):
    from vlm_eval.errors import MissingResourceError

    with pytest.raises(MissingResourceError, match="python -m vlm_eval.miniworld"):
        export.existing_world(tmp_path, "train")


def test_tokenizers_know_every_word_of_the_world():
    from vlm_eval.miniworld.tokenizers import clip_tokenizer, llava_tokenizer
    from vlm_eval.vlms.llava.prompts import llava_prompt

    clip, llava = clip_tokenizer(), llava_tokenizer()
    for prompt in (llava_prompt("caption"), llava_prompt("vqa", "how many shapes are there?")):
        assert llava.unk_token_id not in llava(prompt).input_ids, prompt
    texts = []
    for index in range(60):
        scene = sample_scene("test", index)
        texts += language.captions(scene, export.caption_rng("test", index))
        texts += [t for _, q, a in language.questions(scene, export.vqa_rng("test", index)) for t in (q, a)]
    for text in texts:
        ids = llava(text, add_special_tokens=False).input_ids
        assert llava.unk_token_id not in ids, text
        assert llava.decode(ids).replace(" :", ":") == text, text  # decodes back (PTB splits ":" for CIDEr anyway)
        assert clip.token_to_id("<unk>") not in clip.encode(text).ids, text
    assert not {"{", "}", "}?"} & set(clip.get_vocab()), "template placeholders leaked into the vocabulary"
    end = clip.token_to_id("<end_of_text>")
    assert end == clip.get_vocab_size() - 1 and clip.encode("a red circle").ids[-1] == end


def test_shipped_clip_tokenizer_is_the_one_the_code_builds():
    from tokenizers import Tokenizer

    from vlm_eval.miniworld.tokenizers import clip_tokenizer

    shipped = Tokenizer.from_file(str(SAMPLE.parent / "mini-clip-tokenizer.json"))
    text = "there are two shapes: a small red circle on the left and an orange cross"
    assert shipped.encode(text).ids == clip_tokenizer().encode(text).ids
    assert shipped.get_vocab() == clip_tokenizer().get_vocab()


def test_world_cli_writes_requested_sizes(tmp_path):
    from vlm_eval.miniworld.__main__ import main

    main([str(tmp_path), "--sizes", "train=4,val=0,test=2,zeroshot=0", "--workers", "1"])
    entries = json.loads((tmp_path / "dataset_miniworld.json").read_text())["images"]
    assert [e["split"] for e in entries] == ["train"] * 4 + ["test"] * 2
    assert len(list((tmp_path / "images/train").glob("*.png"))) == 4


def test_the_labelled_training_split_is_the_zero_shot_classes_on_other_images(tmp_path):
    from vlm_eval.miniworld.scenes import zeroshot_class

    for index in range(30):
        objects = sample_scene("classes", index).objects
        assert [(o.color, o.shape) for o in objects] == [zeroshot_class(index)]
        assert sample_scene("classes", index) != sample_scene("zeroshot", index)  # never the evaluation images
    path = export.image_path(tmp_path, "classes", 3)
    assert path.parent.parent == tmp_path / "zeroshot" / "train" and path.parent.name == "_".join(zeroshot_class(3))
