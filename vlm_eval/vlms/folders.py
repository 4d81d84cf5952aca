"""Model folders checked before transformers reads them, and what transformers refuses, said plainly.

A folder without config.json is the dangerous case: transformers then builds the class's default
configuration (for LLaVA, a 7B model) with random weights, which exhausts memory or, worse, evaluates.
"""

from __future__ import annotations

import json
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vlm_eval.errors import CheckpointError, VlmEvalError

WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_model_folder(folder: Path, what: str, tokenizer: bool = True) -> None:
    """A saved model's folder: config.json (valid JSON), weights and, if `tokenizer`, a tokenizer file."""
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{what}: {folder} has no config.json (transformers would build a default-size model "
                              "instead); give the folder a model was saved to with save_pretrained")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what}: {config} is not valid JSON ({exc}); the folder is damaged") from None
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHTS):
        raise CheckpointError(f"{what}: {folder} holds no weights (*.safetensors or pytorch_model.bin)")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER):
        raise CheckpointError(f"{what}: {folder} holds no tokenizer ({', '.join(TOKENIZER)})")


@contextmanager
def transformers_refusals(what: str, source: str) -> Iterator[None]:
    """What transformers (or torch, or safetensors) refuses while loading `source`, as a `CheckpointError` that
    says why; missing files (OSError) and the toolkit's own errors pass through."""
    try:
        yield
    except (VlmEvalError, OSError):
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{what}: a weights file in {source} was refused and not run: it is a pickle holding more than tensors "
            "(code, or objects that torch.load(weights_only=True) does not accept). Use safetensors weights from "
            "a source you trust") from None
    except Exception as exc:  # noqa: BLE001 - transformers' refusals share no base class
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "mismatched_sizes" in reason:
            reason = "the weights' shapes do not fit config.json"
        raise CheckpointError(f"{what}: transformers could not load {source} ({type(exc).__name__}: {reason}); "
                              "check that its config.json, tokenizer and weights belong together") from None
