"""Interface byte counters: what a network interface really carried, framing and all.

psutil reads ``/proc/net/dev`` of the process's own network namespace, so an agent
started inside an emulated host's namespace counts that host's interfaces. The
counters are cumulative; :class:`ArrivalCounter` turns them into "bytes taken in
since the previous arrival", which on a link that carries only one hop's data is
that message on the wire: tensors, the protocol header, ZMTP framing, TCP/IP and
Ethernet headers, retransmissions.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil


class NicError(Exception):
    """The interface to count does not exist in this network namespace."""


def read_rx_bytes(iface: str) -> int:
    """Cumulative bytes received on ``iface`` (psutil, this process's network namespace)."""
    counters = psutil.net_io_counters(pernic=True)
    if iface not in counters:
        raise NicError(f"no interface {iface!r} in this network namespace (it has {', '.join(sorted(counters))}); "
                       "set the device's interfaces: {peer: name} in the inventory to one of those")
    return int(counters[iface].bytes_recv)


class ArrivalCounter:
    """Receive bytes of one interface between consecutive arrivals.

    ``read`` returns the cumulative rx byte count (a constructor argument so tests feed
    known steps). Counters are 64-bit on Linux; a decrease (the interface was recreated)
    is reported as -1 for that arrival rather than as a negative or bogus count.
    """

    def __init__(self, iface: str, read: Callable[[], int] | None = None):
        self.iface = iface
        self._read = read or (lambda: read_rx_bytes(iface))
        self._last = self._read()

    def arrival(self) -> int:
        """Bytes received since the previous call (or since construction)."""
        now = self._read()
        delta = now - self._last
        self._last = now
        return delta if delta >= 0 else -1
