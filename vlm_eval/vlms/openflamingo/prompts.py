"""OpenFlamingo's evaluation prompts, demonstrations and generation settings (open_flamingo/eval).

A sample is a chunk `<image>Output:{caption}<|endofchunk|>` or
`<image>Question:{question} Short answer:{answer}<|endofchunk|>`; the query is the same chunk cut
after its last colon. Demonstrations come first, joined without a separator, colons removed from
their answers (RobustVLM's evaluation, which the toolkit reproduces; OpenFlamingo's own puts a newline
after each and keeps colons). In the "0-shot" setting they are two text-only demonstrations (their
`<image>` removed); with k shots, k demonstrations that carry their images.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from vlm_eval.errors import UnknownNameError

IMAGE, END_OF_CHUNK = "<image>", "<|endofchunk|>"
TEXT_ONLY_DEMONSTRATIONS = 2  # what "0 shots" means in OpenFlamingo's evaluation

CHUNKS = {
    "caption": "Output:{answer}",
    "vqa": "Question:{question} Short answer:{answer}",
    "vizwiz": "Question:{question} Short answer:{answer}",
}


class Generation(NamedTuple):
    num_beams: int
    length_penalty: float


# captions: 3 beams, length penalty -2 (short captions); answers: 3 beams, no penalty
GENERATION = {"caption": Generation(3, -2.0), "vqa": Generation(3, 0.0), "vizwiz": Generation(3, 0.0)}


class Demonstration(NamedTuple):
    question: str | None
    answer: str


def chunk(kind: str, question: str | None, answer: str | None, image: bool = True) -> str:
    """One sample's chunk; `answer` None: the query, cut after its last colon (the answer's own colons
    are removed, so the loss's "after the last colon" is the answer)."""
    if kind not in CHUNKS:
        raise UnknownNameError(f"unknown prompt {kind!r}; known: {', '.join(sorted(CHUNKS))}")
    text = CHUNKS[kind].format(question=question, answer="" if answer is None else answer.replace(":", ""))
    return (IMAGE if image else "") + text + ("" if answer is None else END_OF_CHUNK)


def demonstration_count(shots: int) -> tuple[int, bool]:
    """(demonstrations per sample, whether they carry images) for `--shots`."""
    return (TEXT_ONLY_DEMONSTRATIONS, False) if shots == 0 else (shots, True)


def flamingo_prompt(kind: str, question: str | None = None, demonstrations: Sequence[Demonstration] = (),
                    with_images: bool = False) -> str:
    """The whole prompt: the demonstrations, then the query chunk with its `<image>`."""
    context = "".join(chunk(kind, *demo, image=with_images) for demo in demonstrations)
    return context + chunk(kind, question, None)


def chunk_answer(prompt: str, answer: str) -> str:
    """The query chunk of `prompt` completed by `answer` (colons removed) and closed: a loss's text."""
    return prompt + answer.replace(":", "") + END_OF_CHUNK
