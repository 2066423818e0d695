"""Runs on the receiving end of a probed link: accept one connection, count what arrives.

argv: address to bind, timeout seconds, bytes expected (marks every 5% from 10% to 90%).
"""

from __future__ import annotations

import json
import socket
import sys
import time

from testbed.devices.helpers.prelude import cpu_ticks, say, steal_pct

srv = socket.socket()
srv.bind((sys.argv[1], 0))
srv.listen(1)
srv.settimeout(float(sys.argv[2]))
say(srv.getsockname()[1])
conn, _ = srv.accept()
conn.settimeout(float(sys.argv[2]))
expect = int(sys.argv[3]) if len(sys.argv) > 3 else 0
marks = [expect * k // 20 for k in range(2, 19)]  # every 5% from 10% to 90%: past the start-up burst, before the tail
n, first, last = 0, None, None
at: list[tuple[int, int]] = []
ticks = cpu_ticks()
while True:
    b = conn.recv(1 << 16)
    if not b:
        break
    now = time.monotonic_ns()
    first = first or now
    last = now
    n += len(b)
    while len(at) < len(marks) and expect and n >= marks[len(at)]:
        at.append((n, now))
try:
    mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
except OSError:
    mss = 0
say(json.dumps({"bytes": n, "first_ns": first, "last_ns": last, "marks": at, "mss": mss,
                "steal_pct": steal_pct(ticks, cpu_ticks())}))
