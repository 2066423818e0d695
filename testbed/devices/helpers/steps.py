"""Runs on the device: each argv in turn, stopping at the first failure; then the read-back commands.

stdin: JSON [steps, show]. One SSH command per device for all its tc steps.
"""

from __future__ import annotations

import json
import subprocess
import sys

from testbed.devices.helpers.prelude import say

steps, show = json.load(sys.stdin)
done = []
for argv in steps:
    p = subprocess.run(argv, capture_output=True, text=True)
    done.append({"argv": argv, "rc": p.returncode, "err": p.stderr.strip()[-400:]})
    if p.returncode != 0:
        break
shown = "".join(subprocess.run(a, stdout=subprocess.PIPE, text=True).stdout for a in show or [])
say(json.dumps({"steps": done, "show": shown}))
