"""APGD (Croce & Hein 2020), batched: every sample keeps its own step size, checkpoint state and best point.

Per step: a steepest-ascent step of the sample's size, then momentum 0.75 towards it (none on the
first step). Checkpoints fall after 22 % of the steps, then at intervals shrinking by 3 % of the
steps down to 6 %. At a checkpoint a sample halves its step and restarts from its best point if its
objective rose in at most 75 % of the steps since the last checkpoint, or if it did not halve last
time and its best did not improve since. A rise is over the previous step's objective; the first step's
is compared with 0, not with the start's, as in the reference (AutoAttack, torchattacks, RobustVLM), whose
loss history starts as zeros: a negative first objective (minus CE, DLR where the model is right) is no
rise. The schedule depends only on the step number, so a sample ends where it would alone.
AutoAttack starts with a step of 2 eps; RobustVLM's VLM attack with 1 eps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vlm_eval.attacks import threat as tm
from vlm_eval.attacks.base import AttackResult, Best, drop_done, evaluate
from vlm_eval.contracts import DoneFn, LossFn
from vlm_eval.attacks.state import AttackHook, from_tensors, to_tensors


def checkpoint_intervals(steps: int) -> tuple[int, int, int]:
    """(first interval, shrink per checkpoint, smallest interval) in steps."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


@dataclass
class ApgdState:
    """Everything the loop carries from one step to the next (all per sample, but `grad`: per running sample)."""

    x_adv: torch.Tensor
    x_prev: torch.Tensor
    last: torch.Tensor  # the objective at the last step (0 before the first, as in the reference)
    best: Best
    best_grad: torch.Tensor
    grad: torch.Tensor
    active: torch.Tensor  # the rows still running
    step_size: torch.Tensor
    rises: torch.Tensor  # steps since the last checkpoint where the objective rose
    best_at_checkpoint: torch.Tensor
    halved_at_checkpoint: torch.Tensor
    ran: torch.Tensor
    step: int  # the last step taken
    interval: int  # steps between the last checkpoint and the next
    since_checkpoint: int


def apgd(loss_fn: LossFn, x: torch.Tensor, threat: tm.ThreatModel, steps: int, *, initial_step: float = 2.0,
         maximize: bool = True, random_start: bool = False, seeds: Sequence[int] | None = None,
         x_init: torch.Tensor | None = None, done: DoneFn | None = None, hook: AttackHook | None = None,
         momentum: float = 0.75, rise_share: float = 0.75) -> AttackResult:
    """Maximise (or minimise) `loss_fn` per sample in the threat model's ball around `x`.

    `initial_step` is in units of eps; `x_init` starts elsewhere than at `x` (the best point of an earlier
    attack, say); `hook` sees every step and may resume a saved state. Returns each sample's best iterate.
    """
    sign = 1.0 if maximize else -1.0
    x = x.detach()
    saved = hook.resume() if hook else None
    if saved is not None:
        s = from_tensors(ApgdState, saved, x.device)
    else:
        s = _start(loss_fn, tm.starting_point(x, threat, random_start, seeds, x_init), sign, initial_step * threat.eps,
                   checkpoint_intervals(steps)[0])
        s.active, s.grad = drop_done(done, 0, s.active, s.grad, s.best, sign)
    _, shrink, smallest = checkpoint_intervals(steps)
    for step in range(s.step + 1, steps + 1):
        if len(s.active) == 0:
            break
        active, here, origin = s.active, s.x_adv[s.active], x[s.active]
        size = s.step_size[active].view(-1, *[1] * (x.dim() - 1))
        target = tm.project(here + size * tm.ascent_direction(s.grad, threat.norm), origin, threat)
        a = 1.0 if step == 1 else momentum
        moved = tm.project(here + a * (target - here) + (1 - a) * (here - s.x_prev[active]), origin, threat)
        s.x_prev[active], s.x_adv[active] = here, moved
        objective, s.grad = evaluate(loss_fn, moved, active, sign, step)
        s.ran[active] += 1
        s.rises[active] += (objective > s.last[active]).float()
        s.last[active] = objective
        improved = s.best.update(active, moved, objective)
        s.best_grad[active[improved]] = s.grad[improved]
        s.since_checkpoint += 1
        if s.since_checkpoint == s.interval:
            _checkpoint(s, s.interval * rise_share)
            s.interval, s.since_checkpoint = max(s.interval - shrink, smallest), 0
        s.active, s.grad = drop_done(done, step, s.active, s.grad, s.best, sign)
        s.step = step
        if hook:
            hook.after_step(step, len(s.active), lambda: to_tensors(s))
    return AttackResult(s.best.x, sign * s.best.objective, s.ran)


def _start(loss_fn: LossFn, x_adv: torch.Tensor, sign: float, step_size: float, interval: int) -> ApgdState:
    n, device = len(x_adv), x_adv.device
    active = torch.arange(n, device=device)
    objective, grad = evaluate(loss_fn, x_adv, active, sign, 0)
    return ApgdState(
        x_adv=x_adv, x_prev=x_adv.clone(), last=torch.zeros_like(objective), best=Best.start(x_adv, objective),
        best_grad=grad.clone(), grad=grad, active=active, step_size=torch.full((n,), step_size, device=device),
        rises=torch.zeros(n, device=device), best_at_checkpoint=objective.clone(),
        halved_at_checkpoint=torch.ones(n, dtype=torch.bool, device=device),
        ran=torch.zeros(n, dtype=torch.long, device=device), step=0, interval=interval, since_checkpoint=0)


def _checkpoint(s: ApgdState, min_rises: float) -> None:
    """Halve the step and restart from the best point where progress stalled (the gradient too)."""
    active = s.active
    best_now = s.best.objective[active]
    oscillating = s.rises[active] <= min_rises
    stalled = ~s.halved_at_checkpoint[active] & (s.best_at_checkpoint[active] >= best_now)
    halve = oscillating | stalled
    s.halved_at_checkpoint[active], s.best_at_checkpoint[active] = halve, best_now
    rows = active[halve]
    s.step_size[rows] /= 2
    s.x_adv[rows] = s.best.x[rows]
    s.grad = s.grad.clone()
    s.grad[halve] = s.best_grad[rows]
    s.rises[active] = 0
