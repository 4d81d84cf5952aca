"""Sim-CLIP (Hossain & Imteaj 2024), in the paper's form and in its released code's form.

Paper (`simclip`): a Siamese network with shared weights and a stop-gradient, D(p, z) = -cos(p, z):
loss = 1/2 D(f(x_adv), sg f(x)) + 1/2 D(f(x), sg f(x_adv)); x_adv maximises D(f(x + d), sg f(x)).
Released code (`simclip-released`): the clean branch is the frozen original, so the loss is
-1/2 cos(f(x_adv), f0(x)) with x_adv from FARE's inner loss. The two differ in what anchors the
clean embedding (the trained model itself, or the original), so both are offered, named.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.finetune.objectives.fare import squared_distance
from vlm_eval.finetune.step import Context, TrainBatch
from vlm_eval.finetune.towers import inner_max, per_sample


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -<p/|p|, z/|z|> per sample."""
    return -(F.normalize(p.float(), dim=-1) * F.normalize(z.float(), dim=-1)).sum(-1)


class SimClip:
    needs_original, needs_labels, trains_text = False, False, False

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), ctx.autocast():
            anchor = ctx.towers.image(batch.pixels)
        with ctx.autocast():
            x_adv = inner_max(per_sample(lambda px, z: negative_cosine(ctx.towers.image(px), z), anchor),
                              batch.pixels, ctx.recipe.eps, ctx.recipe.inner, batch.seeds)
        features = ctx.model(pixels=torch.cat([batch.pixels, x_adv]))[0].float()
        clean, adversarial = features.chunk(2)
        loss = (0.5 * negative_cosine(adversarial, clean.detach()) + 0.5 * negative_cosine(clean, adversarial.detach())).mean()
        return loss, {"loss": loss.item()}


class SimClipReleased:
    needs_original, needs_labels, trains_text = True, False, False

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), ctx.autocast():
            target = ctx.original.image(batch.pixels)
        with ctx.autocast():
            x_adv = inner_max(per_sample(lambda px, t: squared_distance(ctx.towers.image(px), t), target),
                              batch.pixels, ctx.recipe.eps, ctx.recipe.inner, batch.seeds)
        loss = (0.5 * negative_cosine(ctx.model(pixels=x_adv)[0], target)).mean()
        return loss, {"loss": loss.item()}
