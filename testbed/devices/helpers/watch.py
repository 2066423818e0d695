"""Runs on the device for the whole run: returns when the agent's process is gone, printing its exit status.

The status comes from the exit file the agent's wrapper writes; -9 when it was killed before it could.
argv: pid, start time, exit file.
"""

from __future__ import annotations

import sys
import time

from testbed.devices.helpers.prelude import say, starttime


def exit_status(path: str) -> str:
    """The wrapper's exit file, waited for up to a second; ``-9`` when it never came."""
    for _ in range(10):
        try:
            with open(path) as f:
                return f.read().strip() or "-9"
        except OSError:
            time.sleep(0.1)
    return "-9"


pid, start = int(sys.argv[1]), sys.argv[2]
while starttime(pid) == start:
    time.sleep(0.2)
say(exit_status(sys.argv[3]))
