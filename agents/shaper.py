"""Userspace link shaping inside an agent: messages held for a delay (+- jitter), then released in order.

Kernels without netem (these CI machines) shape the rate with htb and leave delay and
jitter to the agents. One :class:`HeldLink` is one direction of one link; the agent keeps
three: its outgoing data link (offloads to the next tier), the Results it sends the controller,
and, on the first tier, the Work arriving from the controller.

Messages leave in the order they were held, as over one TCP stream: a message whose draw
of jitter is short waits for the one before it. Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import collections
import random
from typing import Any


class HeldLink:
    """One direction of a link shaped in user space: hold, then release when due, in order."""

    def __init__(self, seed: str, delay_ms: float = 0.0, jitter_ms: float = 0.0):
        self._rng = random.Random(seed)
        self._q: collections.deque[tuple[float, Any]] = collections.deque()
        self.delay_ms = delay_ms
        self.jitter_ms = jitter_ms

    def set(self, delay_ms: float, jitter_ms: float) -> None:
        """New delay and jitter for what is held from now on (messages already held keep their time)."""
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"delay_ms {delay_ms} and jitter_ms {jitter_ms} must not be negative")
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms

    @property
    def active(self) -> bool:
        """True when messages are to be held (some delay or jitter is set)."""
        return bool(self.delay_ms or self.jitter_ms)

    def hold(self, item: Any, now: float) -> float:
        """Hold ``item`` from ``now``; returns the time it is due (never before the one held before it)."""
        hold_s = max(0.0, self.delay_ms + self._rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1e3
        due = max(now + hold_s, self._q[-1][0] if self._q else 0.0)
        self._q.append((due, item))
        return due

    def next_due(self) -> float | None:
        """When the first held message is due; None when nothing is held."""
        return self._q[0][0] if self._q else None

    def pop_due(self, now: float) -> list[Any]:
        """The held messages due by ``now``, in order, taken off the link."""
        out = []
        while self._q and self._q[0][0] <= now:
            out.append(self._q.popleft()[1])
        return out

    def drain(self) -> list[Any]:
        """Everything still held, in order, taken off the link (the agent is stopping)."""
        out = [item for _, item in self._q]
        self._q.clear()
        return out

    def __len__(self) -> int:
        return len(self._q)
