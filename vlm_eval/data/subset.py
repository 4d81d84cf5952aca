"""Seeded evaluation subsets that pick the same items as RobustVLM.

RobustVLM (chs20/RobustVLM, `vlm_eval/run_evaluation.py`, `prepare_eval_samples`) evaluates
`--num_samples` items (500 in its scripts) with seed 42 (`--trial_seeds` default; targeted attacks
use a per-target seed from `TARGET_TO_SEED`) like this::

    np.random.seed(seed)
    indices = np.random.choice(len(test_dataset), num_samples, replace=False)
    Subset(test_dataset, indices)  # iterated with a SequentialSampler

No query/demonstration set is drawn from the test set (that comes from the train split), and the
indices are not sorted: items are evaluated in the order `choice` returns them. `test_dataset` is
the Karpathy test split in file order (captioning) or the questions file in order (VQA), which is
the order the readers of this package keep. `np.random.RandomState(seed)` is the generator that
`np.random.seed` re-seeds, so using it here gives the same indices without touching numpy's
global state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from vlm_eval.data.samples import Sample

logger = logging.getLogger(__name__)


def subset_indices(population: int, n: int, seed: int) -> list[int]:
    """The indices RobustVLM evaluates: `np.random.seed(seed); np.random.choice(population, n, replace=False)`.

    Args:
        population: Number of items to choose from.
        n: Number of items to choose, 0 <= n <= population.
        seed: The seed (RobustVLM: 42).

    Returns:
        `n` distinct indices in the order RobustVLM visits them (not sorted).
    """
    if not 0 <= n <= population:
        raise ValueError(f"subset size must be between 0 and {population}, got {n}")
    return [int(i) for i in np.random.RandomState(seed).choice(population, n, replace=False)]


def select_subset(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """A deterministic seeded subset of `samples`, chosen as RobustVLM chooses its eval subset.

    Args:
        samples: All samples, in reader order.
        n: Subset size; None, or n >= len(samples), keeps all samples in their original order
            (RobustVLM would permute them or fail; the set of items is the same).
        seed: Seed of the choice; the same seed and input always give the same subset.

    Returns:
        The chosen samples in RobustVLM's visiting order (see `subset_indices`).

    Raises:
        ValueError: `n` is negative.
    """
    if n is not None and n < 0:
        raise ValueError(f"subset size must be >= 0 or None, got {n}")
    if n is None or n >= len(samples):
        return list(samples)
    chosen = [samples[i] for i in subset_indices(len(samples), n, seed)]
    logger.info("selected %d of %d samples with seed %d", n, len(samples), seed)
    return chosen


def save_subset_ids(path: Path, samples: Sequence[Sample]) -> None:
    """Write the sample ids, one per line, so a run records exactly which items it used."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{sample.id}\n" for sample in samples), encoding="utf-8")
