"""Runs on the device: is pid ours (same start time); signal its process group, and with "term" wait for it.

argv: action (``check`` or ``term``), pid, start time (``-``: any), grace seconds before SIGKILL (default 5).
One SSH command per stop.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from testbed.devices.helpers.prelude import say, starttime


def terminate(pid: int, st: str, grace: float, out: dict[str, Any]) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds for the process to go, then SIGKILL it."""
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + grace
        while time.time() < deadline and starttime(pid) == st:
            time.sleep(0.05)
        if starttime(pid) == st:
            os.killpg(pid, signal.SIGKILL)
            out["killed"] = True
        out["signalled"] = True
    except OSError as e:
        out["error"] = str(e)


def main() -> None:
    """Answer whether the process is ours, after stopping it when asked."""
    action, pid, start = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    grace = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    st = starttime(pid)
    out: dict[str, Any] = {"pid": pid, "alive": st is not None, "ours": st is not None and start in ("-", st),
                           "starttime": st}
    if out["ours"] and action == "term" and st is not None:
        terminate(pid, st, grace, out)
    say(json.dumps(out))


main()
