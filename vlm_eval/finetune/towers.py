"""The model a fine-tuning run trains: an open_clip CLIP behind one `forward`, and the inner attack.

`Towers` wraps the CLIP so that DDP (through accelerate) sees a single module whose forward gives the
raw (un-normalised) image and text features; pixels enter in [0, 1] and are normalised inside.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlm_eval.attacks.pgd import pgd
from vlm_eval.attacks.threat import ThreatModel, parse_eps
from vlm_eval.contracts import LossFn
from vlm_eval.data.images import clip_normalize
from vlm_eval.finetune.recipe import InnerAttack


class Towers(nn.Module):
    """A CLIP's two towers: `forward(pixels=None, tokens=None) -> (image features, text features)`."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        image = None if pixels is None else self.clip.encode_image(clip_normalize(pixels.float()))
        text = None if tokens is None else self.clip.encode_text(tokens)
        return image, text

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self(pixels=pixels)[0].float()

    def text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self(tokens=tokens)[1].float()

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().float()


def cosine_logits(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale x cos(image_i, text_j): (n_images, n_texts)."""
    return scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


def inner_max(loss_fn: LossFn, x: torch.Tensor, eps: str, inner: InnerAttack, seeds: list[int]) -> torch.Tensor:
    """The inner maximisation: the toolkit's PGD over `loss_fn` (per sample), from a seeded random start.

    Each sample's random start comes from its own seed, so a sample's adversary does not depend on the
    batch or the process it is in. Returns the best point of each sample, detached.
    """
    threat = ThreatModel.parse(eps)
    result = pgd(loss_fn, x.detach(), threat, inner.steps, step_size=parse_eps(inner.step_size), maximize=True,
                 momentum=inner.momentum, random_start=inner.random_start, seeds=seeds)
    return result.x_adv.detach()


def per_sample(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: torch.Tensor) -> LossFn:
    """A loss closure over rows: `fn(pixels, target[rows]) -> (n,)`, where `target` holds one row per sample."""

    def loss_fn(pixels: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return fn(pixels, target if rows is None else target[rows])

    return loss_fn
