"""Graceful stops. Inside `stop_gracefully()`, the first Ctrl-C or SIGTERM (a scheduler's pre-emption)
asks the run to stop at the next safe point: the end of an attack step, whose state is then saved
for `resume`, or the end of a batch. A second one stops it at once. Either way the run stops with a
`KeyboardInterrupt`, its finished samples kept.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

_requested = False


def _ask_to_stop(signum: int, frame: object) -> None:
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True
    print("\nstopping after this attack step or batch (its state is saved); interrupt again to stop at once",
          file=sys.stderr)


@contextmanager
def stop_gracefully() -> Iterator[None]:
    """Ctrl-C and SIGTERM ask for a stop inside the block (main thread only; elsewhere nothing changes)."""
    global _requested
    _requested = False
    try:
        previous = {sig: signal.signal(sig, _ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be handled here
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested = False


def requested() -> bool:
    return _requested


def request() -> None:
    """Ask for a stop as a first signal does (tests, embedding code)."""
    global _requested
    _requested = True


def stop_if_requested() -> None:
    """At a safe point: stop the run if a stop was asked for."""
    if _requested:
        raise KeyboardInterrupt
