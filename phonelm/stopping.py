"""Stopping on a signal outside the training loop (which checkpoints on its own): SIGTERM
raised as `Terminated`, so that a script ends every stage with a message and the exit code of
the signal (130 for SIGINT, 143 for SIGTERM), keeping what it has written."""

import contextlib
import signal
import threading


class Terminated(Exception):
    """SIGTERM outside the training loop (data preparation, evaluation, generation, scoring)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises Terminated (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped(err: BaseException) -> tuple[int, str]:
    """-> (exit code, signal name) of a KeyboardInterrupt or Terminated."""
    signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
    return 128 + int(signum), signal.Signals(signum).name
