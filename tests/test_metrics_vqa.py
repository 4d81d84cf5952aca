"""Golden tests for the official VQA accuracy (GT-Vision-Lab/VQA vqaEval.py semantics)."""

import pytest

from vlm_eval.metrics import VQA_NORMALIZE_MODES, normalize_answer, vqa_accuracy


def test_three_of_ten_matches():
    # Leaving out one of the 3 "cat": 2 matches among the other 9 -> 2/3 (3 times).
    # Leaving out one of the 7 "dog": 3 matches -> min(1, 3/3) = 1 (7 times).
    # (3 * 2/3 + 7 * 1) / 10 = 9 / 10.
    assert vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


def test_one_and_two_matches():
    # One "cat": left out -> 0; each of 9 "dog" left out -> 1/3. 9 * (1/3) / 10 = 0.3.
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)
    # Two "cat": left out -> 1/3 (twice); "dog" left out -> 2/3 (8 times). (2/3 + 16/3)/10 = 0.6.
    assert vqa_accuracy("cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)


def test_no_match_and_all_match():
    assert vqa_accuracy("bird", ["cat"] * 3 + ["dog"] * 7) == 0.0
    assert vqa_accuracy("cat", ["cat"] * 10) == 1.0


def test_any_number_of_answers_uses_leave_one_out():
    # A single answer leaves nothing to match once it is left out: always 0.
    assert vqa_accuracy("cat", ["cat"]) == 0.0
    # Four identical answers: 3 others match each time -> 1.
    assert vqa_accuracy("cat", ["cat"] * 4) == 1.0


def test_number_words_and_articles_are_normalised():
    # "two" in prediction and answers both become "2": three "2"s -> 0.9.
    assert vqa_accuracy("two", ["2", "2", "two"] + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("a dog", ["dog"] * 4 + ["cat"] * 6) == 1.0
    assert normalize_answer("The two dogs") == "2 dogs"
    assert normalize_answer("none") == "0"


def test_punctuation_rules():
    assert normalize_answer("yes.") == "yes"
    assert vqa_accuracy("yes.", ["yes"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # A digit-comma-digit anywhere deletes every punctuation mark ...
    assert normalize_answer("3,000") == "3000"
    assert normalize_answer("x/y 1,000") == "xy 1000"
    # ... otherwise a mark not touching a space becomes a space.
    assert normalize_answer("x/y") == "x y"
    assert normalize_answer("left,right") == "left right"
    # Periods before a digit survive; apostrophes and colons are not punctuation here.
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("10:30") == "10:30"
    assert vqa_accuracy("3000", ["3,000"] * 4 + ["2000"] * 6) == 1.0


def test_period_quirk_at_most_32_removed():
    # The official code passes re.UNICODE (32) as the ``count`` of re.sub.
    assert normalize_answer("." * 40) == "." * 8


def test_contractions_and_lowercase():
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("Dont") == "don't"
    assert normalize_answer("Whats") == "what's"
    assert normalize_answer("Yes") == "yes"


def test_official_skips_normalisation_for_unanimous_answers():
    answers = ["yes"] * 10
    # Official: all answers identical -> no punctuation/lower-casing at all, so no match.
    assert vqa_accuracy("yes.", answers) == 0.0
    assert vqa_accuracy("Yes", answers, normalize="official") == 0.0
    # OpenFlamingo/RobustVLM: always normalise.
    assert vqa_accuracy("yes.", answers, normalize="always") == 1.0
    assert vqa_accuracy("Yes", answers, normalize="always") == 1.0
    # Newlines/tabs/outer spaces are handled in both modes.
    assert vqa_accuracy("\tyes\n", answers) == 1.0


def test_always_also_normalises_unanimous_answers():
    # Ten "two" answers: official compares raw text, "always" compares "2" with "2".
    assert vqa_accuracy("2", ["two"] * 10) == 0.0
    assert vqa_accuracy("2", ["two"] * 10, normalize="always") == 1.0


def test_bad_arguments():
    assert VQA_NORMALIZE_MODES == ("official", "always")
    with pytest.raises(ValueError, match="official, always"):
        vqa_accuracy("cat", ["cat"] * 10, normalize="lower")
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])
