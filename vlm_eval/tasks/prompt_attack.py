"""MMCoA's text attack on zero-shot classification: each sample's own class prompts lose one word each.

For sample i of class y, every template filled with y's name gets the one substitution that most
raises the sample's cross-entropy when class y's weight is rebuilt from the changed prompts; the
other classes keep theirs. The substitution is HotFlip's (a first-order search over the text tower's
token embeddings, `attacks.text.substitute_one_token`), or, given a masked LM (`--masked-lm`),
BERT-Attack's (one word replaced by one of the masked LM's candidates for its place,
`attacks.text.bert_attack`). The bimodal attack then attacks the image against those prompts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_eval.attacks.text import bert_attack, substitute_one_token
from vlm_eval.errors import VlmEvalError

SPECIAL_IDS = 2  # open_clip's tokenizers (and the mini world's) put the start and end tokens at the two highest ids


def attack_prompts(classifier: object, pixels: torch.Tensor, labels: torch.Tensor,
                   masked_lm: tuple[object, object] | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """(per sample, its class's weight from the attacked prompts (n, D); the attacked prompts themselves).
    `masked_lm`: (model, tokenizer) for BERT-Attack; None: HotFlip."""
    prompts = getattr(classifier, "prompts", None)
    if prompts is None:
        raise VlmEvalError("this classifier keeps no text tower to attack (a defended one does not): "
                           "drop --defense for --attack text or bimodal")
    if masked_lm is not None:
        return bert_prompts(classifier, prompts, pixels, labels, masked_lm)
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


@torch.no_grad()
def bert_prompts(classifier: object, prompts: object, pixels: torch.Tensor, labels: torch.Tensor,
                 masked_lm: tuple[object, object]) -> tuple[torch.Tensor, list[list[str]]]:
    """The BERT-Attack form of `attack_prompts`: candidates scored by the sample's cross-entropy, every
    candidate of a sample against its image's features, computed once."""
    n, per_sample = len(labels), len(prompts.templates)
    texts = prompts.texts(labels.tolist())
    clean = prompts.encode(texts).view(n, per_sample, -1)
    images = F.normalize(classifier.embed(pixels.to(classifier.device)), dim=-1)
    labels = labels.to(images.device)

    def loss_of_texts(candidates: list[str], owners: list[int]) -> torch.Tensor:
        owner = torch.tensor(owners, device=images.device)
        sample, slot = owner // per_sample, owner % per_sample
        sets = clean[sample].clone()
        sets[torch.arange(len(owners)), slot] = prompts.encode(candidates)
        logits = classifier.logits_of_features(images[sample], labels[sample], prompts.class_weights_of(sets.flatten(0, 1)))
        return F.cross_entropy(logits, labels[sample], reduction="none")

    chosen = bert_attack(texts, *masked_lm, loss_of_texts)
    weights = prompts.class_weights_of(prompts.encode(chosen))
    return weights, [chosen[i * per_sample : (i + 1) * per_sample] for i in range(n)]
