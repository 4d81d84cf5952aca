"""Reference points that give a score its meaning: what a blind model gets, and what humans get.

* chance level (captioning): each image's caption scored against the references of another image
  (outputs shifted by one), i.e. a fluent captioner that ignores the image;
* human-style ceiling (captioning): each reference scored against the other four, averaged over
  which reference is held out, the way human CIDEr is measured on COCO;
* majority baseline (VQA): every question of a type answered with that type's most frequent answer
  in the training split, i.e. a model that reads the question but not the image.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlm_eval.data.samples import load_json_file
from vlm_eval.metrics import cider, vqa_accuracy


def chance_cider(references: dict[str, list[str]], outputs: dict[str, str]) -> float:
    """CIDEr of the outputs shifted by one image (sorted ids), against the original references."""
    ids = sorted(outputs)
    shifted = {i: outputs[ids[(k + 1) % len(ids)]] for k, i in enumerate(ids)}
    return cider({i: references[i] for i in ids}, shifted)[0]


def ceiling_cider(references: dict[str, list[str]]) -> float:
    """Mean over k of the CIDEr of reference k against the other references (leave one out)."""
    n = min(len(r) for r in references.values())
    scores = []
    for k in range(n):
        held_out = {i: refs[k] for i, refs in references.items()}
        others = {i: refs[:k] + refs[k + 1 :] for i, refs in references.items()}
        scores.append(cider(others, held_out)[0])
    return sum(scores) / len(scores)


def majority_answers(annotations_json: Path) -> dict[str, str]:
    """question_type -> its most frequent canonical answer in a VQA annotations file."""
    counts: dict[str, Counter] = {}
    for entry in load_json_file(annotations_json)["annotations"]:
        counts.setdefault(entry["question_type"], Counter())[entry["multiple_choice_answer"]] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def majority_vqa_accuracy(train_annotations: Path, test_annotations: Path) -> float:
    """VQA accuracy (x100) of answering each test question with its type's training majority."""
    answer_of = majority_answers(train_annotations)
    entries = load_json_file(test_annotations)["annotations"]
    scores = [vqa_accuracy(answer_of[e["question_type"]], [a["answer"] for a in e["answers"]]) for e in entries]
    return 100.0 * sum(scores) / len(scores)
