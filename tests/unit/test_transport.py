"""The controller's sockets, real ZeroMQ on 127.0.0.1: blocking and spinning waits."""

from __future__ import annotations

import time

import pytest
import zmq

from agents import protocol as p
from testbed.run.transport import ZmqTransport


@pytest.mark.parametrize("spin", [False, True])
def test_recv_times_out_then_gets_what_an_agent_sends(spin):
    t = ZmqTransport()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"edge-1")
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(t.endpoint)
    try:
        t0 = time.monotonic()
        assert t.recv(0.05, spin=spin) is None
        assert time.monotonic() - t0 >= 0.045  # it waited out the timeout, spinning or not
        sent_ns = time.time_ns()
        dealer.send_multipart(p.encode(p.Heartbeat("edge-1", 123)))
        got = t.recv(5.0, spin=spin)
        assert got is not None and got.agent_id == "edge-1" and got.msg == p.Heartbeat("edge-1", 123)
        assert got.wall_ns >= sent_ns  # stamped on arrival
        assert t.recv(0.0, spin=spin) is None  # nothing left
    finally:
        dealer.close()
        ctx.term()
        t.close()
