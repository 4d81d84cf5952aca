"""CIDEr-D (x100) through pycocoevalcap's PTBTokenizer + Cider."""

import shutil

import pytest

from vlm_eval.errors import MissingResourceError
from vlm_eval.metrics import cider, require_java

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer needs Java")

# Two images whose references share no n-gram: every n-gram has df = 1, so its weight is
# tf * (log 2 - log 1), the same for all. A candidate equal to its only reference has cosine 1
# for n = 1..4 and no length penalty: mean 1, / 1 reference, * 10, * 100 = 1000.
REFS = {1: ["A dog runs fast."], 2: ["The blue car stops."]}


@needs_java
def test_hand_computed_values():
    score, per_item = cider(REFS, {1: "a dog runs fast", 2: "the blue car stops"})
    assert per_item == {1: pytest.approx(1000.0), 2: pytest.approx(1000.0)}
    assert score == pytest.approx(1000.0)
    # An empty candidate scores 0 and the corpus score is the mean: (1000 + 0) / 2.
    score, per_item = cider(REFS, {1: "A dog runs fast!", 2: ""})
    assert per_item == {1: pytest.approx(1000.0), 2: 0.0}
    assert score == pytest.approx(500.0)


@needs_java
def test_single_item_set_scores_zero():
    # idf = log(N) - log(df) = log 1 - log 1 = 0 for every n-gram when N = 1.
    score, per_item = cider({"a": ["a dog runs fast"]}, {"a": "a dog runs fast"})
    assert score == 0.0 and per_item == {"a": 0.0}


@needs_java
def test_matches_pycocoevalcap_pipeline():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {
        10: ["A man riding a horse on a beach.", "A person rides a brown horse.", "Horse, man."],
        11: ["Two cats sleeping on a red couch.", "A pair of cats asleep on a sofa."],
        12: ["A plate of food with broccoli.", "Broccoli and rice on a white plate."],
        13: ["A red bus driving down the street.", "A bus on a city street."],
    }
    cands = {10: "a man rides a horse", 11: "two cats on a couch", 12: "", 13: "a bus"}
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": cands[k]}] for k in refs})
    expected, expected_items = Cider().compute_score(gts, res)

    score, per_item = cider(refs, cands)
    assert score == pytest.approx(100 * expected, rel=1e-12)
    for k, s in zip(gts, expected_items):
        assert per_item[k] == pytest.approx(100 * s, rel=1e-12, abs=1e-12)
    assert score == pytest.approx(sum(per_item.values()) / len(per_item))
    assert per_item[12] == 0.0
    # A caption close to its refs beats an unrelated one.
    assert per_item[10] > per_item[13] > 0.0


@needs_java
def test_identical_beats_unrelated_and_str_ids():
    refs = {str(k): v for k, v in REFS.items()}
    _, good = cider(refs, {"1": "a dog runs fast", "2": "the blue car stops"})
    _, bad = cider(refs, {"1": "purple elephants juggle", "2": "the blue car stops"})
    assert good["1"] > bad["1"] == 0.0
    assert set(good) == {"1", "2"}


@needs_java
def test_line_breaks_inside_captions_do_not_shift_items():
    # Java's tokenizer ends lines at "\r" too; an unsanitised one would misalign captions.
    _, per_item = cider(REFS, {1: "a dog\rruns fast", 2: "the blue\ncar stops"})
    assert per_item == {1: pytest.approx(1000.0), 2: pytest.approx(1000.0)}


@needs_java
def test_quiet(capfd):
    cider(REFS, {1: "a dog", 2: "a car"})
    out, err = capfd.readouterr()
    assert out == "" and "PTBTokenizer" not in err


def test_key_mismatch_names_ids():
    with pytest.raises(ValueError, match=r"have no candidate: \[2\].*have no refs: \[3\]"):
        cider(REFS, {1: "a dog", 3: "a car"})
    with pytest.raises(ValueError, match="differ only in type"):
        cider(REFS, {1: "a dog", "2": "a car"})


def test_bad_values():
    with pytest.raises(ValueError, match="empty"):
        cider({}, {})
    with pytest.raises(ValueError, match=r"refs\[2\] is empty"):
        cider({1: ["a"], 2: []}, {1: "a", 2: "b"})
    with pytest.raises(TypeError, match=r"cands\[1\]"):
        cider({1: ["a"]}, {1: ["a"]})


def test_missing_java_raises(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(MissingResourceError, match="default-jre-headless"):
        require_java()
    with pytest.raises(MissingResourceError, match="PTB tokenizer"):
        cider(REFS, {1: "a dog", 2: "a car"})
