"""Semantic-preservation checks of a run, in summary.

Each attacked record carries `adversarial.perturbation` (the l-inf and l2 size of the change, in
[0, 1] pixels, from `metrics.similarity.perturbation_norms`); `summary.json` gains a `semantic`
block with their mean and median.
"""

from __future__ import annotations

from typing import Any

from vlm_eval.metrics.similarity import summarize


def semantic_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and median of each per-sample check over the attacked records ({} for a clean run)."""
    sizes = [r["adversarial"]["perturbation"] for r in records if "perturbation" in r.get("adversarial", {})]
    return {f"perturbation_{norm}": summarize([s[norm] for s in sizes]) for norm in ("linf", "l2")} if sizes else {}
