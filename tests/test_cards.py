"""Every card parses, names a known family / type / reader, and resolves by name and alias."""

import pytest

from vlm_eval import cards
from vlm_eval.errors import CardError, UnknownNameError
from vlm_eval.tasks import TASK_TYPES
from vlm_eval.tasks.data import READERS
from vlm_eval.vlms import VLM_FAMILIES

ENCODERS = sorted(cards.all_cards("encoders"))
TASKS = sorted(cards.all_cards("tasks"))
VLMS = sorted(cards.all_cards("vlms"))


def test_the_protocol_cards_exist():
    assert {"openai", "tecoa2", "tecoa4", "fare2", "fare4", "simclip2", "simclip4"} <= set(ENCODERS)
    assert {"coco", "flickr30k", "vqav2", "textvqa", "vizwiz", "okvqa"} <= set(TASKS)
    assert "llava" in VLMS


@pytest.mark.parametrize("alias,name", [("clip", "openai"), ("tecoa", "tecoa4"), ("fare", "fare4"), ("simclip", "simclip4")])
def test_encoder_aliases(alias, name):
    assert cards.load_card("encoders", alias).name == name


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_cards(name):
    from vlm_eval.encoders import ENCODER_FAMILIES

    card = cards.load_card("encoders", name)
    assert card.family in ENCODER_FAMILIES
    assert {"random", "path", "hf_hub"} & set(card.source)


@pytest.mark.parametrize("name", TASKS)
def test_task_cards(name):
    card = cards.load_card("tasks", name)
    if card.type == "suite":
        assert card.members and all(cards.load_card("tasks", m).type != "suite" for m in card.members)
        return
    assert card.type in TASK_TYPES and card.reader in READERS
    assert card.obtain, "a task must say how to get its data"
    TASK_TYPES.get(card.type)(card, {})  # the task type accepts the card


@pytest.mark.parametrize("name", VLMS)
def test_vlm_cards(name):
    card = cards.load_card("vlms", name)
    assert card.family in VLM_FAMILIES
    assert sum(x is not None for x in (card.hf_id, card.build, card.path)) == 1  # exactly one source of weights


def test_unknown_card_lists_names_and_aliases():
    with pytest.raises(UnknownNameError) as err:
        cards.load_card("encoders", "fare8")
    assert "fare4" in str(err.value) and "simclip" in str(err.value)


def test_malformed_cards_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: openclip\narch: x\nsource: {random: 0}\ncolour: blue\n")
    with pytest.raises(CardError, match="bad.yaml.*colour"):
        cards.parse_card("encoders", bad)
    bad.write_text("family: [unclosed\n")
    with pytest.raises(CardError, match="bad.yaml"):
        cards.parse_card("encoders", bad)
    bad.write_text("family: openclip\n")
    with pytest.raises(CardError, match="bad.yaml"):
        cards.parse_card("encoders", bad)


@pytest.mark.parametrize("field,value", [("stop_below", "ten"), ("stop_below", "true"), ("answer_comma_cut", "1"),
                                         ("max_new_tokens", "2.5")])
def test_task_card_fields_of_the_wrong_kind_are_named(field, value, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"type: vqa\nreader: vqa\nfiles: {{}}\n{field}: {value}\n")
    with pytest.raises(CardError, match=f"bad.yaml: field '{field}' must be"):
        cards.parse_card("tasks", bad)
    bad.write_text("type: vqa\nreader: vqa\nfiles: {}\nstop_below: 2\nanswer_comma_cut: false\n")
    assert cards.parse_card("tasks", bad).stop_below == 2  # an int is a number


def test_missing_card_folder_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(cards, "CARD_ROOT", tmp_path)
    with pytest.raises(CardError, match="VLM_EVAL_HOME"):
        cards.load_card("encoders", "fare4")


def test_task_card_without_the_files_its_reader_needs_is_a_card_error():
    import dataclasses

    from vlm_eval.tasks.data import read_task_samples

    vqa = cards.load_card("tasks", "vqav2")
    for broken, message in (
        (dataclasses.replace(vqa, files={"questions_json": "q.json"}), "annotations_json"),
        (dataclasses.replace(vqa, image_file=None), "image_file"),
        (dataclasses.replace(cards.load_card("tasks", "coco"), files={"image_dir": "x"}), "karpathy_json"),
    ):
        with pytest.raises(CardError, match=message):
            read_task_samples(broken, {})
