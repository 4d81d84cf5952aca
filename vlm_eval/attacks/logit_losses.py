"""Losses on class logits for attacks on classifiers: pure per-sample functions, larger is worse for the model.

Each takes logits (n, C), the true labels (n,) and target labels (n,; used by the targeted loss only)
and returns (n,). DLR and its targeted form are AutoAttack's (Croce & Hein 2020): margins divided by
the spread of the top logits, so they do not depend on the logits' scale.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
TINY = 1e-12


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="none")


def _true_logit(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return z.gather(1, labels[:, None])[:, 0]


def _best_other(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return z.masked_fill(F.one_hot(labels, z.shape[1]).bool(), -torch.inf).amax(1)


def dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """-(z_y - max_{i != y} z_i) / (z_(1) - z_(3)), z_(k) the k-th largest logit."""
    z = logits.float()
    top = z.sort(dim=1, descending=True).values
    return -(_true_logit(z, labels) - _best_other(z, labels)) / (top[:, 0] - top[:, 2] + TINY)


def dlr_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2): maximised, it lifts the target class t over y."""
    if targets is None:
        raise ValueError("the targeted DLR loss needs target classes")
    z = logits.float()
    top = z.sort(dim=1, descending=True).values
    return -(_true_logit(z, labels) - _true_logit(z, targets)) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + TINY)


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Carlini-Wagner's margin max_{i != y} z_i - z_y (no confidence cap): positive once the sample is wrong."""
    z = logits.float()
    return _best_other(z, labels) - _true_logit(z, labels)


LOGIT_LOSSES: dict[str, LogitLoss] = {"ce": cross_entropy, "dlr": dlr, "dlr-targeted": dlr_targeted, "cw": cw_margin}
MIN_CLASSES = {"ce": 2, "cw": 2, "dlr": 3, "dlr-targeted": 4}  # the top logits DLR divides by
