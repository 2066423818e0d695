"""The conversation with a run's agents: Hello, Configure and Ready, clock pings, heartbeats, liveness, Stop.

:class:`AgentSession` knows the agents of one run (their handles, what they said, their clock
offsets) and pumps the controller's socket while it waits for them. It reads no file, starts
no process and decides nothing about samples: the :class:`~testbed.run.controller.Controller`
composes it with the fleet (which starts the processes) and the :class:`~testbed.run.issuer.Issuer`.
Every wait is on the injected clock, so the rules are tested on a fake clock and transport.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from agents import protocol as p
from testbed.core.clock import Clock
from testbed.core.config import TimeoutSpec
from testbed.core.errors import AgentLostError, AgentStartError, RunProtocolError, TestbedError
from testbed.devices.launch import AgentHandle
from testbed.run.rows import Issued, clock_offset_ns
from testbed.run.transport import Received, Rejected

log = logging.getLogger(__name__)
#: rejected messages logged per reason before the log goes quiet (the counts stay exact)
REJECT_LOG_LIMIT = 5

NS = 1_000_000_000
PINGS = 16  # clock-offset round trips per agent
REAP_NS = 20_000_000  # how often a running agent's process is checked for an exit (20 ms)
PING_GAP_S = 0.003  # between them


class Transport(Protocol):
    """What the session needs of the controller's socket (:class:`~testbed.run.transport.ZmqTransport`)."""

    def send(self, agent_id: str, msg: Any) -> None:
        """Send a control message to one agent."""

    def recv(self, timeout_s: float, spin: bool = False) -> Received | None:
        """The next message from any agent, or None after ``timeout_s``."""


@dataclass
class AgentState:
    """One agent of the run: its process handle and what it has said."""

    device_id: str
    tier: str
    handle: AgentHandle
    hello: p.Hello | None = None
    ready: p.Ready | None = None
    last_heard_ns: int = 0
    offset_ns: int = 0
    rtt_ns: int = 0
    pings: list[tuple[int, int, int]] = field(default_factory=list)
    pings_end: list[tuple[int, int, int]] = field(default_factory=list)  # the second round, after the samples
    offset_end_ns: int | None = None
    rtt_end_ns: int | None = None


def _has_pings(agent: AgentState, n: int, end: bool = False) -> bool:
    return len(agent.pings_end if end else agent.pings) >= n


class AgentSession:
    """The agents of one run and the control messages exchanged with them.

    ``where``: the experiment file, named in timeout errors. ``on_window``: called with each
    energy window that arrives while the session waits for something else.
    """

    def __init__(self, transport: Transport, clock: Clock, timeouts: TimeoutSpec, where: str = "the experiment",
                 on_window: Callable[[p.EnergyWindow], object] = lambda _: None):
        self.transport = transport
        self.clock = clock
        self.timeouts = timeouts
        self.where = where
        self.on_window = on_window
        self.agents: dict[str, AgentState] = {}
        self.flushed: set[str] = set()
        self.last_heartbeat_ns = 0
        self._last_reap_ns = -REAP_NS  # when the agents' processes were last checked
        self.rejected: Counter[str] = Counter()  # reason -> messages the run did not act on
        self.on_limited: Callable[[p.Limited], object] = lambda _: None  # an agent applied a CPU step

    # ------------------------------------------------------------------ agents

    def add(self, device_id: str, tier: str, handle: AgentHandle) -> AgentState:
        """An agent whose process was just started."""
        a = AgentState(device_id, tier, handle, last_heard_ns=self.clock.monotonic_ns())
        self.agents[device_id] = a
        return a

    def tier_agents(self, tier: str) -> list[AgentState]:
        """The agents of ``tier``, in the experiment's order of its devices."""
        return [a for a in self.agents.values() if a.tier == tier]

    def note_heard(self, agent_id: str) -> None:
        """The agent just spoke (any message counts as a sign of life)."""
        if agent_id in self.agents:
            self.agents[agent_id].last_heard_ns = self.clock.monotonic_ns()

    def send(self, a: AgentState, msg: Any) -> None:
        """Send ``msg`` to ``a``; a broken connection is the agent lost."""
        try:
            self.transport.send(a.device_id, msg)
        except TestbedError as e:
            raise self.lost(a, e) from e

    # ------------------------------------------------------------------ receiving

    def recv(self, timeout_s: float, spin: bool = False) -> Received | None:
        """The next message from one of this run's agents, or None after ``timeout_s``.

        What no agent of the run could have sent (an undecodable frame, an identity the run did not
        start, a Result whose sender is not the agent its last stage names) is counted in
        ``rejected``, logged (the first few of each reason) and skipped: it neither ends the run nor
        reaches a row.
        """
        deadline = self.clock.monotonic_ns() + int(timeout_s * NS)
        while True:
            got = self.transport.recv(max(0.0, (deadline - self.clock.monotonic_ns()) / NS), spin)
            if got is None:
                return None
            reason = self._rejection(got)
            if reason is None and isinstance(got.msg, p.Limited):  # whatever the run waits for meanwhile
                self.note_heard(got.agent_id)
                self.on_limited(got.msg)
                continue
            if reason is None:
                return got
            self.rejected[reason] += 1
            if self.rejected[reason] <= REJECT_LOG_LIMIT:
                log.warning("ignored a message from %r: %s", got.agent_id, reason)
            if self.clock.monotonic_ns() >= deadline:
                return None

    def _rejection(self, got: Received) -> str | None:
        msg = got.msg
        if isinstance(msg, Rejected):
            return msg.reason.split(":")[0]
        a = self.agents.get(got.agent_id)
        if a is None:
            return f"{msg.KIND} from an identity this run did not start"
        if isinstance(msg, p.Result) and (msg.agent_id != got.agent_id or not msg.stages
                                          or msg.stages[-1].device != got.agent_id or msg.stages[-1].tier != a.tier):
            return "a Result its sender did not finish"
        return None

    # ------------------------------------------------------------------ waiting

    def wait_for(self, what: str, timeout_s: float, done: Callable[[], bool], on_msg: Callable[[Received], None],
                 poll_s: float = 0.05, waiting_on: list[str] | None = None) -> None:
        """Pump control messages until ``done()`` or the timeout; dead agents fail fast.

        ``done()`` is asked again at least every ``poll_s``, also when no message arrives.
        ``waiting_on``: the agents a timeout names (default: every agent whose ``what`` is not done).
        """
        deadline = self.clock.monotonic_ns() + int(timeout_s * NS)
        while not done():
            for a in self.agents.values():
                code = a.handle.returncode()
                if code is not None:
                    raise AgentStartError(f"agent {a.device_id} ({a.tier}) exited with status {code} while "
                                          f"waiting for {what}; last lines of {a.handle.log_path}:\n"
                                          f"{a.handle.log_tail()}")
            if self.clock.monotonic_ns() > deadline:
                missing = waiting_on or [a.device_id for a in self.agents.values() if not self._phase_done(what, a)]
                tails = "\n".join(f"--- {d}:\n{self.agents[d].handle.log_tail(8)}" for d in missing)
                raise AgentStartError(f"no {what} from {', '.join(missing)} within {timeout_s:.0f} s "
                                      f"(timeouts.{'hello_s' if what in ('Hello', 'Pong') else 'configure_s'} in "
                                      f"{self.where}); their logs:\n{tails}")
            self.heartbeat()  # agents give up on a silent controller, also while they load or measure idle
            got = self.recv(poll_s)
            if got is not None:
                self.note_heard(got.agent_id)
                if isinstance(got.msg, p.EnergyWindow):
                    self.on_window(got.msg)
                else:
                    on_msg(got)

    def _phase_done(self, what: str, a: AgentState) -> bool:
        return {"Hello": a.hello is not None, "Ready": a.ready is not None,
                "Pong": len(a.pings) >= PINGS, "Flushed": a.device_id in self.flushed}[what]

    def _past(self, mono_ns: int) -> bool:
        return self.clock.monotonic_ns() >= mono_ns

    # ------------------------------------------------------------------ phases

    def await_hellos(self) -> None:
        """Every agent's Hello: the same protocol, the tier the inventory gives it."""
        def on_msg(got: Received) -> None:
            agent_id, msg = got.agent_id, got.msg
            if isinstance(msg, p.Hello):
                a = self.agents[agent_id]  # recv admits only the run's agents
                if msg.protocol_version != p.PROTOCOL_VERSION:
                    raise RunProtocolError(f"agent {agent_id} speaks protocol {msg.protocol_version}, the controller "
                                           f"{p.PROTOCOL_VERSION}; deploy the same agents/ version to every device")
                if msg.tier != a.tier:
                    raise RunProtocolError(f"agent {agent_id} says it is {msg.tier}, the inventory says {a.tier}")
                a.hello = msg

        self.wait_for("Hello", self.timeouts.hello_s, lambda: all(a.hello for a in self.agents.values()), on_msg)

    def configure(self, messages: dict[str, p.Configure], timeout_s: float) -> None:
        """Send each agent its Configure (by device id) and wait until every one is Ready."""
        for a in self.agents.values():
            a.ready = None
        for device_id, msg in messages.items():
            self.transport.send(device_id, msg)

        def on_msg(got: Received) -> None:
            if isinstance(got.msg, p.Ready):
                self.agents[got.agent_id].ready = got.msg
            elif isinstance(got.msg, p.Failure):
                raise AgentStartError(f"agent {got.agent_id} could not load its partition: {got.msg.what}")

        self.wait_for("Ready", timeout_s, lambda: all(a.ready for a in self.agents.values()), on_msg)

    def align_clocks(self, end: bool = False) -> None:
        """Estimate each agent's clock offset from PINGS round trips, one agent at a time, PING_GAP_S apart.

        The min-RTT round trip wins (its error is at most half of it). One agent at a time, so no Pong
        waits behind another's decode; spread out, so a CPU-capped agent (throttled for a while after
        loading its partition) answers some of them right away. ``end``: again after the samples, into
        ``pings_end`` / ``offset_end_ns`` (the rows keep the offset measured before them; the two give
        the drift).
        """
        sent: dict[tuple[str, int], int] = {}

        def on_msg(got: Received) -> None:
            if isinstance(got.msg, p.Pong):
                t0 = sent.pop((got.agent_id, got.msg.seq), None)
                if t0 is not None:
                    a = self.agents[got.agent_id]
                    (a.pings_end if end else a.pings).append((t0, got.msg.t_ns, got.wall_ns))

        for a in self.agents.values():
            if end:
                a.pings_end.clear()
            base = PINGS if end else 0  # Ping seqs of the second round differ from the first's
            for k in range(PINGS):
                if k:
                    pause = self.clock.monotonic_ns() + int(PING_GAP_S * NS)
                    self.wait_for("Pong", self.timeouts.hello_s, partial(self._past, pause), on_msg,
                                  poll_s=PING_GAP_S / 3, waiting_on=[a.device_id])
                sent[(a.device_id, base + k)] = self.clock.time_ns()
                self.send(a, p.Ping(base + k))
                self.wait_for("Pong", self.timeouts.hello_s, partial(_has_pings, a, k + 1, end), on_msg,
                              waiting_on=[a.device_id])
            if end:
                a.offset_end_ns, a.rtt_end_ns = clock_offset_ns(a.pings_end)
            else:
                a.offset_ns, a.rtt_ns = clock_offset_ns(a.pings)

    def flush(self, seq: int, on_msg: Callable[[Received], None]) -> None:
        """Ask every agent to close its open energy window (Flush ``seq``) and wait for every Flushed."""
        self.flushed.clear()
        for a in self.agents.values():
            self.send(a, p.Flush(seq))

        def on_flushed(got: Received) -> None:
            if isinstance(got.msg, p.Flushed) and got.msg.seq == seq:
                self.flushed.add(got.agent_id)
            elif isinstance(got.msg, p.Failure):
                raise self.failed(got.agent_id, got.msg)
            else:
                on_msg(got)

        self.wait_for("Flushed", self.timeouts.configure_s, lambda: len(self.flushed) == len(self.agents), on_flushed)

    # ------------------------------------------------------------------ liveness

    def heartbeat(self) -> None:
        """Send every agent that said Hello a heartbeat, when one is due."""
        now = self.clock.monotonic_ns()
        if now - self.last_heartbeat_ns >= int(self.timeouts.heartbeat_s * NS):
            for a in self.agents.values():
                if a.hello is not None:  # the ROUTER cannot address an agent before it connects
                    self.send(a, p.Heartbeat("controller", self.clock.time_ns()))
            self.last_heartbeat_ns = now

    def keepalive(self, in_flight: dict[int, Issued]) -> None:
        """Send heartbeats; fail on a dead or silent agent, or a sample stuck too long."""
        now = self.clock.monotonic_ns()
        hb_ns = int(self.timeouts.heartbeat_s * NS)
        reap = now - self._last_reap_ns >= REAP_NS  # waitpid on every agent costs more than a sample at 3,000/s
        if reap:
            self._last_reap_ns = now
        # liveness is a matter of heartbeats: looking at every agent with the reaping is often enough, and
        # looking at 32 of them on every message cost the controller more than the message itself
        for a in self.agents.values() if reap else ():
            code = a.handle.returncode() if reap else None
            if code is not None:
                raise AgentLostError(a.device_id, f"process exited with status {code} during the run",
                                     a.handle.log_tail())
            silent = now - a.last_heard_ns
            if silent > hb_ns * self.timeouts.liveness:
                raise AgentLostError(a.device_id, f"no heartbeat for {silent / NS:.1f} s "
                                     f"({self.timeouts.liveness} x heartbeat_s={self.timeouts.heartbeat_s})",
                                     a.handle.log_tail())
        self.heartbeat()
        if in_flight:  # issued in time order and popped as answered: the first left is the oldest
            oldest = next(iter(in_flight.values()))
            waited = (now - oldest.issue_mono_ns) / NS
            if waited > self.timeouts.sample_s:
                raise AgentLostError("?", f"sample {oldest.sample_id} (seq {oldest.seq}) has not come back after "
                                     f"{waited:.1f} s (timeouts.sample_s={self.timeouts.sample_s}); "
                                     "check the agents' logs in the run directory")

    def failed(self, agent_id: str, msg: p.Failure) -> AgentLostError:
        """The error for an agent that reported a Failure during the run."""
        a = self.agents.get(agent_id)
        return AgentLostError(agent_id, f"failed during the run ({msg.stage}): {msg.what}",
                              a.handle.log_tail() if a else "")

    def lost(self, a: AgentState, e: Exception) -> AgentLostError:
        """The error for an agent whose connection is gone: with its exit status once its host reports it."""
        deadline = time.monotonic() + 2.0  # a real process on a real host: real time
        code = a.handle.returncode()
        while code is None and time.monotonic() < deadline:
            time.sleep(0.05)
            code = a.handle.returncode()
        why = (f"process exited with status {code} during the run" if code is not None
               else f"its connection to the controller is gone ({e})")
        return AgentLostError(a.device_id, why, a.handle.log_tail())

    # ------------------------------------------------------------------ the end

    def stop(self, status: str, on_msg: Callable[[Received], None]) -> dict[str, dict[str, Any]]:
        """Stop every agent: Stop, then its handle's stop (SIGTERM, SIGKILL); returns each one's exit and count.

        Messages that arrive meanwhile (Timelines, EnergyWindows) go to ``on_msg``. Never raises.
        """
        served: dict[str, int | None] = {}
        for a in self.agents.values():
            try:
                self.transport.send(a.device_id, p.Stop(status))
            except TestbedError:
                pass
        deadline = self.clock.monotonic_ns() + int(self.timeouts.stop_s * NS)
        while self.clock.monotonic_ns() < deadline:
            alive = any(a.handle.returncode() is None for a in self.agents.values())
            try:
                got = self.recv(0.05)
            except TestbedError:
                continue
            if got is None and not alive:
                break  # every agent has exited and nothing they sent is left unread
            if got is not None and isinstance(got.msg, p.Bye):
                served[got.agent_id] = got.msg.served
            elif got is not None:
                on_msg(got)
        return {a.device_id: {"exit_status": a.handle.stop(self.timeouts.stop_s), "served": served.get(a.device_id)}
                for a in self.agents.values()}
