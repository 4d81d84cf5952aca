"""Which shard evaluates which batch: claim files in the run folder, so shards balance themselves.

Attacked samples stop early, so fixed slices of the subset finish far apart; instead each shard takes
the next batch nobody holds. A claim is a file `claims/<name>.<generation>` created exclusively (one
shard wins); its holder is the highest generation. A holder that died (a crash, SIGKILL, a lost node)
is taken over by creating the next generation: dead means its heartbeat file went stale, or, on the
same host, that its process is gone. No collectives: only files, which every scheduler and shared
file system has.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

from vlm_eval.results import create_once

CLAIMS = "claims"
HEARTBEAT_S = 20.0  # how often a live shard touches its heartbeat file
STALE_S = 180.0  # a heartbeat older than this is a dead shard's (clocks of nodes may differ a little)


class Claims:
    """This process's claims in one run folder; a context manager that keeps its heartbeat going and
    gives back, on the way out, the claims it still holds (an interrupted batch is free at once)."""

    def __init__(self, run_dir: Path, tag: str):
        self.dir = Path(run_dir) / CLAIMS
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.owner = f"{tag}:{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.heartbeat = self.dir / "alive" / self.owner.replace(":", "_")
        self.held: dict[str, Path] = {}
        self._stop = threading.Event()

    def __enter__(self) -> Claims:
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat.touch()
        threading.Thread(target=self._beat, daemon=True, name="vlm_eval-heartbeat").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for path in self.held.values():
            path.unlink(missing_ok=True)
        self.heartbeat.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat.touch()
            except OSError:  # the folder is being cleared by the merge; nothing left to hold
                return

    def take(self, name: str) -> bool:
        """Claim `name` if nobody alive holds it; True if this process holds it now."""
        if name in self.held:
            return True
        generations = sorted(int(p.suffix[1:]) for p in self.dir.glob(f"{name}.*") if p.suffix[1:].isdigit())
        if generations and self._alive((self.dir / f"{name}.{generations[-1]}")):
            return False
        path = self.dir / f"{name}.{generations[-1] + 1 if generations else 0}"
        if not create_once(path, self.owner):  # of shards racing for it, one wins
            return False
        self.held[name] = path
        return True

    def release(self, name: str) -> None:
        """Done with `name`: its claim stays (a finished batch is known from its records), no longer held."""
        self.held.pop(name, None)

    def _alive(self, claim: Path) -> bool:
        try:
            owner = claim.read_text()
        except FileNotFoundError:  # given back while we looked
            return False
        if owner == self.owner:
            return True
        _, host, pid, _ = owner.split(":")
        if host == self.host and not pid_running(int(pid)):
            return False
        heartbeat = self.dir / "alive" / owner.replace(":", "_")
        try:
            return time.time() - heartbeat.stat().st_mtime < STALE_S
        except FileNotFoundError:
            return False


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
