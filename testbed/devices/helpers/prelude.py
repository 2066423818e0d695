"""Shared by the device-side helpers: answer one line, a process's start time, the CPU time stolen."""

from __future__ import annotations

import sys


def say(x: object) -> None:
    """Answer one line on stdout, flushed (the controller reads the last line as JSON)."""
    sys.stdout.write(str(x) + "\n")
    sys.stdout.flush()


def starttime(pid: int) -> str | None:
    """The start time of ``pid`` (which with the pid identifies a process); None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rindex(")") + 2:].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, ValueError, IndexError):
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[7] if len(v) > 7 else 0), sum(v[:8])
    except (OSError, ValueError):
        return None


def steal_pct(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Share of CPU time the hypervisor took from this (virtual) machine between two :func:`cpu_ticks`."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round(100.0 * (b[0] - a[0]) / (b[1] - a[1]), 2)
