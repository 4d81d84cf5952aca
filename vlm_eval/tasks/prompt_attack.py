"""MMCoA's text attack on zero-shot classification: each sample's own class prompts lose one word each.

For sample i of class y, every template filled with y's name gets the one-token substitution (HotFlip's
first-order search over the text tower's token embeddings, `attacks.text.substitute_one_token`) that
most raises the sample's cross-entropy when class y's weight is rebuilt from the changed prompts; the
other classes keep theirs. The bimodal attack then attacks the image against those prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.attacks.text import substitute_one_token
from vlm_eval.errors import VlmEvalError

SPECIAL_IDS = 2  # open_clip's tokenizers (and the mini world's) put the start and end tokens at the two highest ids


def attack_prompts(classifier: object, pixels: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, list[list[str]]]:
    """(per sample, its class's weight from the attacked prompts (n, D); the attacked prompts themselves)."""
    prompts = getattr(classifier, "prompts", None)
    if prompts is None:
        raise VlmEvalError("this classifier keeps no text tower to attack (a defended one does not): "
                           "drop --defense for --attack text or bimodal")
    tokens = prompts.tokens(labels.tolist())
    embedding = prompts.token_embedding
    vocab, per_sample = embedding.shape[0], len(prompts.templates)
    editable = (tokens > 0) & (tokens < vocab - SPECIAL_IDS)
    allowed = torch.ones(vocab, dtype=torch.bool, device=tokens.device)
    allowed[0], allowed[vocab - SPECIAL_IDS :] = False, False
    labels, images = labels.to(tokens.device), pixels.to(classifier.device)

    def loss(embedded: torch.Tensor) -> torch.Tensor:
        logits = classifier.logits_with(images, labels, prompts.weights(tokens, embedded))
        return F.cross_entropy(logits, labels, reduction="none").repeat_interleave(per_sample)

    attacked = substitute_one_token(tokens, loss, embedding, editable, allowed)
    with torch.no_grad():
        weights = prompts.weights(attacked)
    texts = prompts.decode(attacked)
    return weights, [texts[i * per_sample : (i + 1) * per_sample] for i in range(len(labels))]
