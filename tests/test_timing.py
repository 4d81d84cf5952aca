"""The run's clock: each second counts for the innermost phase open, imports count as imports, and
`--timings FILE` writes phases that add up to the run."""

import builtins
import json
import sys
import threading

import pytest

from vlm_eval import timing
from vlm_eval.cli import main

TINY = ["--vlm", "tiny-random-llava", "--encoder", "tiny-random", "--task", "demo", "--batch-size", "3"]


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def time(self):
        return 1000.0 + self.now


@pytest.fixture
def fake(monkeypatch):
    clock_time = FakeTime()
    monkeypatch.setattr(timing, "time", clock_time)
    return clock_time


def test_nested_phases_count_for_the_innermost(fake):
    clock = timing.Clock()
    fake.now += 1
    with clock.phase("model"):
        fake.now += 2
        with clock.phase("scoring"):
            fake.now += 3
        fake.now += 4
        with clock.phase("model"):  # the same phase again, nested: still model
            fake.now += 0.5
    fake.now += 5
    assert clock.report() == {"other": 6, "model": 6.5, "scoring": 3}


def test_an_exception_closes_its_phase(fake):
    clock = timing.Clock()
    with pytest.raises(ValueError):
        with clock.phase("data"):
            fake.now += 2
            raise ValueError
    fake.now += 1
    assert clock.report() == {"other": 1, "data": 2}


def test_phases_on_other_threads_are_not_counted(fake):
    clock = timing.Clock()

    def elsewhere():
        with clock.phase("writing"):
            fake.now += 7

    with clock.phase("model"):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert clock.report() == {"other": 0, "model": 7}  # the main thread was in model all along


def test_imports_count_as_imports_and_the_hook_goes_away(fake, tmp_path, monkeypatch):
    module = tmp_path / "slow_module_for_timing.py"
    module.write_text("from vlm_eval import timing\ntiming.time.now += 4\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clock, original = timing.Clock(), builtins.__import__
    with timing.imports_timed(clock):
        with clock.phase("model loading"):
            fake.now += 1
            import slow_module_for_timing  # noqa: F401
            fake.now += 2
    assert builtins.__import__ is original
    sys.modules.pop("slow_module_for_timing")
    assert clock.report() == {"other": 0, "model loading": 3, "imports": 4}


def test_timings_file_adds_up_to_the_run(tmp_path):
    import torch

    path, before = tmp_path / "timings.json", torch.get_num_threads()
    try:
        assert main([*TINY, "--n-samples", "3", "--attack", "apgd", "--steps", "2", "--output-dir", str(tmp_path / "run"),
                     "--timings", str(path), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    measured = json.loads(path.read_text())
    seconds = measured["seconds"]
    assert {"data", "model loading", "model", "scoring", "semantic checks", "writing", "other"} <= set(seconds)
    assert all(value >= 0 for value in seconds.values())
    assert sum(seconds.values()) == pytest.approx(measured["total_s"])
    assert seconds["model"] > seconds["writing"]  # the attack's passes against a few small files
    assert builtins.__import__.__module__ == "builtins"  # the import hook ended with the run


def test_the_command_line_exits_without_the_last_garbage_collections(monkeypatch, capsys):
    import gc

    from vlm_eval.cli import entry_point

    monkeypatch.setattr(sys, "argv", ["vlm-eval", "--version"])
    assert gc.get_freeze_count() == 0
    try:
        assert entry_point() == 0
        assert gc.get_freeze_count() > 0  # what exists now is left to the process's end
    finally:
        gc.unfreeze()
    assert "vlm-eval" in capsys.readouterr().out
