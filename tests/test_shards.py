"""Shards of one run (`--shard i/n`, torchrun's environment): claims, the shared folder, merge and resume.

The end-to-end cases start real processes on the mini world's committed sample and kill them with
SIGKILL, as a crashed node would be.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from summary_schema import check_summary
from vlm_eval.cli import main
from vlm_eval.errors import VlmEvalError
from vlm_eval.run import claims as claims_module
from vlm_eval.run.claims import Claims
from vlm_eval.run.shard import Shard, shard_from

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "miniworld"
ATTACKED = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-coco", "--n-samples", "all",
            "--device", "cpu", "--batch-size", "2", "--attack", "apgd", "--eps", "4/255", "--steps", "12"]
# A shard as its own process, saving its attack state after every step (so a kill lands mid-attack).
SHARD_PROCESS = ("import sys; from vlm_eval.attacks import snapshot; snapshot.SAVE_EVERY_S = 0.0; "
                 "from vlm_eval.cli import main; sys.exit(main(sys.argv[1:]))")


def test_the_shard_comes_from_the_flag_else_the_launchers_environment():
    assert shard_from(None, {}) == Shard(0, 1, None)
    assert shard_from("2/4", {}) == Shard(2, 4, None) and Shard(2, 4).tag == "2-of-4"
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert shard_from(None, torchrun) == Shard(5, 8, 1)
    assert shard_from("0/2", torchrun) == Shard(0, 2, 1)  # the flag wins; the GPU is still the launcher's
    assert Shard(5, 8, 1).device("cuda") == "cuda:1" and Shard(5, 8, 1).device("cpu") == "cpu"
    assert Shard().device("cuda") == "cuda"
    for bad in ("4/4", "1", "a/2", "-1/2"):
        with pytest.raises(VlmEvalError, match="--shard expects i/n"):
            shard_from(bad, {})


def test_a_claim_is_held_by_one_live_shard_and_taken_over_from_a_dead_one(tmp_path, monkeypatch):
    with Claims(tmp_path, "0-of-2") as first, Claims(tmp_path, "1-of-2") as second:
        assert first.take("batch-000000") and first.take("batch-000000")  # holding it again is no new claim
        assert not second.take("batch-000000")
        assert second.take("batch-000001") and not first.take("batch-000001")
    # Both gave their claims back on the way out: a new shard may take either.
    with Claims(tmp_path, "0-of-1") as third:
        assert third.take("batch-000000") and third.take("batch-000001")
        third.release("batch-000001")

    # A holder on this host whose process is gone is dead at once...
    (tmp_path / "claims" / "batch-000002.0").write_text(f"0-of-2:{claims_module.socket.gethostname()}:{2**22 + 7}:x")
    monkeypatch.setattr(claims_module, "pid_running", lambda pid: pid != 2**22 + 7)
    with Claims(tmp_path, "1-of-2") as heir:
        assert heir.take("batch-000002") and (tmp_path / "claims" / "batch-000002.1").read_text() == heir.owner
    # ...one elsewhere once its heartbeat is older than STALE_S.
    elsewhere = "0-of-2:another-node:123:y"
    (tmp_path / "claims" / "batch-000003.0").write_text(elsewhere)
    heartbeat = tmp_path / "claims" / "alive" / elsewhere.replace(":", "_")
    heartbeat.touch()
    with Claims(tmp_path, "1-of-2") as waiting:
        assert not waiting.take("batch-000003")
        old = time.time() - claims_module.STALE_S - 1
        os.utime(heartbeat, (old, old))
        assert waiting.take("batch-000003")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return Path(shutil.copytree(ASSETS / "sample", tmp_path_factory.mktemp("sample") / "world"))


def test_a_shard_with_another_config_is_refused_and_a_sharded_run_needs_a_folder(sample, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "4",
            "--batch-size", "2", "--device", "cpu", "--data-root", str(sample), "--output-dir", str(run)]
    assert main([*base, "--shard", "0/2"]) == 0  # alone, it takes both batches and merges
    assert (run / "summary.json").is_file()
    (run / "summary.json").unlink()
    assert main([*base, "--shard", "1/2", "--eps", "2/255"]) == 2
    assert "holds a run with another configuration (eps: '4/255' there, '2/255' here)" in capsys.readouterr().err
    assert main([*base[:-2], "--shard", "1/2"]) == 2
    assert "give --output-dir" in capsys.readouterr().err


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


class Process:
    """A vlm_eval process of its own; its log (progress bars and all) goes to a file, as a pipe nobody
    reads would fill up and stall it."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        with log.open("w") as out:
            self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out,
                                          env={**os.environ, "OMP_NUM_THREADS": "1"})

    def finished(self) -> str:
        """The log of a process that ended well."""
        assert self.popen.wait(timeout=600) == 0, self.log.read_text()[-3000:]
        return self.log.read_text()

    def kill_mid_attack(self, run_dir: Path, tag: str) -> None:
        """SIGKILL the shard once it wrote a batch and saved the state of its next batch's attack."""
        deadline = time.monotonic() + 300
        while not self.mid_attack(run_dir, tag):
            assert self.popen.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.02)
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    @staticmethod
    def mid_attack(run_dir: Path, tag: str) -> bool:
        from vlm_eval.attacks.snapshot import snapshot_file

        records = run_dir / "shards" / f"{tag}.jsonl"
        if not (records.is_file() and records.read_text().count("\n") >= 2):
            return False
        held = []
        for claim in (run_dir / "claims").glob("batch-*"):
            try:
                if claim.read_text().startswith(f"{tag}:"):
                    held.append(int(claim.name[len("batch-"):].split(".")[0]))
            except FileNotFoundError:  # given back as we looked
                continue
        ids = (run_dir / "subset_ids.txt").read_text().split()
        return any(snapshot_file(run_dir, ids[2 * batch : 2 * batch + 2]).is_file() for batch in held)


def _shards(sample: Path, run_dir: Path, n: int) -> list[Process]:
    return [Process(run_dir.with_name(f"{run_dir.name}-{i}-of-{n}.log"), "-c", SHARD_PROCESS, *ATTACKED,
                    "--data-root", str(sample), "--output-dir", str(run_dir), "--shard", f"{i}/{n}") for i in range(n)]


@pytest.mark.slow
def test_sharded_killed_and_resumed_runs_merge_to_the_uninterrupted_run(sample, tmp_path):
    whole = tmp_path / "whole"
    assert main([*ATTACKED, "--data-root", str(sample), "--output-dir", str(whole)]) == 0
    expected = _records(whole)

    # Two shards; one is killed mid-attack, the other takes its batch over from the saved step, and merges.
    taken_over = tmp_path / "taken-over"
    first, second = _shards(sample, taken_over, 2)
    first.kill_mid_attack(taken_over, "0-of-2")
    assert "resuming the attack on 2 samples" in second.finished()

    # Every shard killed, then resumed by three.
    resumed = tmp_path / "resumed"
    for i, shard in enumerate(_shards(sample, resumed, 2)):
        shard.kill_mid_attack(resumed, f"{i}-of-2")
    assert not (resumed / "summary.json").exists()
    for i, process in enumerate([Process(tmp_path / f"resume-{i}.log", "-m", "vlm_eval", "resume", str(resumed),
                                         "--shard", f"{i}/3") for i in range(3)]):
        process.finished()

    for run in (taken_over, resumed):
        records = _records(run)
        assert [r["id"] for r in records] == [r["id"] for r in expected]  # each sample once, in subset order
        for mine, theirs in zip(records, expected):
            assert mine["output"] == theirs["output"] and mine["adversarial"] == theirs["adversarial"]
        summaries = [json.loads((folder / "summary.json").read_text()) for folder in (run, whole)]
        assert summaries[0]["metrics"] == summaries[1]["metrics"]
        assert not (run / "claims").exists() and not (run / "attack_states").exists()


def test_merge_refuses_missing_samples_unless_partial_and_keeps_the_first_record_of_an_id(sample, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--vlm", "mini-llava", "--encoder", "mini-clip", "--task", "mini-zeroshot", "--n-samples", "6",
            "--device", "cpu", "--batch-size", "2", "--data-root", str(sample), "--output-dir", str(run)]
    assert main(args) == 0
    whole = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    shard = run / "shards" / "0-of-1.jsonl"
    lines = shard.read_text().splitlines()
    # as if two shards had evaluated a batch each, one of them a sample twice (a takeover after a late write)
    shard.write_text("".join(f"{line}\n" for line in lines[:2]))
    changed = json.dumps({**json.loads(lines[1]), "score": -1.0})
    (run / "shards" / "1-of-2.jsonl").write_text(f"{changed}\n" + "".join(f"{line}\n" for line in lines[2:4]))

    assert main(["merge", str(run)]) == 2
    assert "2 of 6 samples have no record yet" in capsys.readouterr().err
    assert main(["merge", str(run), "--partial"]) == 0
    partial = check_summary(run)
    assert partial["partial"] and partial["n_missing"] == 2 and partial["n_samples"] == 4
    assert [r["id"] for r in _records(run)] == [json.loads(line)["id"] for line in lines[:4]]
    assert all(r["score"] >= 0 for r in _records(run))  # the first record of the duplicated id

    (run / "shards" / "1-of-2.jsonl").write_text("".join(f"{line}\n" for line in lines[1:]))
    for _ in range(2):  # idempotent
        assert main(["merge", str(run)]) == 0
        assert json.loads((run / "summary.json").read_text())["metrics"] == whole["metrics"]
        assert len(_records(run)) == 6


@pytest.mark.slow
def test_a_sweep_loads_its_vlm_once_skips_finished_cells_and_resumes_started_ones(sample, tmp_path, monkeypatch,
                                                                                 capsys):
    from vlm_eval.vlms.llava import load

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"output_dir: {tmp_path / 'out'}\n"
                     f"config: {{vlm: mini-llava, task: mini-coco, n_samples: 4, batch_size: 2, device: cpu, "
                     f"attack: apgd, steps: 2, data_root: {sample}}}\n"
                     "grid: {encoder: [mini-clip, mini-fare4], eps: [2/255, 4/255]}\n")
    loads = []
    original = load.load_llava
    monkeypatch.setattr(load, "load_llava", lambda *args: loads.append(args[1]) or original(*args))
    assert main(["sweep", str(sweep)]) == 0
    cells = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert cells == ["encoder=mini-clip__eps=2_255", "encoder=mini-clip__eps=4_255",
                     "encoder=mini-fare4__eps=2_255", "encoder=mini-fare4__eps=4_255"]
    assert len(loads) == 1  # four cells, one language model: the encoders were swapped in
    table = capsys.readouterr().out
    assert "| mini-llava | mini-clip |" in table and "| mini-llava | mini-fare4 (trained l-inf 4/255) |" in table
    first = {cell: json.loads((tmp_path / "out" / cell / "summary.json").read_text()) for cell in cells}

    # A cell interrupted after its first batch, one never started; the two others are finished.
    started, fresh = tmp_path / "out" / cells[1], tmp_path / "out" / cells[2]
    for name in ("summary.json", "samples.jsonl", "skipped.jsonl"):
        (started / name).unlink()
    records = started / "shards" / "0-of-1.jsonl"
    kept = [json.dumps({**json.loads(line), "kept": True}) + "\n" for line in records.read_text().splitlines()[:2]]
    records.write_text("".join(kept))
    shutil.rmtree(fresh)
    finished = {cell: (tmp_path / "out" / cell / "summary.json").stat().st_mtime_ns for cell in (cells[0], cells[3])}

    assert main(["sweep", str(sweep)]) == 0
    assert {cell: (tmp_path / "out" / cell / "summary.json").stat().st_mtime_ns for cell in finished} == finished
    assert [r.get("kept", False) for r in _records(started)] == [True, True, False, False]
    for cell in (cells[1], cells[2]):
        again = json.loads((tmp_path / "out" / cell / "summary.json").read_text())
        assert again["metrics"] == first[cell]["metrics"]

    sweep.write_text(sweep.read_text().replace("4/255]", "8/255]"))
    assert main(["sweep", str(sweep)]) == 2
    assert "holds another sweep" in capsys.readouterr().err


def test_the_slurm_array_script_runs_each_task_as_its_shard(tmp_path):
    run = tmp_path / "run"
    options = ["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--task", "demo", "--n-samples", "4",
               "--batch-size", "1", "--device", "cpu"]
    bin_dir = tmp_path / "bin"  # `python` in the script: this interpreter
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    for task in ("1", "0"):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": task,
               "SLURM_ARRAY_TASK_MAX": "1"}
        done = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "eval_array.sh"), str(run), *options],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "shards" / "1-of-2.jsonl").is_file()  # task 1 was shard 1 of 2 (and, alone, did all)
    assert len(_records(run)) == 4


def test_a_vlm_split_by_device_map_evaluates_as_the_whole_one(sample, tmp_path, capsys):
    base = ["--vlm", "mini-llava", "--encoder", "mini-fare4", "--task", "mini-coco", "--n-samples", "4",
            "--device", "cpu", "--data-root", str(sample), "--attack", "apgd", "--steps", "2"]
    assert main([*base, "--output-dir", str(tmp_path / "whole")]) == 0
    assert main([*base, "--device-map", "auto", "--output-dir", str(tmp_path / "split")]) == 0
    whole, split = _records(tmp_path / "whole"), _records(tmp_path / "split")
    assert [r["adversarial"]["output"] for r in split] == [r["adversarial"]["output"] for r in whole]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["device_map"] == "auto"

    assert main(["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--task", "demo", "--n-samples", "1",
                 "--device-map", "auto", "--output-dir", str(tmp_path / "tiny")]) == 2
    assert "is built with random weights in memory: drop --device-map" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_starts_one_shard_per_process(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    Process(log, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vlm_eval", "--vlm", "tiny-random-llava",
            "--encoder", "tiny-random", "--task", "demo", "--n-samples", "4", "--batch-size", "1", "--device", "cpu",
            "--output-dir", str(run)).finished()
    started = sorted(p.name for p in (run / "shards").glob("*.provenance.json"))
    assert started == ["0-of-2.provenance.json", "1-of-2.provenance.json"]  # each process its own shard
    assert len(_records(run)) == 4
