"""VQA samples from a questions file and an annotations file in the official VQA format.

Used by VQAv2, OK-VQA and the VQA-format conversions of TextVQA and VizWiz. The image file name
is a `str.format` template applied to the question entry; OpenFlamingo's `VQADataset` uses:

- VQAv2, OK-VQA: ``"COCO_val2014_{image_id:012d}.jpg"`` (OpenFlamingo takes the split name,
  e.g. "val2014", from the last component of the image folder path);
- TextVQA: ``"{image_id}.jpg"`` (the image id is the TextVQA image hash);
- VizWiz: ``"{image_id}"`` (the image id is already the file name, e.g. "VizWiz_val_00000000.jpg").

OpenFlamingo pairs a question with the annotation at the same list index; here they are joined on
`question_id`, which gives the same result on the official files and fails loudly on files that
do not match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlm_eval.data.samples import Sample, load_json_file, refuse_unscorable, require, require_list, require_text
from vlm_eval.errors import DataError

logger = logging.getLogger(__name__)

# One annotation: the image id (to cross-check the question) and the human answers.
_Annotation = tuple[Any, tuple[str, ...]]


def read_vqa(questions_json: Path, annotations_json: Path, image_dir: Path, image_file: str) -> list[Sample]:
    """Read VQA questions with their human answers, in the order of the questions file.

    Args:
        questions_json: `{"questions": [{"image_id", "question", "question_id"}, ...]}`.
        annotations_json: `{"annotations": [{"question_id", "image_id", "answers": [{"answer"}]}]}`.
        image_dir: Folder holding the images.
        image_file: `str.format` template applied to each question entry, giving the image file
            name inside `image_dir` (see the module docstring).

    Returns:
        One `Sample` per question: id = str(question_id), references = the answers' "answer"
        strings in file order, question, image_id = str(image_id).

    Raises:
        MissingResourceError: A JSON file does not exist.
        DataError: Invalid JSON, a missing key, no questions, a question without annotation, or a
            template that does not fit the question entries.
    """
    questions_json, annotations_json, image_dir = Path(questions_json), Path(annotations_json), Path(image_dir)
    questions = require_list(load_json_file(questions_json), "questions", questions_json, "top level")
    if not questions:
        raise DataError(f"{questions_json}: the 'questions' list is empty")
    annotations = _read_annotations(annotations_json)
    samples = []
    for index, question in enumerate(questions):
        where = f"questions[{index}]"
        question_id = require(question, "question_id", questions_json, where)
        image_id = require(question, "image_id", questions_json, where)
        text = require_text(question, "question", questions_json, where)
        answers = _answers_for(question_id, image_id, annotations, annotations_json, questions_json)
        samples.append(
            Sample(
                id=str(question_id),
                image_path=image_dir / _image_name(image_file, question, questions_json, where),
                references=answers,
                question=text,
                image_id=str(image_id),
            )
        )
    logger.info("read %d questions from %s", len(samples), questions_json)
    return refuse_unscorable(samples, questions_json)


def _read_annotations(path: Path) -> dict[str, _Annotation]:
    """Map str(question_id) to (image_id, answers); duplicates are an error."""
    entries = require_list(load_json_file(path), "annotations", path, "top level")
    by_question: dict[str, _Annotation] = {}
    for index, entry in enumerate(entries):
        where = f"annotations[{index}]"
        key = str(require(entry, "question_id", path, where))
        if key in by_question:
            raise DataError(f"{path}: {where} repeats question_id {key}")
        answers = require_list(entry, "answers", path, where)
        if not answers:
            raise DataError(f"{path}: {where} has an empty 'answers' list")
        texts = tuple(require_text(a, "answer", path, f"{where}.answers[{i}]") for i, a in enumerate(answers))
        by_question[key] = (entry.get("image_id"), texts)
    return by_question


def _answers_for(
    question_id: Any,
    image_id: Any,
    annotations: dict[str, _Annotation],
    annotations_json: Path,
    questions_json: Path,
) -> tuple[str, ...]:
    """The answers of one question, checking that both files agree on its image."""
    key = str(question_id)
    if key not in annotations:
        raise DataError(f"{annotations_json}: no annotation for question_id {key} of {questions_json}")
    annotated_image, answers = annotations[key]
    # A mismatch means the two files are not a pair (e.g. train questions with val annotations).
    if annotated_image is not None and str(annotated_image) != str(image_id):
        raise DataError(
            f"{annotations_json}: question_id {key} has image_id {annotated_image}, "
            f"but {questions_json} says {image_id}"
        )
    return answers


def _image_name(template: str, question: dict[str, Any], path: Path, where: str) -> str:
    try:
        return template.format(**question)
    except KeyError as err:
        raise DataError(f"{path}: {where} has no key {err.args[0]!r} needed by image_file {template!r}") from err
    except (ValueError, IndexError, TypeError) as err:
        raise DataError(f"{path}: image_file {template!r} does not fit {where} ({err})") from err
