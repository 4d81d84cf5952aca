"""Projected gradient descent (Madry et al. 2018): fixed steps along the steepest-ascent direction.

The attack of adversarial fine-tuning (random start, sign steps of eps/4). Optional momentum
accumulates l1-normalised gradients (Dong et al. 2018).
"""

from __future__ import annotations

from typing import Sequence

import torch

from vlm_eval.attacks import threat as tm
from vlm_eval.attacks.base import AttackResult, Best, DoneFn, LossFn, drop_done, evaluate


def pgd(loss_fn: LossFn, x: torch.Tensor, threat: tm.ThreatModel, steps: int, *, step_size: float | None = None,
        maximize: bool = True, momentum: float = 0.0, random_start: bool = False,
        seeds: Sequence[int] | None = None, x_init: torch.Tensor | None = None,
        done: DoneFn | None = None) -> AttackResult:
    """Maximise (or minimise) `loss_fn` per sample in the threat model's ball around `x`.

    `step_size` defaults to 2.5 eps / steps (Madry et al.); `seeds` (one per sample) seed the random start;
    `x_init` starts elsewhere than at `x` (the best point of an earlier attack, say).
    """
    sign = 1.0 if maximize else -1.0
    step_size = 2.5 * threat.eps / max(steps, 1) if step_size is None else step_size
    x = x.detach()
    x_adv = tm.starting_point(x, threat, random_start, seeds, x_init)
    active = torch.arange(len(x), device=x.device)
    objective, grad = evaluate(loss_fn, x_adv, active, sign, 0)
    best = Best(x_adv, objective)
    velocity = torch.zeros_like(x)
    ran = torch.zeros(len(x), dtype=torch.long, device=x.device)
    active, grad = drop_done(done, active, grad, objective, sign)
    for step in range(1, steps + 1):
        if len(active) == 0:
            break
        if momentum:
            l1 = grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
            velocity[active] = momentum * velocity[active] + grad / l1
            grad = velocity[active]
        moved = tm.project(x_adv[active] + step_size * tm.ascent_direction(grad, threat.norm), x[active], threat)
        x_adv[active] = moved
        objective, grad = evaluate(loss_fn, moved, active, sign, step)
        ran[active] += 1
        best.update(active, moved, objective)
        active, grad = drop_done(done, active, grad, objective, sign)
    return AttackResult(best.x, sign * best.objective, ran)
