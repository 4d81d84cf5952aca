"""Bootstrap confidence intervals over the evaluated samples, and the paired bootstrap of two runs.

A resample draws N of the N samples with replacement; it is given as draws (r, N), how often each sample
was drawn. A task turns draws into its metrics under each resample (`TaskType.resampled`): a mean of
per-sample scores for VQA and accuracy, CIDEr recomputed with the resample's own idf for captions. The
interval is the percentile interval of those values. Seeded: the same run gives the same interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

# draws (r, N) -> per metric, its value under each of the r resamples
Resampled = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    chunk: int = 100  # resamples scored at once (memory: chunk x the n-gram vocabulary for CIDEr)

    def draws(self, n: int) -> Iterator[np.ndarray]:
        """The resamples of n samples, `chunk` at a time, as counts (r, n)."""
        rng = np.random.default_rng(self.seed)
        for start in range(0, self.resamples, self.chunk):
            r = min(self.chunk, self.resamples - start)
            picks = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
            yield np.bincount(picks.ravel(), minlength=r * n).reshape(r, n)

    def values(self, resampled: Resampled, n: int) -> dict[str, np.ndarray]:
        """Per metric, its value under every resample."""
        chunks: dict[str, list[np.ndarray]] = {}
        for draws in self.draws(n):
            for name, values in resampled(draws).items():
                chunks.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
        return {name: np.concatenate(parts) for name, parts in chunks.items()}

    def interval(self, values: np.ndarray) -> list[float]:
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(values, [tail, 1.0 - tail])
        return [float(low), float(high)]

    def intervals(self, resampled: Resampled, n: int) -> dict[str, list[float]]:
        """Per metric, its [low, high] interval; {} when off (0 resamples) or with nothing scored."""
        if self.resamples < 1 or n < 1:
            return {}
        return {name: self.interval(values) for name, values in self.values(resampled, n).items()}

    def describe(self) -> dict[str, float | int | str]:
        return {**{k: v for k, v in asdict(self).items() if k != "chunk"}, "method": "percentile, over samples"}


def weighted_means(draws: np.ndarray, per_sample: np.ndarray) -> np.ndarray:
    """(r,): the mean of per-sample scores in each resample; `per_sample` (n,) or (r, n)."""
    return (draws * per_sample).sum(axis=1) / draws.shape[1]
