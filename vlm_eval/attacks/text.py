"""Word-substitution attacks on text, over a text encoder's token embeddings.

`substitute_one_token` is HotFlip's first-order search (Ebrahimi et al. 2018): the gradient of a
per-sample loss with respect to the token embeddings scores every (position, token) substitution
by its linear gain, and each sample takes its best one. One word changes (word-level tokenizers such
as the mini world's; a BPE piece with CLIP's). It needs no masked language model, and knows nothing
of the encoder: the caller gives the loss as a function of the embeddings.
"""

from __future__ import annotations

from typing import Callable

import torch

from vlm_eval.errors import MissingResourceError


def substitute_one_token(tokens: torch.Tensor, loss_of_embeddings: Callable[[torch.Tensor], torch.Tensor],
                         embedding: torch.Tensor, editable: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per sample, the tokens with one substitution: the one whose first-order gain in the loss is largest.

    Args:
        tokens: (B, L) token ids.
        loss_of_embeddings: (B, L, D) token embeddings -> (B,) loss to increase.
        embedding: (V, D) the embedding matrix.
        editable: (B, L) positions that may change (words; not start, end or padding).
        allowed: (V,) tokens that may be put in.
    Returns:
        (B, L) ids; a sample with no editable position is returned unchanged.
    """
    embedded = embedding[tokens].detach().float().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_of_embeddings(embedded).sum(), embedded)
    gain = grad @ embedding.detach().float().T - (grad * embedded.detach()).sum(-1, keepdim=True)  # (B, L, V)
    gain = gain.masked_fill(~editable.unsqueeze(-1), -torch.inf).masked_fill(~allowed.view(1, 1, -1), -torch.inf)
    gain.scatter_(-1, tokens.unsqueeze(-1), -torch.inf)  # a substitution changes the token
    best = gain.flatten(1).argmax(-1)
    changed = tokens.clone()
    vocab = embedding.shape[0]
    for row, flat in enumerate(best.tolist()):
        position, token = divmod(flat, vocab)
        if torch.isfinite(gain[row, position, token]):
            changed[row, position] = token
    return changed


# Function words BERT-Attack leaves alone (its filter list, abridged to the words captions use); compared
# case-insensitively.
STOP_WORDS = frozenset("""a an the and or but if of at by for with about against between into through during before
after above below to from up down in out on off over under again further then once here there when where why how
all any both each few more most other some such no nor not only own same so than too very is are was were be been
being have has had having do does did doing it its itself this that these those i me my we our you your he him his
she her they them their what which who whom as until while can will just should now""".split())


def load_masked_lm(name: str) -> tuple[object, object]:
    """A transformers masked LM and its tokenizer from a folder or the local HF cache (never downloaded here)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForMaskedLM.from_pretrained(name, local_files_only=True)
    except OSError as exc:
        raise MissingResourceError(f"masked LM {name!r} of BERT-Attack: not a masked LM folder nor in the HF cache "
                                   f"({exc.__class__.__name__}); get it with `hf download {name}`") from exc
    return model.eval().requires_grad_(False), tokenizer


def bert_attack(texts: list[str], masked_lm: object, tokenizer: object,
                loss_of_texts: Callable[[list[str], list[int]], torch.Tensor], k: int = 8) -> list[str]:
    """BERT-Attack (Li et al. 2020), one word per text: every word but the stop words is masked in turn, the
    masked language model's `k` most likely single-token substitutes are the candidates, and the candidate
    text with the highest loss replaces the text (the text itself when nothing beats it).

    Args:
        texts: the texts to attack.
        masked_lm, tokenizer: a transformers masked LM (`AutoModelForMaskedLM`) and its tokenizer.
        loss_of_texts: (candidate texts, the index of the text each comes from) -> (n,) losses to raise;
            called once with the texts themselves first, then with every candidate.
        k: substitutes per masked word.
    """
    candidates, owners = [], []
    for owner, text in enumerate(texts):
        for candidate in _substitutes(text, masked_lm, tokenizer, k):
            candidates.append(candidate)
            owners.append(owner)
    best = loss_of_texts(list(texts), list(range(len(texts)))).tolist()
    chosen = list(texts)
    if candidates:
        for candidate, owner, loss in zip(candidates, owners, loss_of_texts(candidates, owners).tolist()):
            if loss > best[owner]:
                best[owner], chosen[owner] = loss, candidate
    return chosen


@torch.no_grad()
def _substitutes(text: str, masked_lm: object, tokenizer: object, k: int) -> list[str]:
    """The texts with one word replaced by one of the masked LM's top-k words for its place."""
    words = text.split()
    positions = [i for i, w in enumerate(words) if w.lower().strip(".,;:!?") not in STOP_WORDS and w.isalpha()]
    if not positions:
        return []
    masked = [" ".join(words[:i] + [tokenizer.mask_token] + words[i + 1 :]) for i in positions]
    batch = tokenizer(masked, return_tensors="pt", padding=True)
    logits = masked_lm(**batch).logits
    out = []
    for row, position in enumerate(positions):
        at = (batch["input_ids"][row] == tokenizer.mask_token_id).nonzero()[0, 0]
        for token in logits[row, at].topk(k + 1).indices.tolist():
            word = tokenizer.convert_ids_to_tokens(token)
            if word.isalpha() and word.lower() != words[position].lower() and word not in tokenizer.all_special_tokens:
                out.append(" ".join(words[:position] + [word] + words[position + 1 :]))
    return out
