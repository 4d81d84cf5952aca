"""Graceful stops: the first Ctrl-C or SIGTERM asks for a stop at the next safe point, a second one stops at once."""

import os
import signal
import time

import pytest

from vlm_eval import stopping


def test_the_first_signal_asks_for_a_stop_and_the_second_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with stopping.stop_gracefully():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert stopping.requested()
        with pytest.raises(KeyboardInterrupt):
            stopping.stop_if_requested()  # what a safe point does
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert not stopping.requested() and signal.getsignal(signal.SIGINT) is before  # handlers given back
