"""LLaVA-1.5 prompts (vicuna_v1 conversation template), as in the FARE / Sim-CLIP evaluations."""

from __future__ import annotations

from vlm_eval.errors import UnknownNameError

IMAGE_PLACEHOLDER = "<image>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

SHORT_ANSWER = "Answer the question using a single word or phrase."
VIZWIZ_UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."

INSTRUCTIONS = {
    "caption": "Provide a short caption for this image.",
    "vqa": "{question}\n" + SHORT_ANSWER,
    "vizwiz": "{question}\n" + VIZWIZ_UNANSWERABLE + "\n" + SHORT_ANSWER,
}


def llava_prompt(kind: str, question: str | None = None) -> str:
    """The full LLaVA-1.5 prompt up to and including "ASSISTANT:".

    Args:
        kind: "caption", "vqa" or "vizwiz".
        question: the question of a VQA sample.
    """
    if kind not in INSTRUCTIONS:
        raise UnknownNameError(f"unknown prompt {kind!r}; known: {', '.join(sorted(INSTRUCTIONS))}")
    instruction = INSTRUCTIONS[kind].format(question=question)
    return f"{VICUNA_SYSTEM} USER: {IMAGE_PLACEHOLDER}\n{instruction} ASSISTANT:"
