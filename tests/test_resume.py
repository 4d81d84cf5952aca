"""`python -m vlm_eval resume RUN_DIR`: an interrupted run finishes with the samples it wrote kept.

The killed-mid-attack case is in test_attack_runs.py; here clean and zero-shot runs, and the refusals.
"""

import json
import shutil
from pathlib import Path

import pytest

from vlm_eval.cli import main

pytestmark = pytest.mark.slow  # killed and resumed mini-world runs

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "miniworld"
SHARD_FILE = "shards/0-of-1.jsonl"  # where an unsharded run appends its records


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return Path(shutil.copytree(ASSETS / "sample", tmp_path_factory.mktemp("sample") / "world"))


def _args(sample: Path, task: str, out: Path) -> list[str]:
    return ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", task, "--n-samples", "all", "--device", "cpu",
            "--batch-size", "4", "--data-root", str(sample), "--output-dir", str(out)]


@pytest.mark.parametrize("task", ["mini-coco", "mini-zeroshot"])
def test_an_interrupted_run_resumes_keeping_what_it_wrote(task, sample, tmp_path, caplog):
    whole = tmp_path / "whole"
    assert main(_args(sample, task, whole)) == 0
    lines = (whole / "samples.jsonl").read_text().splitlines()

    # The state a kill leaves: four samples written, a fifth line cut off, nothing merged.
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for name in ("summary.json", "samples.jsonl", "skipped.jsonl"):
        (run / name).unlink()
    marked = [json.dumps({**json.loads(line), "kept": True}) for line in lines[:4]]
    (run / SHARD_FILE).write_text("\n".join(marked) + "\n" + lines[4][: len(lines[4]) // 2])

    assert main(["resume", str(run)]) == 0
    assert "resuming" in caplog.text and "dropping the last line" in caplog.text
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [json.loads(line)["id"] for line in lines]
    assert [r.get("kept", False) for r in records] == [True] * 4 + [False] * (len(lines) - 4)  # not evaluated again
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (run, whole)]
    assert summaries[0]["metrics"] == summaries[1]["metrics"] and summaries[0]["n_samples"] == len(lines)


def test_resume_refuses_finished_runs_other_folders_and_changed_data(sample, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(sample, "mini-coco", run)) == 0
    assert main(["resume", str(run)]) == 2
    assert "holds a finished run (summary.json): nothing to resume" in capsys.readouterr().err
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a run folder (no config.json)" in capsys.readouterr().err
    (run / "summary.json").unlink()
    lines = (run / SHARD_FILE).read_text().splitlines()
    (run / SHARD_FILE).write_text("\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    assert main(["resume", str(run)]) == 2  # only a cut last line is an interruption's
    assert f"{run / SHARD_FILE}, line 2: not JSON; the run folder is damaged" in capsys.readouterr().err
    (run / "subset_ids.txt").write_text("someone-else\n")
    assert main(["resume", str(run)]) == 2
    assert "the task's samples are not those the run started with" in capsys.readouterr().err


def test_a_batch_snapshot_is_offered_back_only_to_the_same_attack_on_the_same_batch(tmp_path):
    import math

    import torch

    from vlm_eval.attacks.executor import Worst
    from vlm_eval.attacks.schedule import Run
    from vlm_eval.attacks.snapshot import BatchSnapshot, clear_snapshot, snapshot_file
    from vlm_eval.errors import VlmEvalError

    settings = {"name": "ensemble", "eps": 4 / 255, "steps": 100}
    worst = Worst.start(torch.rand(2, 3, 4, 4), ["a cat", "a dog"], [math.inf, 12.5], [["x"], ["y"]])
    worst.runs = [[3.0], [None]]
    state = {"x_adv": torch.rand(2, 3, 4, 4), "step": torch.tensor(40)}
    BatchSnapshot(tmp_path, ["a", "b"], settings, 100, 3).save(1, worst, state)

    def offered(ids, settings):
        snapshot = BatchSnapshot(tmp_path, ids, settings, 100, 3)
        restored = snapshot.restore()
        with snapshot.watch(1, Run(), [0, 1], worst) as hook:
            return restored, hook.resume()

    (runs_done, again), loop = offered(["a", "b"], settings)
    assert runs_done == 1 and torch.equal(loop["x_adv"], state["x_adv"]) and int(loop["step"]) == 40
    assert torch.equal(again.pixels, worst.pixels) and again.lists() == worst.lists()  # inf and None survive
    assert offered(["c", "d"], settings) == (None, None)  # another batch has a file of its own
    with pytest.raises(VlmEvalError, match="saved by another attack"):
        offered(["a", "b"], {**settings, "eps": 2 / 255})

    half_written = snapshot_file(tmp_path, ["a", "b"]).with_suffix(".safetensors.partial")  # a kill during a save
    half_written.write_bytes(b"cut")
    clear_snapshot(tmp_path, ["a", "b"])
    assert not half_written.exists() and not snapshot_file(tmp_path, ["a", "b"]).exists()


def test_resume_keeps_the_semantic_models_the_run_started_with(sample, tmp_path, monkeypatch):
    import dataclasses

    from vlm_eval import cards

    run = tmp_path / "run"
    assert main([*_args(sample, "mini-coco", run), "--attack", "pgd", "--steps", "1"]) == 0
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert (resolved["reference_encoder"], resolved["sentence_model"]) == ("mini-clip", "reference")  # the card's

    # Killed after the first batch; meanwhile the VLM card's default changed.
    (run / "summary.json").unlink()
    (run / SHARD_FILE).write_text("".join(f"{line}\n" for line in (run / SHARD_FILE).read_text().splitlines()[:4]))
    load_card = cards.load_card
    monkeypatch.setattr(cards, "load_card", lambda kind, name: dataclasses.replace(load_card(kind, name), sentence_model="none")
                        if kind == "vlms" else load_card(kind, name))
    assert main(["resume", str(run)]) == 0
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all("output_similarity" in r["adversarial"]["semantic"] for r in records)
    assert json.loads((run / "summary.json").read_text())["provenance"]["semantic"]["sentence_model"] == "reference"
