"""MMCoA (Zhou et al. 2024): both towers trained against an image adversary and a text adversary.

S(a, b) = exp(logit_scale) cos(a, b) over the batch, targets I = arange(B);
loss = l_t [CE(S(f(x), g(t~)), I) + CE(S(g(t~), f(x)), I)] + l_v [CE(S(f(x~), g(t)), I) + CE(S(g(t), f(x~)), I)],
l_t = l_v = 0.5. x~: PGD on CE(S(f(x~), g(t)), I) (the recipe's inner attack; MMCoA: eps = step = 1/255,
10 steps). t~: one word per caption substituted, by the recipe's `text_attack`: HotFlip's gradient
search over the text tower's token embeddings, raising CE(S(g(t~), f(x)), I) (`hotflip`, no extra
model), or BERT-Attack with a masked language model, raising the KL divergence between the clean and
the perturbed text embeddings (`bert`, as the paper). Both live in vlm_eval.attacks.text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.attacks.text import bert_attack, load_masked_lm, substitute_one_token
from vlm_eval.finetune.step import Context, TrainBatch
from vlm_eval.finetune.towers import Towers, cosine_logits, inner_max, per_sample

WEIGHT_TEXT = WEIGHT_IMAGE = 0.5
SPECIAL_IDS = 2  # open_clip's tokenizers (and the mini world's) put the start and end tokens at the two highest ids


def symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    """CE(S(a, b), I) + CE(S(b, a), I) for logits S(a, b) of a square batch."""
    targets = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


def text_features_from(towers: Towers, tokens: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
    """The text tower's features with its token embeddings replaced by `embedded` (B, L, D)."""
    hook = towers.clip.token_embedding.register_forward_hook(lambda module, args, out: embedded.to(out.dtype))
    try:
        return towers.text(tokens)
    finally:
        hook.remove()


def hotflip_adversary(ctx: Context, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Each caption with the one word whose substitution most raises its text-to-image CE."""
    embedding = ctx.towers.clip.token_embedding.weight
    vocab = embedding.shape[0]
    editable = (tokens > 0) & (tokens < vocab - SPECIAL_IDS)
    allowed = torch.ones(vocab, dtype=torch.bool, device=tokens.device)
    allowed[0], allowed[vocab - SPECIAL_IDS :] = False, False
    scale, targets = ctx.towers.logit_scale.detach(), torch.arange(len(tokens), device=tokens.device)

    def loss(embedded: torch.Tensor) -> torch.Tensor:
        logits = cosine_logits(text_features_from(ctx.towers, tokens, embedded), image, scale)
        return F.cross_entropy(logits, targets, reduction="none")

    return substitute_one_token(tokens, loss, embedding, editable, allowed)


def bert_adversary(ctx: Context, captions: list[str], clean_text: torch.Tensor, masked_lm: tuple[object, object]
                   ) -> torch.Tensor:
    """Each caption with the one word whose masked-LM substitute most moves its text embedding (KL)."""
    reference = F.normalize(clean_text.float(), dim=-1).softmax(-1)

    @torch.no_grad()
    def divergence(texts: list[str], owners: list[int]) -> torch.Tensor:
        embedded = F.normalize(ctx.towers.text(ctx.tokens(texts)), dim=-1)
        return F.kl_div(embedded.log_softmax(-1), reference[owners], reduction="none").sum(-1)

    model, tokenizer = masked_lm
    return ctx.tokens(bert_attack(captions, model, tokenizer, divergence, int(ctx.recipe.text_attack.get("k", 8))))


class MMCoA:
    needs_original, needs_labels, trains_text = False, False, True

    def __init__(self) -> None:
        self.masked_lm: tuple[object, object] | None = None

    def text_adversary(self, ctx: Context, captions: list[str], tokens: torch.Tensor, clean_image: torch.Tensor,
                       clean_text: torch.Tensor) -> torch.Tensor:
        if ctx.recipe.text_attack["kind"] == "bert":
            self.masked_lm = self.masked_lm or load_masked_lm(str(ctx.recipe.text_attack["model"]))
            return bert_adversary(ctx, captions, clean_text, self.masked_lm)
        return hotflip_adversary(ctx, tokens, clean_image)

    def loss(self, ctx: Context, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = ctx.tokens(batch.captions)
        with torch.no_grad(), ctx.autocast():
            clean_text, clean_image = ctx.towers.text(tokens), ctx.towers.image(batch.pixels)
        scale = ctx.towers.logit_scale.detach()
        rows = torch.arange(len(tokens), device=tokens.device)

        def image_ce(px: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(cosine_logits(ctx.towers.image(px), clean_text, scale), r, reduction="none")

        with ctx.autocast():
            x_adv = inner_max(per_sample(image_ce, rows), batch.pixels, ctx.recipe.eps, ctx.recipe.inner, batch.seeds)
            adv_tokens = self.text_adversary(ctx, batch.captions, tokens, clean_image, clean_text)
        image, text = ctx.model(pixels=torch.cat([batch.pixels, x_adv]), tokens=torch.cat([tokens, adv_tokens]))
        (image, image_adv), (text, text_adv) = image.float().chunk(2), text.float().chunk(2)
        scale = ctx.towers.logit_scale
        loss = (WEIGHT_TEXT * symmetric_ce(cosine_logits(image, text_adv, scale))
                + WEIGHT_IMAGE * symmetric_ce(cosine_logits(image_adv, text, scale)))
        changed = (adv_tokens != tokens).any(-1).float().mean().item() * 100
        return loss, {"loss": loss.item(), "captions_changed": changed}
