"""Clocks are passed in, so tests never patch time or sleep on the wall clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for durations, wall time for cross-device timestamps."""

    def monotonic_ns(self) -> int:
        """Monotonic nanoseconds (durations, timeouts)."""
        ...

    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the epoch (aligned with agents' stage stamps)."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic_ns(self) -> int:
        """``time.monotonic_ns``."""
        return time.monotonic_ns()

    def time_ns(self) -> int:
        """``time.time_ns``."""
        return time.time_ns()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000):
        self.now = start_ns

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self.now += int(seconds * 1e9)

    def monotonic_ns(self) -> int:
        """Current fake time."""
        return self.now

    def time_ns(self) -> int:
        """Current fake time."""
        return self.now
