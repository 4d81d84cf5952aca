"""Semantic-preservation measures on cases computed by hand, and their place in a run's files."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from vlm_eval.metrics.similarity import cosine, perturbation_norms, summarize


def test_identical_embeddings_have_cosine_one_and_the_rest_their_known_angles():
    a = torch.tensor([[1.0, 2.0, 2.0], [3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 4.0], [0.0, 5.0, 0.0], [-1.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    assert cosine(a, a)[:3] == pytest.approx([1.0, 1.0, 1.0])
    assert cosine(a, b) == pytest.approx([1.0, 0.0, -1.0, 0.0])  # scale-free; orthogonal; opposite; zero vector
    assert cosine(a[2:3], torch.tensor([[1.0, 0.0, 0.0]]))[0] == pytest.approx(1 / math.sqrt(2))


def test_a_known_perturbation_has_its_known_norms():
    clean = torch.full((2, 3, 4, 4), 0.5)
    adversarial = clean.clone()
    adversarial[0, 1, 2, 3] += 4 / 255  # one pixel moved by 4/255
    adversarial[1] += torch.where(torch.arange(48).view(3, 4, 4) % 2 == 0, 2 / 255, -2 / 255)  # every pixel by 2/255
    one_pixel, every_pixel = perturbation_norms(clean, adversarial)
    assert one_pixel == pytest.approx({"linf": 4 / 255, "l2": 4 / 255})
    assert every_pixel == pytest.approx({"linf": 2 / 255, "l2": 2 / 255 * math.sqrt(48)})
    assert perturbation_norms(clean, clean) == [{"linf": 0.0, "l2": 0.0}] * 2
    with pytest.raises(ValueError, match="differ in shape"):
        perturbation_norms(clean, clean[:1])


def test_summaries_give_mean_median_and_the_share_under_a_threshold():
    assert summarize([0.2, 0.9, 0.4, 1.0], threshold=0.5) == pytest.approx(
        {"mean": 0.625, "median": 0.65, "share_below": 50.0})
    assert summarize([3.0]) == {"mean": 3.0, "median": 3.0}
    assert math.isnan(summarize([])["mean"])


ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"


def test_an_attacked_run_records_each_perturbation_and_summarizes_them(tmp_path):
    from vlm_eval.cli import main

    sample = shutil.copytree(ASSETS / "sample", tmp_path / "world")
    args = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "all",
            "--device", "cpu", "--data-root", str(sample)]
    assert main([*args, "--output-dir", str(tmp_path / "clean")]) == 0
    assert "semantic" not in json.loads((tmp_path / "clean" / "summary.json").read_text())

    assert main([*args, "--output-dir", str(tmp_path / "run"), "--attack", "apgd", "--eps", "2/255", "--steps", "3"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    sizes = [r["adversarial"]["perturbation"] for r in records]
    assert all(0 < s["linf"] <= 2 / 255 + 1e-6 and s["linf"] < s["l2"] for s in sizes)
    semantic = json.loads((tmp_path / "run" / "summary.json").read_text())["semantic"]
    assert semantic["perturbation_linf"]["mean"] == pytest.approx(sum(s["linf"] for s in sizes) / len(sizes))
    l2 = sorted(s["l2"] for s in sizes)
    assert len(l2) == 12 and semantic["perturbation_l2"]["median"] == pytest.approx((l2[5] + l2[6]) / 2)
