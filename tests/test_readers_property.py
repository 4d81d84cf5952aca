"""Random mutations of valid annotation files: a reader either refuses the file with a `VlmEvalError` or returns
exactly the distinct, scorable samples the file holds; never a traceback, never a silent miscount (issue 20)."""

import copy
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlm_eval.data import read_class_index, read_karpathy_captions, read_vqa  # noqa: E402
from vlm_eval.errors import VlmEvalError  # noqa: E402

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def paths(node, prefix=()):
    """Every path to a value inside a JSON document."""
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


@st.composite
def mutated(draw, document):
    """`document` with one to three random edits: a value replaced, a key or element dropped, an element repeated."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        inside = [p for p in paths(document) if p]
        if not inside:  # an edit emptied the document
            break
        path = draw(st.sampled_from(inside))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        edit = draw(st.sampled_from(["replace", "drop", "repeat"]))
        if edit == "replace":
            parent[key] = draw(JSON_VALUES)
        elif edit == "drop":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    return document


def karpathy_document():
    return {"images": [{"filename": f"COCO_val2014_{i:012d}.jpg", "filepath": "val2014", "cocoid": i,
                        "split": "test" if i % 4 else "train",
                        "sentences": [{"raw": f"caption {k} of image {i}", "tokens": []} for k in range(3)]}
                       for i in range(8)]}


def scorable(samples) -> None:
    """What every returned sample set must be: distinct ids, texts, no empty question or reference set."""
    assert len({s.id for s in samples}) == len(samples)
    for s in samples:
        assert all(isinstance(r, str) for r in s.references) and any(r.strip() for r in s.references)
        assert s.question is None or (isinstance(s.question, str) and s.question.strip())


@FAST
@given(document=mutated(karpathy_document()))
def test_karpathy_files_are_read_whole_or_refused(tmp_path, document):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(document))
    try:
        samples = read_karpathy_captions(path, tmp_path, split="test")
    except VlmEvalError:
        return
    scorable(samples)
    in_split = [e for e in document["images"] if e.get("split") == "test"]
    assert len(samples) == len(in_split)  # every entry of the split, none dropped quietly


def vqa_documents():
    questions = [{"image_id": i // 2, "question": f"what is at {i}?", "question_id": i} for i in range(6)]
    annotations = [{"question_id": i, "image_id": i // 2, "answers": [{"answer": f"a{i}"} for _ in range(10)]}
                   for i in range(6)]
    return {"questions": {"questions": questions}, "annotations": {"annotations": annotations}}


@FAST
@given(documents=mutated(vqa_documents()))
def test_vqa_files_are_read_whole_or_refused(tmp_path, documents):
    if not isinstance(documents, dict) or set(documents) != {"questions", "annotations"}:
        return  # the mutation hit the pair itself, not a file
    q, a = tmp_path / "questions.json", tmp_path / "annotations.json"
    q.write_text(json.dumps(documents["questions"]))
    a.write_text(json.dumps(documents["annotations"]))
    try:
        samples = read_vqa(q, a, tmp_path, "{image_id}.jpg")
    except VlmEvalError:
        return
    scorable(samples)
    assert len(samples) == len(documents["questions"]["questions"])


def coco_captions_document():
    return {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(4)],
            "annotations": [{"id": k, "image_id": k % 4, "caption": f"caption {k}"} for k in range(12)]}


@FAST
@given(document=mutated(coco_captions_document()))
def test_coco_caption_files_are_read_whole_or_refused(tmp_path, document):
    karpathy = tmp_path / "dataset.json"
    karpathy.write_text(json.dumps({"images": [{"filename": f"{i}.jpg", "cocoid": i, "split": "test",
                                                "sentences": [{"raw": "x"}]} for i in range(4)]}))
    references = tmp_path / "captions.json"
    references.write_text(json.dumps(document))
    try:
        samples = read_karpathy_captions(karpathy, tmp_path, split="test", references_json=references)
    except VlmEvalError:
        return
    scorable(samples)
    assert len(samples) == 4


@FAST
@given(document=mutated({str(i): [f"n0{i}", f"class {i}"] for i in range(5)}))
def test_class_index_files_are_read_whole_or_refused(tmp_path, document):
    path = tmp_path / "class_index.json"
    path.write_text(json.dumps(document))
    try:
        classes = read_class_index(path)
    except VlmEvalError:
        return
    assert [c.index for c in classes] == list(range(len(document)))
    assert len({c.folder for c in classes}) == len(classes) and all(isinstance(c.name, str) for c in classes)
