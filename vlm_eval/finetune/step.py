"""What an objective sees at each step: the models, the recipe, and the batch."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from vlm_eval.finetune.recipe import Recipe
from vlm_eval.finetune.towers import Towers


@dataclass
class TrainBatch:
    pixels: torch.Tensor  # (B, 3, S, S) in [0, 1], on the device
    captions: list[str]  # one per image (empty strings for class-folder data)
    labels: torch.Tensor | None  # class indices, for class-folder data
    seeds: list[int]  # per sample: the seed of its inner attack's random start


@dataclass
class Context:
    recipe: Recipe
    model: nn.Module  # the trained Towers as prepared by accelerate (DDP over processes): the loss goes through it
    towers: Towers  # the same weights unwrapped: inner attacks and evaluation go through it
    original: Towers | None  # the frozen base model (FARE, Sim-CLIP as released)
    tokenize: Callable[[list[str]], torch.Tensor]
    class_names: list[str] | None
    autocast: Callable[[], AbstractContextManager]  # the recipe's precision (accelerate's autocast)

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenize(list(texts)).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.towers.parameters()).device


class Objective(Protocol):
    """A registered fine-tuning objective (`OBJECTIVES`)."""

    needs_original: bool  # a frozen copy of the base model
    needs_labels: bool  # class-folder data
    trains_text: bool  # the text tower is trained too

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]: ...
