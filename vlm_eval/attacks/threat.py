"""The threat model and the small functions that keep a perturbation inside it.

Pixels live in [0, 1] (the pixel contract): the eps-ball is measured there, never on normalised
pixels, and every function here also keeps images inside [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class ThreatModel:
    """Perturbations of at most `eps` in `norm` ("linf" or "l2"); `eps_text` is eps as the user wrote it."""

    norm: str
    eps: float
    eps_text: str

    @classmethod
    def parse(cls, eps: str | float, norm: str = "linf") -> ThreatModel:
        """`ThreatModel.parse("4/255")`, `ThreatModel.parse(0.5, "L2")`; norms in any case (RobustBench's
        and AutoAttack's "Linf", "L2"). An l-inf radius above 1 covers the whole [0, 1] pixel range:
        refused, as it is almost always a radius meant in /255."""
        canonical = norm.strip().lower() if isinstance(norm, str) else norm
        if canonical not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known: Linf, L2 (any case)")
        value = parse_eps(eps)
        if canonical == "linf" and value > 1:
            raise ValueError(f"eps {eps} is above 1, the whole [0, 1] pixel range, in l-inf: did you mean {eps}/255?")
        return cls(canonical, value, str(eps))

    def describe(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "eps_text": self.eps_text}


def parse_eps(eps: str | float) -> float:
    """"4/255" -> 0.01568..., "0.5" -> 0.5; a clear error for anything else or a negative radius."""
    try:
        value = float(Fraction(eps.strip())) if isinstance(eps, str) else float(eps)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"eps {eps!r} is not a number or a fraction such as 4/255") from exc
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample l2 norms, shaped to broadcast over (B, ...)."""
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """The point of the eps-ball around `x` (and of [0, 1]) closest to `x_adv` (l2: scaled back, then clipped)."""
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        delta = delta * (threat.eps / _norms(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent step of unit size in `norm`: sign for linf, the normalised gradient for l2."""
    if norm == "linf":
        return grad.sign()
    return grad / _norms(grad).clamp_min(1e-12)


def starting_point(x: torch.Tensor, threat: ThreatModel, random: bool, seeds: Sequence[int] | None,
                   x_init: torch.Tensor | None) -> torch.Tensor:
    """Where an attack starts: `x_init` (projected into the ball), a random point, or `x` itself."""
    if x_init is not None:
        return project(x_init.detach().to(x.dtype), x, threat)
    return random_start(x, threat, seeds if seeds is not None else range(len(x))) if random else x.clone()


def random_start(x: torch.Tensor, threat: ThreatModel, seeds: Sequence[int]) -> torch.Tensor:
    """A uniform point of the linf ball, or a random direction at a uniform radius of the l2 ball.

    Each sample draws from its own seed, so its start does not depend on the batch it is in.
    """
    rows = []
    for row, seed in zip(x, seeds, strict=True):
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
        if threat.norm == "linf":
            noise = (torch.rand(row.shape, generator=generator, device=x.device) * 2 - 1) * threat.eps
        else:
            direction = torch.randn(row.shape, generator=generator, device=x.device)
            radius = torch.rand((), generator=generator, device=x.device) * threat.eps
            noise = direction / direction.norm().clamp_min(1e-12) * radius
        rows.append(noise.to(x.dtype))
    return project(x + torch.stack(rows), x, threat)
