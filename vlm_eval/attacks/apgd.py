"""APGD (Croce & Hein 2020), batched: every sample keeps its own step size, checkpoint state and best point.

Per step: a steepest-ascent step of the sample's size, then momentum 0.75 towards it (none on the
first step). Checkpoints fall after 22 % of the steps, then at intervals shrinking by 3 % of the
steps down to 6 %. At a checkpoint a sample halves its step and restarts from its best point if its
objective rose in at most 75 % of the steps since the last checkpoint, or if it did not halve last
time and its best did not improve since. The schedule depends only on the step number, so a sample
ends where it would alone. AutoAttack starts with a step of 2 eps; RobustVLM's VLM attack with 1 eps.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vlm_eval.attacks import threat as tm
from vlm_eval.attacks.base import AttackResult, Best, DoneFn, LossFn, drop_done, evaluate


def checkpoint_intervals(steps: int) -> tuple[int, int, int]:
    """(first interval, shrink per checkpoint, smallest interval) in steps."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def apgd(loss_fn: LossFn, x: torch.Tensor, threat: tm.ThreatModel, steps: int, *, initial_step: float = 2.0,
         maximize: bool = True, random_start: bool = False, seeds: Sequence[int] | None = None,
         x_init: torch.Tensor | None = None, done: DoneFn | None = None, momentum: float = 0.75,
         rise_share: float = 0.75) -> AttackResult:
    """Maximise (or minimise) `loss_fn` per sample in the threat model's ball around `x`.

    `initial_step` is in units of eps; `x_init` starts elsewhere than at `x` (the best point of an earlier
    attack, say). Returns each sample's best iterate.
    """
    sign = 1.0 if maximize else -1.0
    x = x.detach()
    n = len(x)
    x_adv = tm.starting_point(x, threat, random_start, seeds, x_init)
    active = torch.arange(n, device=x.device)
    objective, grad = evaluate(loss_fn, x_adv, active, sign, 0)
    best, best_grad = Best(x_adv, objective), grad.clone()
    x_prev, last = x_adv.clone(), objective.clone()
    step_size = torch.full((n,), initial_step * threat.eps, device=x.device)
    rises = torch.zeros(n, device=x.device)
    best_at_checkpoint, halved_at_checkpoint = objective.clone(), torch.ones(n, dtype=torch.bool, device=x.device)
    interval, shrink, smallest = checkpoint_intervals(steps)
    since_checkpoint = 0
    ran = torch.zeros(n, dtype=torch.long, device=x.device)
    active, grad = drop_done(done, active, grad, objective, sign)
    for step in range(1, steps + 1):
        if len(active) == 0:
            break
        here, origin = x_adv[active], x[active]
        size = step_size[active].view(-1, *[1] * (x.dim() - 1))
        target = tm.project(here + size * tm.ascent_direction(grad, threat.norm), origin, threat)
        a = 1.0 if step == 1 else momentum
        moved = tm.project(here + a * (target - here) + (1 - a) * (here - x_prev[active]), origin, threat)
        x_prev[active], x_adv[active] = here, moved
        objective, grad = evaluate(loss_fn, moved, active, sign, step)
        ran[active] += 1
        rises[active] += (objective > last[active]).float()
        last[active] = objective
        improved = best.update(active, moved, objective)
        best_grad[active[improved]] = grad[improved]
        since_checkpoint += 1
        if since_checkpoint == interval:
            grad = _checkpoint(active, grad, interval * rise_share, step_size, rises, best, best_grad, x_adv,
                               best_at_checkpoint, halved_at_checkpoint)
            interval, since_checkpoint = max(interval - shrink, smallest), 0
        active, grad = drop_done(done, active, grad, objective, sign)
    return AttackResult(best.x, sign * best.objective, ran)


def _checkpoint(active, grad, min_rises, step_size, rises, best, best_grad, x_adv, best_at_checkpoint,
                halved_at_checkpoint) -> torch.Tensor:
    """Halve the step and restart from the best point where progress stalled; returns the new gradients."""
    best_now = best.objective[active]
    oscillating = rises[active] <= min_rises
    stalled = ~halved_at_checkpoint[active] & (best_at_checkpoint[active] >= best_now)
    halve = oscillating | stalled
    halved_at_checkpoint[active], best_at_checkpoint[active] = halve, best_now
    rows = active[halve]
    step_size[rows] /= 2
    x_adv[rows] = best.x[rows]
    grad = grad.clone()
    grad[halve] = best_grad[rows]
    rises[active] = 0
    return grad
