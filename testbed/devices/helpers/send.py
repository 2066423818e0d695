"""Runs on the sending end of a probed link: TCP connect time (a kernel round trip), then a bulk send.

argv: host, port, bytes to send.
"""

from __future__ import annotations

import json
import socket
import sys
import time

from testbed.devices.helpers.prelude import cpu_ticks, say, steal_pct

host, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic_ns()
s = socket.create_connection((host, port), timeout=30)
rtt = time.monotonic_ns() - t0
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
block = b"\0" * 65536
sent = 0
t1 = time.monotonic_ns()
ticks = cpu_ticks()
while sent < nbytes:
    sent += s.send(block[: min(len(block), nbytes - sent)])
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
say(json.dumps({"connect_ms": rtt / 1e6, "sent": sent, "send_s": (time.monotonic_ns() - t1) / 1e9,
                "steal_pct": steal_pct(ticks, cpu_ticks())}))
