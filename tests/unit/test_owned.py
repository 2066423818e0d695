"""The ownership record and clean: undo exactly what was recorded, newest first, any number of times."""

import os
import subprocess
import sys

from testbed.devices.owned import FAILED, GONE, KEPT, REMOVED, Ownership, clean, proc_starttime, undo_local


def test_record_survives_a_reload_and_clean_undoes_newest_first(tmp_path):
    rec = Ownership(tmp_path)
    rec.add("dir", {"host": "h"}, path="/w/agents")
    rec.add("file", {"host": "h"}, path="/w/agents/a.py", sha256="ab")
    rec.add("process", {"host": "h"}, pid=42, starttime="7")
    rec2 = Ownership(tmp_path)  # what a crashed run leaves is readable by a later clean
    assert [e["kind"] for e in rec2.entries] == ["dir", "file", "process"]
    order = []

    def undo(entry):
        order.append(entry["kind"])
        return GONE if entry["kind"] == "file" else REMOVED

    done = clean(rec2, undo)
    assert order == ["process", "file", "dir"]
    assert [s for _, s, _ in done] == [REMOVED, GONE, REMOVED]
    assert Ownership(tmp_path).summary() == {REMOVED: 2, GONE: 1}
    # a second clean touches nothing
    assert clean(Ownership(tmp_path), lambda e: order.append("again") or REMOVED) == []
    assert "again" not in order


def test_failures_stay_in_the_record_and_are_retried(tmp_path):
    rec = Ownership(tmp_path)
    rec.add("qdisc", {"host": "h"}, dev="eth0", qdisc="htb", handle="1:")
    rec.add("file", {"host": "h"}, path="/w/x", sha256="ab")

    def unreachable(entry):
        raise OSError("no route to host")

    done = clean(rec, unreachable, keep_files=True)
    states = {e["kind"]: s for e, s, _ in done}
    assert states == {"file": KEPT, "qdisc": FAILED}
    assert "no route to host" in Ownership(tmp_path).entries[0]["note"]
    done = clean(Ownership(tmp_path), lambda e: REMOVED)
    assert [(e["kind"], s) for e, s, _ in done] == [("qdisc", REMOVED)]  # kept files stay kept


def test_local_process_is_stopped_only_while_it_is_the_recorded_one(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        st = proc_starttime(proc.pid)
        assert st is not None
        # a pid whose start time differs is someone else's now: left alone
        assert undo_local({"kind": "process", "pid": proc.pid, "starttime": str(int(st) + 1)}) == GONE
        assert proc.poll() is None
        assert undo_local({"kind": "process", "pid": proc.pid, "starttime": st}) == REMOVED
        assert proc.wait(5) is not None
        assert undo_local({"kind": "process", "pid": proc.pid, "starttime": st}) == GONE
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
