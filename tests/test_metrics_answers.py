"""Post-processing of raw generations per model style (LLaVA-1.5, OpenFlamingo)."""

import pytest

from vlm_eval.metrics import postprocess_caption, postprocess_vqa_answer


def test_openflamingo_vqa_cuts_next_shot_and_list():
    assert postprocess_vqa_answer(" yes Question: what is it?", "openflamingo") == "yes"
    assert postprocess_vqa_answer("two dogs Short answer: 2", "openflamingo") == "two dogs"
    assert postprocess_vqa_answer("red Answer: blue", "openflamingo") == "red"
    # The first of the three words wins, wherever it is.
    assert postprocess_vqa_answer("a Short b Question c", "openflamingo") == "a"
    # Then only the part before the first ", " (with a space) is kept.
    assert postprocess_vqa_answer("red, blue, green", "openflamingo") == "red"
    assert postprocess_vqa_answer("3,000 ", "openflamingo") == "3,000"
    # Case-sensitive, as in OpenFlamingo: "question" does not cut.
    assert postprocess_vqa_answer("a question", "openflamingo") == "a question"


def test_openflamingo_okvqa_answers_keep_their_commas():
    """OpenFlamingo's OK-VQA clean-up cuts the next shot but not at ", " (RobustVLM reuses it)."""
    assert postprocess_vqa_answer("salt, pepper Question: x", "openflamingo", comma_cut=False) == "salt, pepper"
    assert postprocess_vqa_answer("salt, pepper", "openflamingo") == "salt"


def test_the_okvqa_card_keeps_commas_and_the_other_vqa_cards_cut():
    from vlm_eval import cards
    from vlm_eval.tasks import TASK_TYPES

    def answer(task: str) -> str:
        card = cards.load_card("tasks", task)
        return TASK_TYPES.get(card.type)(card, {"postprocess": "openflamingo"}).postprocess("fork, knife")

    assert answer("okvqa") == "fork, knife"
    assert answer("vqav2") == answer("textvqa") == answer("vizwiz") == "fork"


def test_llava_vqa_applies_evalai_processor():
    assert postprocess_vqa_answer("  Yes.\n", "llava") == "yes"
    assert postprocess_vqa_answer("Two", "llava") == "2"
    assert postprocess_vqa_answer("3,000", "llava") == "3000"
    # EvalAI splits off a possessive "'s" before normalising.
    assert postprocess_vqa_answer("The dog's bone?", "llava") == "dog 's bone"
    assert postprocess_vqa_answer("Dont", "llava") == "don't"


def test_captions():
    raw = ' A "dog" on a beach.\nOutput: a cat'
    assert postprocess_caption(raw, "openflamingo") == "A dog on a beach."
    assert postprocess_caption("  A dog. Output\n", "llava") == "A dog. Output"


@pytest.mark.parametrize("func", [postprocess_vqa_answer, postprocess_caption])
def test_unknown_style_lists_valid_ones(func):
    with pytest.raises(ValueError, match="llava, openflamingo"):
        func("x", "blip")
