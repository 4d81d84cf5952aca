"""What every attack shares: the loss-closure contract, the per-sample best iterate, samples leaving.

Attacks know nothing about models. They call `loss_fn(pixels, rows)`, where `rows` are the batch
positions of the samples still running, and each sample keeps its own state, so a sample's result
does not depend on the batch it is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm_eval.contracts import DoneFn, LossFn
from vlm_eval.errors import NonFiniteLossError


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # (B, ...) each sample's best iterate (the start if nothing beat it)
    loss: torch.Tensor  # (B,) the loss there
    steps: torch.Tensor  # (B,) steps each sample ran (fewer where it left early)


def evaluate(loss_fn: LossFn, x: torch.Tensor, rows: torch.Tensor, sign: float,
             step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, its gradient) at `x`; the objective is the loss, negated when the attack minimises."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x, rows).float()
        (grad,) = torch.autograd.grad(loss.sum(), x)
    bad = ~torch.isfinite(loss)
    if bad.any():
        raise NonFiniteLossError(
            f"the attack loss is {loss[bad][0].item()} for batch rows {rows[bad].tolist()} at step {step}; "
            "in fp16 try --precision bf16 or fp32")
    return sign * loss.detach(), sign * grad.detach()


@dataclass
class Best:
    """Each sample's best iterate so far and its objective."""

    x: torch.Tensor
    objective: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, objective: torch.Tensor) -> Best:
        return cls(x.clone(), objective.clone())

    def update(self, rows: torch.Tensor, x: torch.Tensor, objective: torch.Tensor) -> torch.Tensor:
        """Keep the iterates that beat their sample's best; returns which did."""
        better = objective > self.objective[rows]
        self.x[rows[better]] = x[better]
        self.objective[rows[better]] = objective[better]
        return better


def drop_done(done: DoneFn | None, step: int, rows: torch.Tensor, grad: torch.Tensor, best: Best,
              sign: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, gradients) of the samples that go on: those `done` does not mark, judged at their best iterate."""
    if done is None:
        return rows, grad
    keep = ~done(step, rows, best.x[rows], sign * best.objective[rows]).to(device=rows.device, dtype=torch.bool)
    return rows[keep], grad[keep]
