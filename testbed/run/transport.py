"""The controller's ZeroMQ sockets; zmq errors become testbed errors here, once.

control: a ROUTER that every agent's DEALER connects to (Hello, heartbeats,
results). issue: one PUSH per first-tier agent, connected to its data socket.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import zmq
from zmq.auth.thread import ThreadAuthenticator

from agents import protocol as p
from testbed.core.clock import Clock, SystemClock
from testbed.core.errors import TestbedError
from testbed.run.keys import RunKeys


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

    def __init__(self, bind_host: str = "127.0.0.1", clock: Clock | None = None, keys: RunKeys | None = None):
        self._clock = clock or SystemClock()
        self._ctx = zmq.Context()
        self.keys = keys
        self._zap: ThreadAuthenticator | None = None
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.MAXMSGSIZE, p.MAX_CONTROLLER_BYTES)
        if keys is not None:  # CurveZMQ: only the run's agents get through (ZAP), each known by its key
            self._zap = ThreadAuthenticator(self._ctx)
            self._zap.start()
            self._zap.configure_curve_callback(domain="*", credentials_provider=_RunPeers(keys))
            self._router.setsockopt(zmq.CURVE_SERVER, 1)
            self._router.setsockopt(zmq.CURVE_SECRETKEY, keys.controller_secret.encode())
            self._router.setsockopt(zmq.CURVE_PUBLICKEY, keys.controller_public.encode())
        try:
            port = self._router.bind_to_random_port(f"tcp://{bind_host}")
        except zmq.ZMQError as e:
            raise TransportError(f"cannot bind the controller socket on {bind_host}: {e}") from e
        self.endpoint = f"tcp://{bind_host}:{port}"
        self._push: dict[str, zmq.Socket] = {}
        self._servers: dict[str, str] = {}  # data endpoint -> the public key its agent must hold
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)

    def recv(self, timeout_s: float, spin: bool = False) -> Received | None:
        """Next control message, stamped on arrival (before decoding), or None after ``timeout_s``.

        A frame that does not decode comes back as a :class:`Rejected` message (the session counts it),
        never as an exception: one hostile frame does not end a run.

        ``spin``: busy-poll the socket instead of sleeping in poll (``run.wait: spin``); the deadline is
        on the real monotonic clock, since the socket is real.
        """
        try:  # under load a message is usually waiting: take it without a poll first
            ident, *frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
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
        if self.keys is not None and (not frames or self.keys.device_of(str(frames[0].get("User-Id"))) != agent_id):
            return Received(agent_id, Rejected("an identity that is not its key's"), mono_ns, wall_ns)
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
            if self.keys is not None:
                server = self._servers.get(endpoint)
                if server is None:
                    raise TransportError(f"no public key for {endpoint}: call trust() with its device first")
                sock.setsockopt(zmq.CURVE_SERVERKEY, server.encode())
                sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.controller_secret.encode())
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.controller_public.encode())
            sock.connect(endpoint)
            self._push[endpoint] = sock
        frames = p.encode(work)
        try:
            sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as e:
            raise TransportError(f"cannot issue sample {work.sample_id} to {endpoint}: {e}") from e
        return p.wire_size(frames)

    def trust(self, endpoint: str, device_id: str) -> None:
        """Issue to ``endpoint`` only as a CURVE client of ``device_id``'s key (runs with keys; else nothing)."""
        if self.keys is not None:
            self._servers[endpoint] = self.keys.public(device_id)

    def close(self) -> None:
        """Close every socket and the ZAP handler; idempotent."""
        for s in [self._router, *self._push.values()]:
            s.close(linger=0)
        self._push.clear()
        if self._zap is not None:
            self._zap.stop()
            self._zap = None
        self._ctx.term()


class _RunPeers:
    """ZAP credentials provider: a CURVE client is admitted when its public key is one of the run's agents'."""

    def __init__(self, keys: RunKeys):
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return self.keys.device_of(key.decode()) is not None
