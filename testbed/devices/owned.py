"""The ownership record: every process, file, directory and qdisc a run creates, and `clean`.

``<run_dir>/owned.json`` is rewritten (atomically) the moment something is created, so a
crash or Ctrl-C still leaves a record of it. Each entry carries what is needed to come back
to it (the SSH target, or ``local``) and what identifies it as ours: a process by pid *and*
start time (a reused pid is someone else's), a file by its sha256 (a changed file is someone
else's), a qdisc by the handle and kind we installed. :func:`clean` undoes the live entries
in reverse order, marks each ``removed`` or ``gone``, and touches nothing else; it can run any
number of times.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECORD = "owned.json"
FORMAT = 1
LIVE, REMOVED, GONE, KEPT, FAILED = "live", "removed", "gone", "kept", "failed"


class Ownership:
    """The record of one run directory."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RECORD
        self.entries: list[dict[str, Any]] = []
        self.unsaved: str | None = None  # why the last save failed (a full disk), else None
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            self.entries = list(data.get("entries", []))

    def add(self, kind: str, where: dict[str, Any], **what: Any) -> int:
        """Record something just created; returns its index. ``where``: SSH target dict or {'local': True}."""
        self.entries.append({"kind": kind, "where": where, "state": LIVE,
                             "created_at": datetime.now(UTC).isoformat(), **what})
        self.save()
        return len(self.entries) - 1

    def mark(self, index: int, state: str, note: str | None = None) -> None:
        """Change an entry's state (removed, gone, kept, failed) and save."""
        self.entries[index]["state"] = state
        if note:
            self.entries[index]["note"] = note
        self.save()

    def live(self) -> list[int]:
        """Indices of entries not yet undone, newest first."""
        return [i for i in range(len(self.entries) - 1, -1, -1) if self.entries[i]["state"] in (LIVE, FAILED)]

    def save(self) -> None:
        """Write the record atomically; where the disk refuses (full), keep it in memory and say so in ``unsaved``.

        The next save tries again; a run's teardown reports an ``unsaved`` record among its problems.
        """
        tmp = self.path.with_suffix(".json.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"format": FORMAT, "entries": self.entries}, indent=1))
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            self.unsaved = f"ownership record {self.path} not written: {e.strerror or e}"
        else:
            self.unsaved = None

    def summary(self) -> dict[str, int]:
        """Entries per state."""
        out: dict[str, int] = {}
        for e in self.entries:
            out[e["state"]] = out.get(e["state"], 0) + 1
        return out


Undo = Callable[[dict[str, Any]], str]
"""Undoes one entry; returns ``removed`` or ``gone`` (it was not there, or no longer ours)."""


def clean(record: Ownership, undo: Undo, keep_files: bool = False) -> list[tuple[dict[str, Any], str, str]]:
    """Undo every live entry, newest first; returns (entry, state, note) for each one touched.

    An entry that cannot be undone now (device unreachable) stays ``failed`` with the reason,
    and a later clean tries it again. ``keep_files`` leaves deployed files (the next run's cache).
    """
    done = []
    for i in record.live():
        entry = record.entries[i]
        if keep_files and entry["kind"] in ("file", "dir"):
            record.mark(i, KEPT, "kept (--keep-files)")
            done.append((entry, KEPT, "kept"))
            continue
        try:
            state = undo(entry)
            note = ""
        except Exception as e:  # noqa: BLE001 - every failure is recorded and retried by the next clean
            state, note = FAILED, f"{type(e).__name__}: {e}"
        record.mark(i, state, note or None)
        done.append((entry, state, note))
    return done


def proc_starttime(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat``: start time in clock ticks since boot.

    None when there is no such process, or only a zombie (it exited; its parent has not waited).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, ValueError, IndexError):
        return None


def undo_local(entry: dict[str, Any]) -> str:
    """Undo an entry on this machine: stop a process that is still the one recorded (pid and start time)."""
    import signal
    import time

    if entry["kind"] != "process":
        raise ValueError(f"local entries are processes, not {entry['kind']!r}")
    pid = int(entry["pid"])
    if entry.get("starttime") is None or proc_starttime(pid) != entry["starttime"]:
        return GONE  # exited, or the pid now belongs to another process
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return REMOVED
        for _ in range(30):
            time.sleep(0.1)
            if proc_starttime(pid) != entry["starttime"]:
                return REMOVED
    return REMOVED
