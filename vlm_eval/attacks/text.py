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
