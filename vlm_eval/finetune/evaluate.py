"""Evaluation during fine-tuning, on a held-out batch: clean and robust zero-shot accuracy, and how far
the adversarial embedding moves from the clean one.

With class-folder data the logits are over the class prompts; with captions, over the batch's own
captions (image-to-caption retrieval, each image's own caption is its label).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.finetune.data import TrainData
from vlm_eval.finetune.step import Context
from vlm_eval.finetune.towers import cosine_logits, inner_max, per_sample

EVAL_SEED = 987_654_321  # the held-out batch's inner attack: the same start at every evaluation


@torch.no_grad()
def text_targets(ctx: Context, data: TrainData, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(unit text features the images are classified among, the labels' offset: None for class prompts)."""
    if data.class_names:
        prompts = [ctx.recipe.templates[0].format(name) for name in data.class_names]
        return F.normalize(ctx.towers.text(ctx.tokens(prompts)), dim=-1), None
    return F.normalize(ctx.towers.text(ctx.tokens(captions)), dim=-1), torch.arange(len(captions))


def evaluate_held_out(ctx: Context, data: TrainData, held_out: list[int], size: int) -> dict[str, float]:
    """clean_accuracy, robust_accuracy (x100, under the inner attack at the recipe's eps on the CE of these
    logits) and adversarial_cosine (mean cosine of the clean and adversarial image embeddings)."""
    device = ctx.device
    pixels, captions, labels = data.load(held_out, size)
    pixels = pixels.to(device)
    was_training = ctx.towers.training
    ctx.towers.eval()
    try:
        with ctx.autocast():
            text, retrieval = text_targets(ctx, data, captions)
            labels = (retrieval if retrieval is not None else labels).to(device)
            scale = ctx.towers.logit_scale

            def ce(px: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(cosine_logits(ctx.towers.image(px), text, scale), y, reduction="none")

            x_adv = inner_max(per_sample(ce, labels), pixels, ctx.recipe.eps, ctx.recipe.inner,
                              [EVAL_SEED + i for i in range(len(held_out))])
            with torch.no_grad():
                clean, adversarial = ctx.towers.image(pixels), ctx.towers.image(x_adv)
    finally:
        ctx.towers.train(was_training)

    def accuracy(features: torch.Tensor) -> float:
        return 100.0 * (cosine_logits(features, text, 1.0).argmax(-1) == labels).float().mean().item()

    return {"clean_accuracy": accuracy(clean), "robust_accuracy": accuracy(adversarial),
            "adversarial_cosine": F.cosine_similarity(clean, adversarial, dim=-1).mean().item()}
