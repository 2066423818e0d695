"""The controller's ZeroMQ sockets; zmq errors become testbed errors here, once.

control: a ROUTER that every agent's DEALER connects to (Hello, heartbeats,
results). issue: one PUSH per first-tier agent, connected to its data socket.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import zmq

from agents import protocol as p
from testbed.core.clock import Clock, SystemClock
from testbed.core.errors import TestbedError


class Received(NamedTuple):
    """A control message and the controller's clocks when it arrived."""

    agent_id: str
    msg: Any
    mono_ns: int
    wall_ns: int


class Rejected(NamedTuple):
    """What arrived on the control socket but is no message a run acts on: why."""

    reason: str


class TransportError(TestbedError):
    """A socket operation failed."""


class ZmqTransport:
    """ROUTER for control, PUSH sockets for issuing samples."""

    def __init__(self, bind_host: str = "127.0.0.1", clock: Clock | None = None):
        self._clock = clock or SystemClock()
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, p.MAX_CONTROLLER_BYTES)
        try:
            port = self._router.bind_to_random_port(f"tcp://{bind_host}")
        except zmq.ZMQError as e:
            raise TransportError(f"cannot bind the controller socket on {bind_host}: {e}") from e
        self.endpoint = f"tcp://{bind_host}:{port}"
        self._push: dict[str, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)

    def recv(self, timeout_s: float, spin: bool = False) -> Received | None:
        """Next control message, stamped on arrival (before decoding), or None after ``timeout_s``.

        A frame that does not decode comes back as a :class:`Rejected` message (the session counts it),
        never as an exception: one hostile frame does not end a run.

        ``spin``: busy-poll the socket instead of sleeping in poll (``run.wait: spin``); the deadline is
        on the real monotonic clock, since the socket is real.
        """
        if spin:
            end = time.monotonic_ns() + int(timeout_s * 1e9)
            while not int(self._router.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                if time.monotonic_ns() >= end:
                    return None
        elif not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        ident, *frames = self._router.recv_multipart(copy=False)
        mono_ns, wall_ns = self._clock.monotonic_ns(), self._clock.time_ns()
        agent_id = ident.bytes.decode("utf-8", errors="replace")[:64]
        try:
            return Received(agent_id, p.decode(frames), mono_ns, wall_ns)
        except p.ProtocolError as e:
            return Received(agent_id, Rejected(f"undecodable message: {str(e)[:160]}"), mono_ns, wall_ns)

    def send(self, agent_id: str, msg: Any) -> None:
        """Send a control message to one agent."""
        try:
            self._router.send_multipart([agent_id.encode(), *p.encode(msg)])
        except zmq.ZMQError as e:
            raise TransportError(f"cannot send {msg.KIND} to agent {agent_id}: {e}") from e

    def issue(self, endpoint: str, work: p.Work) -> int:
        """Push a sample to a first-tier agent's data socket; returns the encoded size."""
        sock = self._push.get(endpoint)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._push[endpoint] = sock
        frames = p.encode(work)
        try:
            sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as e:
            raise TransportError(f"cannot issue sample {work.sample_id} to {endpoint}: {e}") from e
        return p.wire_size(frames)

    def close(self) -> None:
        """Close every socket; idempotent."""
        for s in [self._router, *self._push.values()]:
            s.close(linger=0)
        self._push.clear()
        self._ctx.term()
