"""Progress of one batch's attack schedule, and snapshots of it so that a killed run resumes mid-attack.

A targeted attack of 10,000 steps takes hours per batch, an ensemble several runs of hundreds. Every
few minutes, and after each run of a schedule, the state goes to
`RUN_DIR/attack_states/<batch>.safetensors`, one file per batch (named by a hash of its sample ids):
the worst outcome of every sample so far, the runs finished and the loop state of the attack under
way, tagged with the batch's sample ids and the attack's settings. Whichever process evaluates that
batch next (`python -m vlm_eval resume RUN_DIR`, or another shard taking it over) continues from the
saved run and step; a snapshot whose settings differ is refused. The file goes once the batch's
records are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vlm_eval.attacks.executor import Worst
from vlm_eval.attacks.schedule import Run
from vlm_eval import stopping
from vlm_eval.errors import VlmEvalError
from vlm_eval.results import partial_path, swap_in

log = logging.getLogger(__name__)

STATE_DIR = "attack_states"
SAVE_EVERY_S = 120.0  # seconds of attack between two snapshots
LOOP = "loop."  # prefix of the attack loop's tensors in the file


class BatchSnapshot:
    """The `Checkpoint` of one batch's schedule: progress bars, and its state saved and offered back."""

    def __init__(self, run_dir: Path, ids: list[Any], settings: dict[str, Any], steps: int, n_runs: int):
        self.path, self.ids, self.steps, self.n_runs = snapshot_file(run_dir, ids), list(ids), steps, n_runs
        self.settings = json.dumps(settings, sort_keys=True)
        self.loop: tuple[int, dict[str, torch.Tensor]] | None = None  # (run index, its saved loop state)

    def restore(self) -> tuple[int, Worst] | None:
        from safetensors import safe_open

        if not self.path.exists():
            return None
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("ids", "[]")) != self.ids:
                return None  # another batch's (a hash collision)
            if meta.get("settings") != self.settings or "worst" not in meta:
                raise VlmEvalError(f"{self.path} was saved by another attack ({meta.get('settings')}), not this "
                                   f"run's ({self.settings}); delete it to attack the batch again")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        runs_done = int(meta["runs_done"])
        worst = Worst(tensors.pop("worst.pixels"), **json.loads(meta["worst"]))
        if tensors:
            self.loop = runs_done, {k[len(LOOP):]: v for k, v in tensors.items()}
        log.warning("resuming the attack on %d samples at run %d of %d%s (%s)", len(self.ids), runs_done + 1,
                    self.n_runs, f", step {int(self.loop[1]['step'])}" if self.loop else "", self.path)
        return runs_done, worst

    def watch(self, index: int, run: Run, rows: list[int], worst: Worst) -> AttackSnapshot:
        saved = self.loop[1] if self.loop is not None and self.loop[0] == index else None
        self.loop = None
        return AttackSnapshot(self, index, worst, saved, f"{run.label} ({len(rows)} samples)")

    def finished(self, index: int, worst: Worst) -> None:
        if index + 1 < self.n_runs:  # after the last run the batch's records are written instead
            self.save(index + 1, worst, {})

    def save(self, runs_done: int, worst: Worst, loop: dict[str, torch.Tensor]) -> None:
        """Swapped in whole, so a kill while writing leaves the last good snapshot."""
        from safetensors.torch import save_file

        tensors = {LOOP + k: v.detach().cpu().contiguous() for k, v in loop.items()}
        tensors["worst.pixels"] = worst.pixels.detach().cpu().contiguous()
        self.path.parent.mkdir(exist_ok=True)
        metadata = {"ids": json.dumps(self.ids), "settings": self.settings, "runs_done": str(runs_done),
                    "worst": json.dumps(worst.lists())}
        swap_in(self.path, lambda partial: save_file(tensors, str(partial), metadata=metadata))


class AttackSnapshot:
    """The `AttackHook` of one run: a progress bar over its steps, and the state saved every SAVE_EVERY_S."""

    def __init__(self, batch: BatchSnapshot, index: int, worst: Worst, saved: dict[str, torch.Tensor] | None,
                 desc: str):
        from tqdm import tqdm

        self.batch, self.index, self.worst, self.saved = batch, index, worst, saved
        self.bar = tqdm(total=batch.steps, desc=desc, unit="step", leave=False)
        self.last_save = time.monotonic()

    def resume(self) -> dict[str, torch.Tensor] | None:
        if self.saved is not None:
            self.bar.update(int(self.saved["step"]))
        return self.saved

    def after_step(self, step: int, active: int, state: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(running=active, refresh=False)
        if stopping.requested():  # a safe point: the state is whole between steps
            self.batch.save(self.index, self.worst, state())
            raise KeyboardInterrupt
        if time.monotonic() - self.last_save >= SAVE_EVERY_S:
            self.batch.save(self.index, self.worst, state())
            self.last_save = time.monotonic()

    def __enter__(self) -> AttackSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def snapshot_file(run_dir: Path, ids: list[Any]) -> Path:
    digest = hashlib.sha1(json.dumps([str(i) for i in ids]).encode()).hexdigest()[:20]
    return Path(run_dir) / STATE_DIR / f"{digest}.safetensors"


def clear_snapshot(run_dir: Path, ids: list[Any]) -> None:
    """Remove a batch's attack state (and a half-written one): nothing of it is left to resume."""
    path = snapshot_file(run_dir, ids)
    for leftover in (path, partial_path(path)):
        leftover.unlink(missing_ok=True)
