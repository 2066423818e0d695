"""Runs on the device: answer each line on stdin with this machine's wall clock (ns), for the offset estimate."""

from __future__ import annotations

import sys
import time

from testbed.devices.helpers.prelude import say

for _ in sys.stdin:
    say(time.time_ns())
