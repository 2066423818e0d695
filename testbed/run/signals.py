"""Ctrl-C during teardown: counted, not obeyed, so the rows already measured reach the disk."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class Deferred:
    """How many interrupts arrived while they were deferred."""

    count: int = 0


@contextmanager
def interrupts_deferred() -> Iterator[Deferred]:
    """Inside the block SIGINT is counted instead of raising KeyboardInterrupt (main thread only).

    Teardown (stop the agents, write the rows, the manifest) takes at most its timeouts; a second
    Ctrl-C in the middle of it used to lose the rows not yet flushed and leave the manifest
    ``running``. Outside the main thread, where no handler can be set, the block runs as it is.
    """
    seen = Deferred()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def count(signum: int, frame: Any) -> None:
        seen.count += 1

    previous = signal.signal(signal.SIGINT, count)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Latch:
    """A Ctrl-C that arrived and has not yet stopped the run."""

    pending: bool = False


LATCH = Latch()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt for a Ctrl-C whose own KeyboardInterrupt was swallowed.

    Python raises a signal's KeyboardInterrupt wherever the main thread is; when that is inside a
    C extension's cleanup (pyzmq freeing a frame), the exception is printed as "ignored" and the run
    goes on as if nothing was pressed. The run's loops call this, so the press is obeyed anyway.
    """
    if LATCH.pending:
        LATCH.pending = False
        raise KeyboardInterrupt


@contextmanager
def interrupts_latched() -> Iterator[Latch]:
    """Inside the block SIGINT raises KeyboardInterrupt as usual and is also latched (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield LATCH
        return

    def latch(signum: int, frame: Any) -> None:
        LATCH.pending = True
        raise KeyboardInterrupt

    LATCH.pending = False
    previous = signal.signal(signal.SIGINT, latch)
    try:
        yield LATCH
    finally:
        signal.signal(signal.SIGINT, previous)
        LATCH.pending = False
