"""Prompt-specific post-processing of generated answers and captions, before scoring.

Each style reproduces what the model's reference evaluation code does to a raw generation:

* ``"llava"``: LLaVA-1.5 (``llava/eval/model_vqa_loader.py`` strips the decoded text; the VQAv2
  and VizWiz submission converters and the TextVQA evaluator then pass every prediction through
  ``EvalAIAnswerProcessor`` from ``llava/eval/m4c_evaluator.py``).
* ``"openflamingo"``: OpenFlamingo's ``open_flamingo/eval`` (``postprocess_vqa_generation`` and
  ``postprocess_captioning_generation``), which cut the few-shot continuation the model keeps
  generating after its answer.
"""

from __future__ import annotations

import re

from vlm_eval.metrics.vqa import _clean_whitespace, _process_digits_articles, _process_punctuation

__all__ = ["CAPTION_STYLES", "VQA_ANSWER_STYLES", "postprocess_caption", "postprocess_vqa_answer"]

VQA_ANSWER_STYLES: tuple[str, ...] = ("llava", "openflamingo")
CAPTION_STYLES: tuple[str, ...] = ("llava", "openflamingo")

# OpenFlamingo's few-shot prompts are "Question:... Short answer:..."; a generation that runs on
# starts the next shot with one of these words, so everything from the first of them is dropped.
_OF_NEXT_SHOT = re.compile("Question|Answer|Short")


def _check_style(style: str, valid: tuple[str, ...], what: str) -> None:
    """Raise a ValueError naming the valid styles when ``style`` is not one of them."""
    if style not in valid:
        raise ValueError(f"unknown {what} style {style!r}; valid styles: {', '.join(valid)}")


def _evalai_answer(text: str) -> str:
    """LLaVA's ``EvalAIAnswerProcessor``: lower-case, drop "," and "?", split off "'s", normalise.

    The rest is the official VQA normalisation. Its punctuation step differs from the official
    one only in its digit-comma regex, which cannot match here since every comma is already gone,
    so the official implementation gives identical results.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = _clean_whitespace(text)
    return _process_digits_articles(_process_punctuation(text))


def postprocess_vqa_answer(text: str, style: str, comma_cut: bool = True) -> str:
    """Turn a raw VQA generation into the answer that gets scored.

    Args:
        text: The decoded generation (prompt excluded).
        style: ``"llava"``: strip, then LLaVA-1.5's ``EvalAIAnswerProcessor`` (lower-case; remove
            "," and "?"; "'s" -> " 's"; official punctuation and number/article/contraction
            processing). LLaVA's own VQAv2/VizWiz/TextVQA evaluation applies exactly this to its
            "single word or phrase" outputs before scoring, so it is kept to reproduce LLaVA's
            numbers; the VQA metric then normalises again, which is harmless.
            ``"openflamingo"``: cut at the first "Question", "Answer" or "Short" (the start of a
            hallucinated next shot), then at the first ", ", and strip, as OpenFlamingo's
            ``postprocess_vqa_generation`` does (it does not strip itself; the VQA metric does,
            so stripping changes no score).
        comma_cut: ``"openflamingo"`` only: cut at the first ", ". OpenFlamingo's OK-VQA clean-up
            (``postprocess_ok_vqa_generation``) does not, so the okvqa card turns it off.

    Returns:
        The answer to pass to `vqa_accuracy`.

    Raises:
        ValueError: If ``style`` is unknown.
    """
    _check_style(style, VQA_ANSWER_STYLES, "VQA answer")
    if style == "llava":
        return _evalai_answer(text.strip())
    answer = _OF_NEXT_SHOT.split(text, maxsplit=1)[0]
    return (answer.split(", ", 1)[0] if comma_cut else answer).strip()


def postprocess_caption(text: str, style: str) -> str:
    """Turn a raw captioning generation into the caption that gets scored.

    Args:
        text: The decoded generation (prompt excluded).
        style: ``"llava"``: strip (LLaVA answers the caption instruction in one turn).
            ``"openflamingo"``: cut at the first "Output" (the start of a hallucinated next
            "Output:" shot), delete double quotes, and strip, as OpenFlamingo's captioning
            evaluation does (``postprocess_captioning_generation(out).replace('"', "")``; the
            PTB tokenizer would drop standalone quotes anyway, but not in ``dog"s``).

    Returns:
        The caption to pass to `cider`.

    Raises:
        ValueError: If ``style`` is unknown.
    """
    _check_style(style, CAPTION_STYLES, "caption")
    if style == "llava":
        return text.strip()
    return text.split("Output", 1)[0].replace('"', "").strip()
