"""The committed mini-world weights reproduce the scores documented for the committed sample."""

import json
import shutil
from pathlib import Path

import pytest

from vlm_eval.cli import main

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"
# One question or image more or less right moves VQA by 2.8 and zero-shot by 4.2 points; greedy
# captions may flip a word where floating-point sums differ across machines.
CASES = [("mini-coco", "cider", 5.0), ("mini-vqa", "vqa_accuracy", 3.0), ("mini-zeroshot", "accuracy", 4.5)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """A copy of the committed sample (the run must never write into the repository)."""
    return Path(shutil.copytree(ASSETS / "sample", tmp_path_factory.mktemp("sample") / "world"))


# the mini Flamingo's sample scores: its two tasks run by the toolkit on the committed sample (docs/openflamingo.md)
FLAMINGO_CASES = [("mini-openflamingo", "mini-openflamingo/sample_scores.json", *case) for case in CASES[:2]]


@pytest.mark.parametrize("vlm,scores,task,metric,tolerance",
                         [("mini-llava", "sample_scores.json", *case) for case in CASES] + FLAMINGO_CASES)
def test_committed_weights_reproduce_the_documented_sample_scores(vlm, scores, task, metric, tolerance, sample, tmp_path):
    expected = json.loads((ASSETS / scores).read_text())[task]
    argv = ["--vlm", vlm, "--encoder", "mini-clip", "--task", task, "--n-samples", "all",
            "--data-root", str(sample), "--output-dir", str(tmp_path / "run"), "--device", "cpu"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_samples"] == expected["n"]
    assert summary["metrics"][metric] == pytest.approx(expected[metric], abs=tolerance)
    assert summary["provenance"]["random_weights"] is False


def test_a_named_world_keeps_its_sizes(sample):
    """--data-root on the sample evaluates the sample; only the default cache is grown to the full world."""
    from vlm_eval.miniworld.export import ensure_eval_data

    before = (sample / "dataset_miniworld.json").read_text()
    ensure_eval_data(sample, full=False)
    assert (sample / "dataset_miniworld.json").read_text() == before
