"""`--task <suite>`: every member task runs into its own folder, the metrics are averaged, missing data stops it
before any work, and a second run keeps what the first finished."""

import json
import shutil
from pathlib import Path

import pytest

from test_data_converted import write_cifar10
from vlm_eval import cards
from vlm_eval.cli import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The repository's cards, plus a suite of the mini world's zero-shot task and CIFAR-10."""
    root = tmp_path / "home"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name != "tasks" and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    shutil.copytree(REPO / "tasks", root / "tasks")
    (root / "tasks" / "two.yaml").write_text("type: suite\nmembers: [mini-zeroshot, cifar10]\n")
    monkeypatch.setattr(cards, "CARD_ROOT", root)
    monkeypatch.setenv("VLM_EVAL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(REPO / "assets" / "miniworld" / "sample", data)
    return data


def _suite(data: Path, out: Path) -> int:
    return main(["--encoder", "mini-clip", "--task", "two", "--data-root", str(data), "--n-samples", "all",
                 "--device", "cpu", "--output-dir", str(out)])


def test_a_suite_runs_each_member_and_averages_them(home, tmp_path, capsys):
    write_cifar10(home / "cifar10" / "cifar-10-batches-py")
    out = tmp_path / "run"
    assert _suite(home, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    mini, cifar = (json.loads((out / t / "summary.json").read_text())["metrics"] for t in ("mini-zeroshot", "cifar10"))
    assert summary["tasks"] == {"mini-zeroshot": mini, "cifar10": cifar}
    assert summary["metrics"]["accuracy"] == pytest.approx((mini["accuracy"] + cifar["accuracy"]) / 2)
    assert "n_classes" not in summary["metrics"] and "average" in capsys.readouterr().out
    finished = (out / "cifar10" / "summary.json").stat().st_mtime_ns
    assert _suite(home, out) == 0  # again: the finished members are kept
    assert (out / "cifar10" / "summary.json").stat().st_mtime_ns == finished


def test_a_suite_with_a_member_lacking_data_stops_before_any_work(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert _suite(home, out) == 2
    err = capsys.readouterr().err
    assert "1 of 2 tasks lack data" in err and "cifar10" in err
    assert not (out / "mini-zeroshot").exists()
    from vlm_eval.listing import listing

    assert "suite: data for 1 of 2 tasks" in listing(home)
