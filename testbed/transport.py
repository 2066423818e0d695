"""The controller's ZeroMQ sockets; zmq errors become testbed errors here, once.

control: a ROUTER that every agent's DEALER connects to (Hello, heartbeats,
results). issue: one PUSH per first-tier agent, connected to its data socket.
"""

from __future__ import annotations

from typing import Any

import zmq

from agents import protocol as p
from testbed.errors import RunProtocolError, TestbedError


class TransportError(TestbedError):
    """A socket operation failed."""


class ZmqTransport:
    """ROUTER for control, PUSH sockets for issuing samples."""

    def __init__(self, bind_host: str = "127.0.0.1"):
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            port = self._router.bind_to_random_port(f"tcp://{bind_host}")
        except zmq.ZMQError as e:
            raise TransportError(f"cannot bind the controller socket on {bind_host}: {e}") from e
        self.endpoint = f"tcp://{bind_host}:{port}"
        self._push: dict[str, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)

    def recv(self, timeout_s: float) -> tuple[str, Any] | None:
        """Next control message as (agent_id, message), or None after ``timeout_s``."""
        if not self._poller.poll(max(0, int(timeout_s * 1000))):
            return None
        ident, raw = self._router.recv_multipart()
        try:
            return ident.decode(), p.decode(raw)
        except p.ProtocolError as e:
            raise RunProtocolError(f"agent {ident.decode()!r} sent a bad message: {e}") from e

    def send(self, agent_id: str, msg: Any) -> None:
        """Send a control message to one agent."""
        try:
            self._router.send_multipart([agent_id.encode(), p.encode(msg)])
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
        data = p.encode(work)
        try:
            sock.send(data, copy=False)
        except zmq.ZMQError as e:
            raise TransportError(f"cannot issue sample {work.sample_id} to {endpoint}: {e}") from e
        return len(data)

    def close(self) -> None:
        """Close every socket; idempotent."""
        for s in [self._router, *self._push.values()]:
            s.close(linger=0)
        self._push.clear()
        self._ctx.term()
