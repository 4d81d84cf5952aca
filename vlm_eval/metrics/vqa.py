"""VQA accuracy, reproducing the official VQA evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``).

The official scorer compares a predicted answer with the human answers of one question after
light normalisation, and gives ``min(1, #humans among the other answers that agree / 3)``,
averaged over leaving out each human answer in turn. Two details of the official code matter for
exact reproduction and are kept on purpose:

* The normalisation (punctuation, then number words / articles / contractions, which also
  lower-cases) is applied to the prediction *and* the human answers only when the human answers
  are not all identical. With unanimous answers nothing but newline/tab replacement and
  ``strip()`` is done, so ``"Yes"`` does not match ten ``"yes"``. ``normalize="always"`` applies
  it in every case, as OpenFlamingo's ``vqa_metric.py`` (also used by RobustVLM) does.
* Its period regex strips at most 32 periods, because ``re.UNICODE`` (== 32) is passed where
  ``Pattern.sub`` expects ``count``.
"""

from __future__ import annotations

import re

__all__ = ["VQA_NORMALIZE_MODES", "normalize_answer", "vqa_accuracy"]

VQA_NORMALIZE_MODES: tuple[str, ...] = ("official", "always")

# Number words the official code maps to digits ("none" counts as zero there).
_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction table, entry for entry (including its oddities: keys with a capital
# "I" can never match after lower-casing, and "somebody'd" maps to "somebodyd").
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# Punctuation handled by the official code, in its order. The apostrophe and colon are not in
# it (so "don't" survives), and "." has its own rule below.
_PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)

# A comma between two digits ("3,000"): its presence anywhere switches every punctuation mark
# to deletion instead of replacement by a space.
_DIGIT_COMMA = re.compile(r"\d,\d")

# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) lookahead that
# can never fail in front of a ".", so it only removes periods not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")

# Official quirk: at most this many periods are removed (re.UNICODE passed as ``count``).
_PERIOD_MAX_REMOVALS = int(re.UNICODE)


def _clean_whitespace(text: str) -> str:
    """Replace newlines and tabs with spaces and strip, as the official code does first."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """Delete or blank out punctuation, following the official ``processPunctuation``.

    A mark is deleted when it touches a space in the *input* or when the input contains a
    digit-comma-digit sequence; otherwise it becomes a space (so "left/right" splits into two
    words). The conditions are evaluated on the original text, not the partially processed one.
    """
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def _process_digits_articles(text: str) -> str:
    """Lower-case, map number words to digits, drop articles, expand contractions (official)."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Apply the full official VQA answer normalisation.

    Punctuation processing followed by digit/article/contraction processing (which lower-cases
    and collapses whitespace). Newline/tab replacement and stripping are not part of it; the
    official scorer does those separately, and so does `vqa_accuracy`.

    Args:
        text: A predicted or human answer.

    Returns:
        The normalised answer, e.g. ``"Two dogs."`` -> ``"2 dogs"``.
    """
    return _process_digits_articles(_process_punctuation(text))


def _leave_one_out_accuracy(prediction: str, answers: list[str]) -> float:
    """Average over each human answer of ``min(1, matches among the others / 3)``.

    The official code removes the current answer *record* (records differ by ``answer_id``), so
    exactly one answer is left out even when its text repeats; leaving out by index does the same.
    """
    scores = []
    for left_out in range(len(answers)):
        matches = sum(
            1 for i, answer in enumerate(answers) if i != left_out and answer == prediction
        )
        scores.append(min(1, matches / 3))
    return sum(scores) / len(scores)


def vqa_accuracy(prediction: str, answers: list[str], normalize: str = "official") -> float:
    """Score one predicted answer against the human answers with the official VQA metric.

    Args:
        prediction: The model's (post-processed) answer.
        answers: The human answers (10 in VQAv2/TextVQA/VizWiz; any number >= 1 works the same).
        normalize: ``"official"`` normalises prediction and answers only when the human answers
            are not all identical (the official ``vqaEval.py``); ``"always"`` normalises them in
            every case (OpenFlamingo/RobustVLM ``vqa_metric.py``).

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: If ``normalize`` is unknown or ``answers`` is empty.
    """
    if normalize not in VQA_NORMALIZE_MODES:
        valid = ", ".join(VQA_NORMALIZE_MODES)
        raise ValueError(f"unknown VQA normalize mode {normalize!r}; valid modes: {valid}")
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer, got none")
    pred = _clean_whitespace(prediction)
    gts = [_clean_whitespace(answer) for answer in answers]
    # The unanimity test is on the cleaned, not yet normalised, answers (as in the official code).
    if normalize == "always" or len(set(gts)) > 1:
        pred = normalize_answer(pred)
        gts = [normalize_answer(answer) for answer in gts]
    return _leave_one_out_accuracy(pred, gts)
