"""Where a run's time goes: wall time by phase (data, model, scoring, writing, ...).

Phases nest, and each second counts for the innermost phase open at the time, so the phases add up to
the clock's lifetime: the ensemble's scoring inside the attack counts as scoring, not as model time.
The clock only reads `time.perf_counter` on entering and leaving a phase (a few microseconds), so it
always runs; `python -m vlm_eval ... --timings FILE` restarts it for the run, times the imports too and
writes what it measured (scripts/bench_pipeline.py).
"""

from __future__ import annotations

import builtins
import json
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# The phases of a run. OTHER is time in no named phase: planning, checks, progress bookkeeping.
DATA, MODEL_LOADING, MODEL, SCORING, SEMANTIC, WRITING, OTHER = (
    "data", "model loading", "model", "scoring", "semantic checks", "writing", "other")
IMPORTS = "imports"  # modules loaded by import statements (counted inside `imports_timed` only)


class Clock:
    """Wall time by phase, on the thread that (re)started the clock (other threads' phases are not counted)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.epoch = time.time()  # when the clock started, to set against the process's own start
        self.seconds: dict[str, float] = defaultdict(float)
        self._open = [OTHER]
        self._since = time.perf_counter()
        self.thread = threading.get_ident()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside the block for `name` (less the time of phases opened inside it)."""
        if threading.get_ident() != self.thread:
            yield
            return
        self._switch()
        self._open.append(name)
        try:
            yield
        finally:
            self._switch()
            self._open.pop()

    def _switch(self) -> None:
        now = time.perf_counter()
        self.seconds[self._open[-1]] += now - self._since
        self._since = now

    def report(self) -> dict[str, float]:
        """Seconds by phase so far, the phase open now included."""
        self._switch()
        return dict(self.seconds)


CLOCK = Clock()
phase = CLOCK.phase


@contextmanager
def imports_timed(clock: Clock = CLOCK) -> Iterator[None]:
    """Inside the block, count the time of every import statement that loads modules as `imports` (the
    toolkit imports torch, transformers and open_clip on first use, inside other phases)."""
    original = builtins.__import__
    depth = 0

    def timed_import(*args, **kwargs):
        nonlocal depth
        if depth or threading.get_ident() != clock.thread:  # an import inside an import is already counted
            return original(*args, **kwargs)
        depth += 1
        try:
            with clock.phase(IMPORTS):
                return original(*args, **kwargs)
        finally:
            depth -= 1

    builtins.__import__ = timed_import
    try:
        yield
    finally:
        builtins.__import__ = original


@contextmanager
def timings_to(path: Path, clock: Clock = CLOCK) -> Iterator[None]:
    """Time the block by phase, from a restarted clock and with its imports, and write the seconds to `path`
    as JSON, however the block ends (`--timings FILE`); prints them as one line."""
    clock.restart()
    try:
        with imports_timed(clock):
            yield
    finally:
        seconds = clock.report()
        total = sum(seconds.values())
        path.write_text(json.dumps({"clock_started_at": clock.epoch, "total_s": total, "seconds": seconds}, indent=2)
                        + "\n")
        shares = sorted(seconds.items(), key=lambda item: -item[1])
        print(f"time {total:.1f} s: " + ", ".join(f"{name} {100 * s / total:.1f} %" for name, s in shares),
              file=sys.stderr)
