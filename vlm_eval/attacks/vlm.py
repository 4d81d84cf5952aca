"""An image attack on a VLM: the attack runs on the adapter's loss closure, knowing nothing else of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlm_eval.attacks.base import AttackResult
from vlm_eval.attacks.threat import ThreatModel

# RobustVLM's VLM attack starts APGD with a step of 1 eps (AutoAttack: 2 eps) and no random start.
PROTOCOL_OPTIONS = {"apgd": {"initial_step": 1.0}}


@dataclass(frozen=True)
class AttackSpec:
    """Which attack, in which threat model, for how many steps, with which options."""

    name: str
    threat: ThreatModel
    steps: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, eps: str, norm: str, steps: int) -> AttackSpec:
        from vlm_eval.attacks import ATTACKS

        ATTACKS.get(name)  # an unknown name fails here, listing the known ones
        return cls(name, ThreatModel.parse(eps, norm), steps, dict(PROTOCOL_OPTIONS.get(name, {})))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.threat.describe(), "steps": self.steps, **self.options}


def untargeted(vlm: Any, batch: Any, targets: list[str], spec: AttackSpec) -> AttackResult:
    """Maximise each sample's teacher-forced cross-entropy of its target text (a reference caption or answer)."""
    from vlm_eval.attacks import ATTACKS

    loss_fn = vlm.loss_closure(batch, targets)
    return ATTACKS.get(spec.name)(loss_fn, batch.pixels.to(vlm.device), spec.threat, spec.steps, **spec.options)
