"""User-facing errors.

Every error a user can cause (a missing file, a bad card, a wrong checkpoint) is a `VlmEvalError`
whose message names the culprit and the fix. The CLI prints the message without a traceback.
"""


def preview(ids: list[str], limit: int = 5) -> str:
    """"1, 2, 3, ... (12 in all)": the first few of some ids, for a message."""
    return ", ".join(ids[:limit]) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


class VlmEvalError(Exception):
    """Base class of errors whose message is meant for the user."""


class UnknownNameError(VlmEvalError, KeyError):
    """A name (encoder, VLM, task, attack, ...) that no registry or card knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MissingResourceError(VlmEvalError):
    """Weights or data that are not present locally."""


class DataError(VlmEvalError):
    """A malformed annotation file or an unreadable image."""


class BadSampleError(DataError):
    """One sample cannot be used (missing or corrupt image); the run may skip it."""

    def __init__(self, sample_id: str, message: str):
        super().__init__(f"sample {sample_id}: {message}")
        self.sample_id = sample_id


class CheckpointError(VlmEvalError):
    """A checkpoint that does not match the architecture it is loaded into."""


class CardError(VlmEvalError):
    """A card (YAML) that does not follow its schema."""


class NonFiniteLossError(VlmEvalError):
    """An attack's loss became NaN or infinite (often fp16 overflow)."""


class NonFiniteWeightsError(CheckpointError):
    """A checkpoint holding NaN or infinite weights: every score from it would be meaningless."""


class NonFiniteOutputError(VlmEvalError):
    """A model's logits or embeddings became NaN or infinite on a batch (often fp16 overflow)."""

    def __init__(self, what: str, ids: list[str], dtype: str):
        shown = preview(ids, 3)
        fixes = {"torch.float16": "rerun with --precision bf16 or fp32", "torch.bfloat16": "rerun with --precision fp32"}
        fix = fixes.get(dtype, "check the model's weights")
        super().__init__(f"{what} became NaN or infinite on the batch of samples {shown} ({dtype}). Samples "
                         f"finished before this batch are kept; {fix}")
