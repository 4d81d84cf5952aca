"""Semantic-preservation checks of a run: what each attack did to its image, per sample and in summary.

Each attacked record gains `adversarial.perturbation` (the l-inf and l2 size of the change, in [0, 1]
pixels); `summary.json` gains a `semantic` block with their mean and median.
"""

from __future__ import annotations

from typing import Any

import torch

from vlm_eval.metrics.similarity import perturbation_norms, summarize

NORMS = ("linf", "l2")


def perturbations(clean: torch.Tensor, adversarial: torch.Tensor) -> list[dict[str, float]]:
    """Per sample {"linf": ..., "l2": ...} of `adversarial - clean`."""
    norms = perturbation_norms(clean.detach().cpu(), adversarial.detach().cpu())
    return [dict(zip(NORMS, values)) for values in zip(*(norms[n] for n in NORMS))]


def semantic_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and median of each per-sample check over the attacked records ({} for a clean run)."""
    sizes = [r["adversarial"]["perturbation"] for r in records if "perturbation" in r.get("adversarial", {})]
    return {f"perturbation_{n}": summarize([s[n] for s in sizes]) for n in NORMS} if sizes else {}
