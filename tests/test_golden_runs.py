"""Golden runs: a fixed set of mini-world evaluations whose outputs and scores are pinned.

They were recorded before the runner was re-cut into `vlm_eval/run/` and prove that the re-cut (and
any later refactor) changes no behaviour: the same texts, the same per-sample records and the same
metrics, on CPU in fp32. To record them again after a change that is meant to change results:

    VLM_EVAL_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_runs.py

and say in the commit why the numbers moved.
"""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from vlm_eval.cli import main

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"
GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
RECORD = os.environ.get("VLM_EVAL_RECORD_GOLDEN") == "1"
MINI = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--device", "cpu", "--precision", "fp32"]
# fp32 only (half precision on CPU depends on the CPU's kernels); one run of each kind the executor knows.
SCHEDULE = """
stop_below: 60
runs:
  - {attack: apgd, precision: fp32, text: reference, index: 0}
  - {attack: pgd, precision: fp32, text: reference, index: 1}
  - {attack: apgd, precision: fp32, text: best, start: best}
  - {attack: apgd, precision: fp32, text: target, target: a purple cross}
"""
APGD = ["--task", "mini-coco", "--n-samples", "6", "--batch-size", "4", "--attack", "apgd", "--eps", "4/255",
        "--steps", "20"]
RUNS = {
    "clean-mini-coco": ["--task", "mini-coco", "--n-samples", "all", "--batch-size", "5"],
    "clean-mini-vqa": ["--task", "mini-vqa", "--n-samples", "all", "--batch-size", "8"],
    "clean-mini-zeroshot": ["--task", "mini-zeroshot", "--n-samples", "all", "--batch-size", "7"],
    "apgd-mini-coco": APGD,
    "apgd-mini-vqa": ["--task", "mini-vqa", "--n-samples", "6", "--batch-size", "4", "--attack", "apgd",
                      "--eps", "2/255", "--steps", "10"],
    "targeted-mini-coco": ["--task", "mini-coco", "--n-samples", "6", "--batch-size", "4", "--attack", "targeted",
                           "--target", "a purple cross", "--steps", "12", "--check-every", "5"],
    "ensemble-mini-coco": ["--task", "mini-coco", "--n-samples", "6", "--batch-size", "4", "--attack", "ensemble",
                           "--schedule", "{schedule}", "--steps", "3"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    shutil.copytree(ASSETS / "sample", root / "world")
    (root / "schedule.yaml").write_text(SCHEDULE)
    return root


def _evaluate(world: Path, out: Path, args: list[str]) -> int:
    args = [a.replace("{schedule}", str(world / "schedule.yaml")) for a in args]
    return main([*MINI, "--data-root", str(world / "world"), "--output-dir", str(out), *args])


def outcome(run_dir: Path) -> dict:
    """What a run produced, without what depends on the machine or the folder: records and metrics."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for record in records:
        record["image"] = Path(record["image"]).name
    resolved = {k: v for k, v in summary["config"]["resolved"].items() if k != "attack"}
    attack = summary["config"]["resolved"]["attack"]
    if attack and "schedule" in attack:
        attack = {**attack, "schedule": {**attack["schedule"], "source": Path(attack["schedule"]["source"]).name}}
    if attack and "source" in attack:
        attack = {**attack, "source": Path(attack["source"]).name}
    return {"resolved": {**resolved, "attack": attack}, "n_samples": summary["n_samples"],
            "n_skipped": summary["n_skipped"], "metrics": summary["metrics"],
            "semantic": summary.get("semantic"), "records": records,
            "subset_ids": (run_dir / "subset_ids.txt").read_text().split()}


def assert_same(got, expected, where="") -> None:
    """Equal, texts and integers exactly; floats to 1e-6 relative (the last bits of a CPU's kernels)."""
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-6, abs=1e-9), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), f"{where}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            assert_same(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), f"{where}: length"
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def check_or_record(name: str, run_dir: Path) -> None:
    path = GOLDEN / f"{name}.json"
    if RECORD:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(outcome(run_dir), indent=1, sort_keys=True) + "\n")
        return
    assert_same(outcome(run_dir), json.loads(path.read_text()), name)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_golden_run_gives_its_recorded_outputs_and_scores(name, world, tmp_path):
    assert _evaluate(world, tmp_path / "run", RUNS[name]) == 0
    check_or_record(name, tmp_path / "run")


def test_saved_adversarial_images_replay_to_the_recorded_outputs(world, tmp_path):
    """The APGD run's saved images, evaluated by --from-adversarial, give that run's attacked outputs."""
    assert _evaluate(world, tmp_path / "attacked", APGD) == 0
    replay = ["--task", "mini-coco", "--n-samples", "6", "--batch-size", "3", "--from-adversarial",
              str(tmp_path / "attacked")]
    assert _evaluate(world, tmp_path / "replay", replay) == 0
    check_or_record("replay-mini-coco", tmp_path / "replay")
    attacked = [json.loads(line)["adversarial"]["output"] for line in (tmp_path / "attacked" / "samples.jsonl").open()]
    replayed = [json.loads(line)["adversarial"]["output"] for line in (tmp_path / "replay" / "samples.jsonl").open()]
    assert replayed == attacked


@pytest.mark.parametrize("name,run,step", [("apgd-mini-coco", 0, 9), ("ensemble-mini-coco", 2, 2)])
def test_a_killed_and_resumed_run_gives_the_recorded_outputs(name, run, step, world, tmp_path, monkeypatch):
    """Killed inside an attack of its second batch (APGD: at step 9; the ensemble: in its third run), then
    resumed: the uninterrupted run's golden outcome."""
    import torch

    from vlm_eval.attacks import snapshot

    monkeypatch.setattr(snapshot, "SAVE_EVERY_S", 0.0)  # a snapshot after every step
    original, seen = snapshot.AttackSnapshot.after_step, []

    def killed_in_the_second_batch(self, at: int, active: int, state) -> None:
        original(self, at, active, state)
        seen.append(tuple(self.batch.ids))
        if len(set(seen)) == 2 and (self.index, at) == (run, step):
            raise KeyboardInterrupt

    monkeypatch.setattr(snapshot.AttackSnapshot, "after_step", killed_in_the_second_batch)
    out = tmp_path / "run"
    assert _evaluate(world, out, RUNS[name]) == 130
    assert len(list((out / snapshot.STATE_DIR).iterdir())) == 1  # the second batch's attack state
    monkeypatch.setattr(snapshot.AttackSnapshot, "after_step", original)
    torch.manual_seed(1234)  # the resumed attack must not depend on the global generator
    assert main(["resume", str(out)]) == 0
    if not RECORD:
        assert_same(outcome(out), json.loads((GOLDEN / f"{name}.json").read_text()), "resumed")
