"""FARE (Schlarmann et al. 2024): keep the adversarial embedding where the original model put the clean one.

x_adv = argmax_{|d|_inf <= eps} |f(x + d) - f0(x)|^2 ;  loss = |f(x_adv) - f0(x)|^2, summed over the
embedding, averaged over the batch. Unsupervised: no labels, no text.
"""

from __future__ import annotations

import torch

from vlm_eval.finetune.step import Context, TrainBatch
from vlm_eval.finetune.towers import inner_max, per_sample


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).pow(2).sum(-1)


class Fare:
    needs_original, needs_labels, trains_text = True, False, False

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad(), ctx.autocast():
            target = ctx.original.image(batch.pixels)
        with ctx.autocast():
            x_adv = inner_max(per_sample(lambda px, t: squared_distance(ctx.towers.image(px), t), target),
                              batch.pixels, ctx.recipe.eps, ctx.recipe.inner, batch.seeds)
        loss = squared_distance(ctx.model(pixels=x_adv)[0], target).mean()
        return loss, {"loss": loss.item()}
