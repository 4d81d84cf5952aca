"""TeCoA (Mao et al. 2023): adversarial training of the image tower on zero-shot classification.

Logits s * cos(f(x), g(t_j)) over the class prompts t_j ("This is a photo of a {class}"; s is the
encoder's own learned logit scale, 100 for OpenAI CLIP, unless the recipe sets one; the text tower
frozen); x_adv = argmax CE(logits(x + d), y); loss = CE(logits(x_adv), y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.errors import CardError
from vlm_eval.finetune.step import Context, TrainBatch
from vlm_eval.finetune.towers import cosine_logits, inner_max, per_sample


class TeCoA:
    needs_original, needs_labels, trains_text = False, True, False

    def __init__(self) -> None:
        self.class_text: torch.Tensor | None = None

    def class_features(self, ctx: Context) -> torch.Tensor:
        """The class prompts' text features, once (the text tower is frozen)."""
        if self.class_text is None:
            if not ctx.class_names:
                raise CardError("tecoa trains on classes: give class-folder data (data: {kind: imagefolder, ...})")
            prompts = [t.format(name) for name in ctx.class_names for t in ctx.recipe.templates]
            with torch.no_grad(), ctx.autocast():
                text = ctx.towers.text(ctx.tokens(prompts))
            per_class = F.normalize(text, dim=-1).view(len(ctx.class_names), len(ctx.recipe.templates), -1).mean(1)
            self.class_text = F.normalize(per_class, dim=-1)
        return self.class_text

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        text, scale = self.class_features(ctx), ctx.recipe.logit_scale or ctx.towers.logit_scale.detach()

        def ce(pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(cosine_logits(ctx.towers.image(pixels), text, scale), labels, reduction="none")

        with ctx.autocast():
            x_adv = inner_max(per_sample(ce, batch.labels), batch.pixels, ctx.recipe.eps, ctx.recipe.inner, batch.seeds)
        logits = cosine_logits(ctx.model(pixels=x_adv)[0].float(), text, scale)
        loss = F.cross_entropy(logits, batch.labels)
        accuracy = (logits.argmax(-1) == batch.labels).float().mean().item() * 100
        return loss, {"loss": loss.item(), "train_robust_accuracy": accuracy}
