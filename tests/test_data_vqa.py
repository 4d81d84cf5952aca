"""VQA-format reader (VQAv2, OK-VQA, TextVQA, VizWiz) on small files in the official format."""

import json
import re
from pathlib import Path

import pytest

from vlm_eval.data import read_vqa
from vlm_eval.errors import DataError, MissingResourceError

VQAV2_TEMPLATE = "COCO_val2014_{image_id:012d}.jpg"


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _vqa_files(tmp_path, questions, annotations):
    q = _write(tmp_path / "questions.json", {"info": {}, "task_type": "Open-Ended", "questions": questions})
    a = _write(tmp_path / "annotations.json", {"info": {}, "annotations": annotations})
    return q, a


@pytest.fixture
def vqav2(tmp_path):
    questions = [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
        {"image_id": 262148, "question": "What are the people in the background doing?", "question_id": 262148001},
        {"image_id": 393225, "question": "Is the bowl full?", "question_id": 393225000},
    ]
    ten = ["down"] * 7 + ["at table", "skateboard", "table"]
    annotations = [
        # Stored in a different order from the questions: the join is on question_id.
        {
            "question_type": "is the",
            "multiple_choice_answer": "no",
            "answers": _answers(*(["no"] * 9 + ["yes"])),
            "image_id": 393225,
            "answer_type": "yes/no",
            "question_id": 393225000,
        },
        {
            "question_type": "none of the above",
            "multiple_choice_answer": "down",
            "answers": _answers(*ten),
            "image_id": 262148,
            "answer_type": "other",
            "question_id": 262148000,
        },
        {
            "question_type": "what are the",
            "multiple_choice_answer": "watching",
            "answers": _answers(*(["watching"] * 5 + ["spectating"] * 5)),
            "image_id": 262148,
            "answer_type": "other",
            "question_id": 262148001,
        },
    ]
    return _vqa_files(tmp_path, questions, annotations)


def test_vqav2_samples(vqav2, tmp_path):
    questions, annotations = vqav2
    samples = read_vqa(questions, annotations, tmp_path / "val2014", VQAV2_TEMPLATE)
    assert [s.id for s in samples] == ["262148000", "262148001", "393225000"]
    first = samples[0]
    assert first.question == "Where is he looking?"
    assert first.image_id == "262148"
    assert first.image_path == tmp_path / "val2014" / "COCO_val2014_000000262148.jpg"
    assert first.references == ("down",) * 7 + ("at table", "skateboard", "table")
    assert len(samples[2].references) == 10 and samples[2].references[-1] == "yes"


def test_textvqa_and_vizwiz_templates(tmp_path):
    questions = [{"image_id": "0054c91397f2fe05", "question": "what brand?", "question_id": 34602}]
    annotations = [{"image_id": "0054c91397f2fe05", "question_id": 34602, "answers": _answers(*["nous"] * 10)}]
    q, a = _vqa_files(tmp_path, questions, annotations)
    (textvqa,) = read_vqa(q, a, tmp_path, "{image_id}.jpg")
    assert textvqa.image_path == tmp_path / "0054c91397f2fe05.jpg"

    questions = [{"image_id": "VizWiz_val_00000000.jpg", "question": "Ok. There is another?", "question_id": 0}]
    annotations = [{"image_id": "VizWiz_val_00000000.jpg", "question_id": 0, "answers": _answers(*["unanswerable"] * 10)}]
    q, a = _vqa_files(tmp_path, questions, annotations)
    (vizwiz,) = read_vqa(q, a, tmp_path, "{image_id}")
    assert vizwiz.image_path == tmp_path / "VizWiz_val_00000000.jpg"
    assert vizwiz.id == "0" and vizwiz.references == ("unanswerable",) * 10


def test_missing_annotation_for_question(vqav2, tmp_path):
    questions, _ = vqav2
    partial = _write(
        tmp_path / "partial.json",
        {"annotations": [{"question_id": 262148000, "image_id": 262148, "answers": _answers("down")}]},
    )
    with pytest.raises(DataError, match="no annotation for question_id 262148001") as info:
        read_vqa(questions, partial, tmp_path, VQAV2_TEMPLATE)
    assert str(partial) in str(info.value)


def test_mismatched_image_ids(tmp_path):
    q, a = _vqa_files(
        tmp_path,
        [{"image_id": 1, "question": "?", "question_id": 10}],
        [{"image_id": 2, "question_id": 10, "answers": _answers("a")}],
    )
    with pytest.raises(DataError, match="question_id 10 has image_id 2"):
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)


def test_missing_question_key_names_key_entry_and_file(tmp_path):
    q, a = _vqa_files(
        tmp_path,
        [{"image_id": 1, "question": "?", "question_id": 10}, {"image_id": 1, "question_id": 11}],
        [{"image_id": 1, "question_id": i, "answers": _answers("a")} for i in (10, 11)],
    )
    with pytest.raises(DataError, match=r"questions\[1\] has no key 'question'") as info:
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)
    assert str(q) in str(info.value)


def test_missing_answer_key(tmp_path):
    q, a = _vqa_files(
        tmp_path,
        [{"image_id": 1, "question": "?", "question_id": 10}],
        [{"image_id": 1, "question_id": 10, "answers": [{"answer_id": 1}]}],
    )
    with pytest.raises(DataError, match=r"annotations\[0\]\.answers\[0\] has no key 'answer'") as info:
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)
    assert str(a) in str(info.value)


def test_missing_top_level_keys(tmp_path):
    q = _write(tmp_path / "q.json", {"question": []})
    a = _write(tmp_path / "a.json", {"annotations": []})
    with pytest.raises(DataError, match="no key 'questions'"):
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)
    q = _write(tmp_path / "q.json", {"questions": [{"image_id": 1, "question": "?", "question_id": 1}]})
    a = _write(tmp_path / "a.json", {"anns": []})
    with pytest.raises(DataError, match="no key 'annotations'"):
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)


def test_template_that_does_not_fit(vqav2, tmp_path):
    questions, annotations = vqav2
    with pytest.raises(DataError, match="'file_name'"):
        read_vqa(questions, annotations, tmp_path, "{file_name}")
    q, a = _vqa_files(
        tmp_path,
        [{"image_id": "abc", "question": "?", "question_id": 1}],
        [{"image_id": "abc", "question_id": 1, "answers": _answers("a")}],
    )
    with pytest.raises(DataError, match="does not fit"):
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)  # a string id cannot be formatted with :012d


def test_malformed_json_and_missing_files(vqav2, tmp_path):
    questions, annotations = vqav2
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON") as info:
        read_vqa(questions, bad, tmp_path, VQAV2_TEMPLATE)
    assert str(bad) in str(info.value)
    missing = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    with pytest.raises(MissingResourceError, match=str(missing)):
        read_vqa(missing, annotations, tmp_path, VQAV2_TEMPLATE)


def test_empty_questions(tmp_path):
    q, a = _vqa_files(tmp_path, [], [])
    with pytest.raises(DataError, match="empty"):
        read_vqa(q, a, tmp_path, VQAV2_TEMPLATE)


def _one_question(qid, text="Is it red?", image_id=1):
    return {"image_id": image_id, "question": text, "question_id": qid}


def _one_annotation(qid, answers=("yes",) * 10, image_id=1):
    return {"question_id": qid, "image_id": image_id, "answers": _answers(*answers)}


@pytest.mark.parametrize("questions, annotations, says", [
    ([_one_question(1), _one_question(2), _one_question(1)], [_one_annotation(1), _one_annotation(2)],
     re.escape("questions.json: ids that occur more than once (each would be evaluated and counted twice): 1.")),
    ([_one_question(1, "  "), _one_question(2)], [_one_annotation(1), _one_annotation(2)],
     re.escape("questions.json: empty questions: 1.")),
    ([_one_question(1, None)], [_one_annotation(1)], r"questions\[0\] key 'question' should be a string, got null"),
    ([_one_question(1)], [_one_annotation(1, ("",) * 10)], re.escape("references are all empty (nothing to score against): 1")),
    ([_one_question(1)], [_one_annotation(1, (5,) * 10)], r"answers\[0\] key 'answer' should be a string, got 5"),
])
def test_questions_that_cannot_be_scored_honestly_are_refused(tmp_path, questions, annotations, says):
    q, a = _vqa_files(tmp_path, questions, annotations)
    with pytest.raises(DataError, match=says):
        read_vqa(q, a, tmp_path, "{image_id}.jpg")


def test_many_duplicates_are_counted_and_the_first_named(tmp_path):
    questions = [_one_question(i % 7) for i in range(20)]
    q, a = _vqa_files(tmp_path, questions, [_one_annotation(i) for i in range(7)])
    with pytest.raises(DataError, match=r"counted twice\): 0, 1, 2, 3, 4, \.\.\. \(7 in all\)"):
        read_vqa(q, a, tmp_path, "{image_id}.jpg")
