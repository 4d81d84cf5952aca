"""Seeded subsets reproduce RobustVLM's `np.random.seed(seed); np.random.choice(N, n, replace=False)`."""

from pathlib import Path

import numpy as np
import pytest

from vlm_eval.data import Sample, save_subset_ids, select_subset, subset_indices


def _samples(count):
    return [Sample(id=f"s{i}", image_path=Path(f"{i}.jpg"), references=("r",)) for i in range(count)]


def test_matches_robustvlm_rule_exactly():
    samples = _samples(10)
    # Computed once with numpy: np.random.seed(42); np.random.choice(10, 4, replace=False) -> [8, 1, 5, 0]
    assert [s.id for s in select_subset(samples, 4, seed=42)] == ["s8", "s1", "s5", "s0"]
    assert subset_indices(10, 4, 0) == [2, 8, 4, 9]


def test_same_as_global_numpy_calls_without_touching_global_state():
    state = np.random.get_state()
    ours = subset_indices(5000, 500, 42)
    assert np.array_equal(np.random.get_state()[1], state[1])
    np.random.seed(42)
    theirs = np.random.choice(5000, 500, replace=False)
    np.random.set_state(state)
    assert ours == [int(i) for i in theirs]
    assert ours[:5] == [1501, 2586, 2653, 1055, 705]


def test_deterministic_and_seed_dependent():
    samples = _samples(50)
    assert select_subset(samples, 10, seed=42) == select_subset(samples, 10, seed=42)
    assert select_subset(samples, 10, seed=42) != select_subset(samples, 10, seed=43)
    assert len({s.id for s in select_subset(samples, 10, seed=1)}) == 10


@pytest.mark.parametrize("n", [None, 7, 100])
def test_all_samples_in_original_order(n):
    samples = _samples(7)
    assert select_subset(samples, n, seed=42) == samples


def test_negative_size_is_rejected():
    with pytest.raises(ValueError):
        select_subset(_samples(3), -1, seed=42)


def test_save_subset_ids(tmp_path):
    path = tmp_path / "out" / "subset_ids.txt"
    save_subset_ids(path, select_subset(_samples(10), 3, seed=42))
    assert path.read_text().splitlines() == ["s8", "s1", "s5"]
