"""Projected gradient descent (Madry et al. 2018): fixed steps along the steepest-ascent direction.

The attack of adversarial fine-tuning (random start, sign steps of eps/4). Optional momentum
accumulates l1-normalised gradients (Dong et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vlm_eval.attacks import threat as tm
from vlm_eval.attacks.base import AttackResult, Best, drop_done, evaluate
from vlm_eval.contracts import DoneFn, LossFn
from vlm_eval.attacks.state import AttackHook, from_tensors, to_tensors


@dataclass
class PgdState:
    """Everything the loop carries from one step to the next."""

    x_adv: torch.Tensor
    best: Best
    velocity: torch.Tensor
    grad: torch.Tensor  # of the running samples
    active: torch.Tensor
    ran: torch.Tensor
    step: int


def pgd(loss_fn: LossFn, x: torch.Tensor, threat: tm.ThreatModel, steps: int, *, step_size: float | None = None,
        maximize: bool = True, momentum: float = 0.0, random_start: bool = False,
        seeds: Sequence[int] | None = None, x_init: torch.Tensor | None = None,
        done: DoneFn | None = None, hook: AttackHook | None = None) -> AttackResult:
    """Maximise (or minimise) `loss_fn` per sample in the threat model's ball around `x`.

    `step_size` defaults to 2.5 eps / steps (Madry et al.); `seeds` (one per sample) seed the random start;
    `x_init` starts elsewhere than at `x` (the best point of an earlier attack, say); `hook` sees every
    step and may resume a saved state.
    """
    sign = 1.0 if maximize else -1.0
    step_size = 2.5 * threat.eps / max(steps, 1) if step_size is None else step_size
    x = x.detach()
    saved = hook.resume() if hook else None
    if saved is not None:
        s = from_tensors(PgdState, saved, x.device)
    else:
        x_adv = tm.starting_point(x, threat, random_start, seeds, x_init)
        active = torch.arange(len(x), device=x.device)
        objective, grad = evaluate(loss_fn, x_adv, active, sign, 0)
        s = PgdState(x_adv, Best.start(x_adv, objective), torch.zeros_like(x), grad, active,
                     torch.zeros(len(x), dtype=torch.long, device=x.device), 0)
        s.active, s.grad = drop_done(done, 0, s.active, s.grad, s.best, sign)
    for step in range(s.step + 1, steps + 1):
        if len(s.active) == 0:
            break
        active, grad = s.active, s.grad
        if momentum:
            l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
            s.velocity[active] = momentum * s.velocity[active] + grad / l1
            grad = s.velocity[active]
        moved = tm.project(s.x_adv[active] + step_size * tm.ascent_direction(grad, threat.norm), x[active], threat)
        s.x_adv[active] = moved
        objective, s.grad = evaluate(loss_fn, moved, active, sign, step)
        s.ran[active] += 1
        s.best.update(active, moved, objective)
        s.active, s.grad = drop_done(done, step, active, s.grad, s.best, sign)
        s.step = step
        if hook:
            hook.after_step(step, len(s.active), lambda: to_tensors(s))
    return AttackResult(s.best.x, sign * s.best.objective, s.ran)
