"""Progress of one batch's attack, and snapshots of its state so that a killed run resumes mid-attack.

A targeted attack of 10,000 steps takes hours per batch. Every few minutes the loop state goes to
`RUN_DIR/attack_state.safetensors`, tagged with the batch's sample ids and the attack's settings.
`python -m vlm_eval resume RUN_DIR` reruns the run, and the attack of that batch continues from the
saved step. Only a resumed run reads a snapshot; one whose ids are not the batch's belongs to a
batch that finished, and one whose settings differ is refused.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vlm_eval.errors import VlmEvalError
from vlm_eval.results import partial_path, swap_in

log = logging.getLogger(__name__)

STATE_FILE = "attack_state.safetensors"
SAVE_EVERY_S = 120.0  # seconds of attack between two snapshots


class AttackProgress:
    """A progress bar over the attack's steps (the samples still running beside it); saves nothing."""

    def __init__(self, steps: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=steps, desc=desc, unit="step", leave=False)

    def resume(self) -> dict[str, torch.Tensor] | None:
        return None

    def after_step(self, step: int, active: int, state: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(running=active, refresh=False)

    def __enter__(self) -> AttackProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class AttackSnapshot(AttackProgress):
    """The progress bar, plus the state saved every `every_s` seconds and, in a resumed run, offered back.

    `settings` (the attack's description) must match the snapshot's for it to be used.
    """

    def __init__(self, run_dir: Path, ids: list[Any], settings: dict[str, Any], steps: int, desc: str,
                 resuming: bool, every_s: float | None = None):
        super().__init__(steps, desc)
        self.path, self.ids, self.resuming = Path(run_dir) / STATE_FILE, list(ids), resuming
        self.settings = json.dumps(settings, sort_keys=True)
        self.every_s = SAVE_EVERY_S if every_s is None else every_s
        self.last_save = time.monotonic()

    def resume(self) -> dict[str, torch.Tensor] | None:
        from safetensors import safe_open

        if not (self.resuming and self.path.exists()):
            return None
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("ids", "[]")) != self.ids:
                return None  # left by a batch that finished
            if meta.get("settings") != self.settings:
                raise VlmEvalError(f"{self.path} was saved by another attack ({meta.get('settings')}), not this "
                                   f"run's ({self.settings}); delete it to attack the batch again")
            state = {key: f.get_tensor(key) for key in f.keys()}
        log.warning("resuming the attack on %d samples at step %d (%s)", len(self.ids), int(state["step"]), self.path)
        self.bar.update(int(state["step"]))
        return state

    def after_step(self, step: int, active: int, state: Callable[[], dict[str, torch.Tensor]]) -> None:
        super().after_step(step, active, state)
        if time.monotonic() - self.last_save >= self.every_s:
            self.save(state())
            self.last_save = time.monotonic()

    def save(self, state: dict[str, torch.Tensor]) -> None:
        """Swapped in whole, so a kill while writing leaves the last good snapshot."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        metadata = {"ids": json.dumps(self.ids), "settings": self.settings}
        swap_in(self.path, lambda partial: save_file(tensors, str(partial), metadata=metadata))


def clear_snapshot(run_dir: Path) -> None:
    """Remove the attack state (and a half-written one): nothing is left to resume."""
    for path in (Path(run_dir) / STATE_FILE, partial_path(Path(run_dir) / STATE_FILE)):
        path.unlink(missing_ok=True)
