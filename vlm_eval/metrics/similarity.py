"""Semantic-preservation measures: how far an attack moved an image, and how alike two embeddings are.

Pure functions on tensors; the runner applies them to each attacked sample and aggregates them.
"""

from __future__ import annotations

import statistics

import torch


def perturbation_norms(clean: torch.Tensor, adversarial: torch.Tensor) -> list[dict[str, float]]:
    """Per sample {"linf": ..., "l2": ...}: the size of `adversarial - clean`, both (B, ...) in [0, 1] pixels."""
    if clean.shape != adversarial.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and adversarial {tuple(adversarial.shape)} images differ in shape")
    delta = (adversarial.detach().cpu().double() - clean.detach().cpu().double()).flatten(1)
    return [{"linf": linf, "l2": l2} for linf, l2 in zip(delta.abs().amax(1).tolist(), delta.norm(dim=1).tolist())]


def cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per row, the cosine similarity of two (B, D) embeddings (0 where either is zero)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms.clamp_min(1e-300), torch.zeros_like(norms)).tolist()


def summarize(values: list[float], threshold: float | None = None) -> dict[str, float]:
    """Mean and median of per-sample values, and with a threshold the share (x100) of samples under it."""
    if not values:
        return {"mean": float("nan"), "median": float("nan")}
    summary = {"mean": statistics.fmean(values), "median": float(statistics.median(values))}
    if threshold is not None:
        summary["share_below"] = 100.0 * sum(v < threshold for v in values) / len(values)
    return summary
