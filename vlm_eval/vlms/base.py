"""What every VLM adapter takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from vlm_eval.attacks.base import LossFn


@dataclass
class Batch:
    """A batch of samples as a VLM sees them."""

    ids: list[str]
    pixels: torch.Tensor  # (B, 3, H, W), float, values in [0, 1], not normalised
    prompts: list[str]  # one formatted prompt per sample, each with exactly one "<image>"

    def select(self, rows: list[int], pixels: torch.Tensor) -> Batch:
        """Samples `rows` of this batch, with other images (attacked ones, say)."""
        return Batch([self.ids[i] for i in rows], pixels, [self.prompts[i] for i in rows])


class VLM(Protocol):
    image_size: int

    def format_prompt(self, kind: str, question: str | None = None) -> str: ...

    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]: ...

    def loss_closure(self, batch: Batch, targets: list[str]) -> LossFn: ...

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor: ...  # (B, D), for the semantic checks

    def describe(self) -> dict: ...
