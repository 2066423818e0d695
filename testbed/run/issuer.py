"""Issuing samples: pacing, concurrency, the samples in flight, their answers.

:class:`Issuer` sends each sample of a plan to the first tier's data socket as a Work with
the policy's thresholds, no faster than ``run.interval_ms`` and no more than
``run.concurrency`` at once, and hands each answer to the collector and the policy. It owns
the run's issue order (the ``seq`` column) and the time base of link schedules (the first
issue). Everything it waits on is the injected clock and transport.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from agents import protocol as p
from testbed.core.clock import Clock
from testbed.core.config import RunSpec
from testbed.formats.bundle import Samples
from testbed.policies import Policy
from testbed.run.collector import Collector
from testbed.run.resume import Replay
from testbed.run.rows import Issued, confidences
from testbed.run.session import NS, AgentSession
from testbed.run.signals import raise_if_interrupted
from testbed.run.transport import Received


@dataclass(frozen=True)
class Progress:
    """Reported to the caller after every finished sample."""

    policy: str
    phase: str
    done: int
    total: int


class Sources:
    """The first tier's devices, which take the samples (``topology.issue``), and each one's policy state.

    ``mode``: ``round-robin`` (in turn by issue order), ``least-loaded`` (the device with the
    fewest samples in flight; ties in turn) or ``hash`` (by sample id: a sample always goes to
    the same device). ``policy``: one policy for all of them, or one per device (a learning
    policy that learns on each device alone: ``topology.policy_state: per-source``).
    """

    def __init__(self, agents: list[Any], policy: Policy | dict[str, Policy], assigned: dict[int, int] | None = None,
                 mode: str = "round-robin", assign: str = "round-robin", later: list[list[str]] | None = None):
        self.agents = agents
        self.policy = policy
        self.assigned = assigned or {}  # seq -> agent index where not in turn (server: each arrival's device)
        self.mode = mode
        self.assign = assign  # topology.assign: per sample (least-loaded, hash) or the agents' configured devices
        self.later = later or []  # device ids of each later tier, in order
        self.load = {a.device_id: 0 for a in agents}  # samples in flight per device (on the first tier, or routed)
        self.routes: dict[int, list[str]] = {}  # seq -> the later tiers' devices it was routed to
        self.name = policy.name if isinstance(policy, Policy) else next(iter(policy.values())).name

    def at(self, seq: int) -> tuple[str, str]:
        """The device sample ``seq`` goes to in turn (or as assigned), and its data endpoint."""
        a = self.agents[self.assigned.get(seq, seq % len(self.agents))]
        return a.device_id, a.hello.data_endpoint

    def pick(self, seq: int, sample_id: int) -> tuple[str, str]:
        """The device sample ``seq`` (of ``sample_id``) goes to under the mode, and its endpoint; counted in flight."""
        n = len(self.agents)
        if seq in self.assigned or self.mode == "round-robin":
            device, endpoint = self.at(seq)
        else:
            if self.mode == "hash":
                a = self.agents[zlib.crc32(int(sample_id).to_bytes(8, "little", signed=True)) % n]
            else:
                k = min(range(n), key=lambda i: (self.load[self.agents[i].device_id], (i - seq) % n))
                a = self.agents[k]
            device, endpoint = a.device_id, a.hello.data_endpoint
        self.load[device] += 1
        return device, endpoint

    def route(self, seq: int, sample_id: int) -> list[str]:
        """Sample ``seq``'s device on each later tier, where the controller routes per sample (else [])."""
        if self.assign not in ("least-loaded", "hash") or not self.later:
            return []
        out = []
        for k, devices in enumerate(self.later):
            n = len(devices)
            if self.assign == "hash":
                out.append(devices[zlib.crc32(f"{k}:{sample_id}".encode()) % n])
            else:
                k = min(range(n), key=lambda i: (self.load.get(devices[i], 0), (i - seq) % n))
                out.append(devices[k])
        for d in out:
            self.load[d] = self.load.get(d, 0) + 1
        self.routes[seq] = out
        return out

    def done(self, device: str, seq: int | None = None) -> None:
        """Sample ``seq`` of ``device`` came back: it no longer loads its device nor those it was routed to."""
        for d in [device, *(self.routes.pop(seq, []) if seq is not None else [])]:
            if self.load.get(d, 0) > 0:
                self.load[d] -= 1

    def policy_of(self, device: str) -> Policy:
        """The policy state the samples of ``device`` follow."""
        return self.policy if isinstance(self.policy, Policy) else self.policy[device]


def schedule(run: RunSpec, n: int, sources: int,
             rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """When each of ``n`` samples is due (ns after the phase starts) and, for server, which source takes it.

    closed with ``interval_ms``: on a grid (no drift: the k-th is due k intervals after the first);
    closed without it and single-stream: None, each is due when a slot frees (its issue); offline:
    all due at the start; server: a Poisson process of rate ``sources x rate_per_s`` whose arrivals
    go to a source drawn uniformly, which makes each source's arrivals Poisson at ``rate_per_s``
    (thinning).
    """
    if run.scenario == "server":
        rate = (run.rate_per_s or 1.0) * sources
        gaps = rng.exponential(1e9 / rate, n)
        return np.concatenate([[0.0], np.cumsum(gaps)[:-1]]).astype(np.int64), rng.integers(0, sources, n)
    if run.scenario == "closed" and run.interval_ms > 0:
        return (np.arange(n) * run.interval_ms * 1e6).astype(np.int64), None
    if run.scenario == "offline":
        return np.zeros(n, np.int64), None
    return None, None


def in_flight_limit(run: RunSpec) -> int:
    """Samples outstanding at once: concurrency (closed), one (single-stream), max_in_flight (server, offline)."""
    return {"closed": run.concurrency, "single-stream": 1}.get(run.scenario, run.max_in_flight)


class DataTransport(Protocol):
    """What the issuer needs of the transport besides the session's control messages."""

    def issue(self, endpoint: str, work: p.Work) -> int:
        """Send a Work to a data socket; returns the bytes sent."""

    def recv(self, timeout_s: float, spin: bool = False) -> Received | None:
        """The next message from any agent, or None after ``timeout_s``."""


class Issuer:
    """Issues the samples of one run in order, paced, with a bounded number in flight."""

    def __init__(self, session: AgentSession, transport: DataTransport, collector: Collector, clock: Clock,
                 run: RunSpec, on_tick: Callable[[], None] = lambda: None,
                 on_progress: Callable[[Progress], None] = lambda _: None, seed: int = 0):
        self.session = session
        self.transport = transport
        self.collector = collector
        self.clock = clock
        self.run = run
        self.on_tick = on_tick  # between issues: due link-schedule steps
        self.on_progress = on_progress
        self.seq = 0  # issue order over the whole run: the seq column
        self.next_issue_ns = 0  # the next sample leaves no earlier than this (monotonic): its scheduled time
        self.limit = in_flight_limit(run)
        self.seed = seed  # of the server scenario's arrivals
        self.first_issue_ns: int | None = None  # link schedules count from it
        self._flush_seq = 0
        self.replay: Replay | None = None  # the rows on disk of a resumed run, played back to the policies
        self.issued = 0  # plan entries the last issue_all sent (all of them unless stopped)
        self.issue_mode = "round-robin"  # how samples are spread over the first tier's devices (topology.issue)
        self.assign_mode = "round-robin"  # how they are routed over the later tiers' devices (topology.assign)

    def schedule_t(self) -> float:
        """Seconds since the first sample was issued (0 before): the time base of link schedules."""
        return 0.0 if self.first_issue_ns is None else (self.clock.monotonic_ns() - self.first_issue_ns) / NS

    def _issue(self, sources: Sources, rng: np.random.Generator, samples: Samples, phase: str, idx: int,
               due_mono_ns: int) -> Issued:
        tensors = samples.tensors(idx)
        sample_id = int(samples.sample_id[idx])
        device, endpoint = sources.pick(self.seq, sample_id)
        policy = sources.policy_of(device)
        work = p.Work(self.seq, sample_id, tensors, policy.thresholds(sample_id, rng), [], policy.measure,
                      policy.split(sample_id), policy.pools(sample_id), sources.route(self.seq, sample_id))
        issued = Issued(self.seq, sample_id, int(samples.label[idx]), phase, policy.name,
                        self.clock.monotonic_ns(), self.clock.time_ns(),
                        sum(int(t.nbytes) for t in tensors.values()), policy.choice(sample_id), device,
                        min(due_mono_ns, self.clock.monotonic_ns()))
        self.seq += 1
        self.transport.issue(endpoint, work)
        return issued

    def _wait_s(self, more: bool, in_flight: int) -> float:
        wait_s = min(0.05, self.session.timeouts.heartbeat_s / 2)
        if more and in_flight < self.limit:  # paced: up to the next issue
            wait_s = min(wait_s, max(0.0, (self.next_issue_ns - self.clock.monotonic_ns()) / NS))
        return wait_s

    def issue_all(self, policy: Policy | dict[str, Policy], rng: np.random.Generator, samples: Samples,
                  plan: list[tuple[str, int]], progress: tuple[int, int] | None = None,
                  keep: bool = False, stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Issue the plan's samples, (phase, index in ``samples``) each, over the first tier's devices in turn.

        ``policy``: one, or one per first-tier device (:class:`Sources`). ``progress`` is (samples of
        this policy done before, the policy's total) for the progress bar. Returns the rows written
        when ``keep`` (the adaptive policy's warmup), else none: a long run holds no rows in memory.
        ``stop``: checked after each schedule tick; once true, no more of the plan is issued and the
        samples in flight are drained (``self.issued`` says how many of the plan went out).
        """
        before, total = progress or (0, len(plan))
        if self.first_issue_ns is None:
            self.first_issue_ns = self.clock.monotonic_ns()
        agents = self.session.tier_agents(self.collector.tiers[0])
        due, picks = schedule(self.run, len(plan), len(agents), np.random.default_rng([self.seed, self.seq]))
        later = [[a.device_id for a in self.session.tier_agents(t)] for t in self.collector.tiers[1:]]
        sources = Sources(agents, policy, None if picks is None else {self.seq + i: int(k) for i, k in
                                                                      enumerate(picks)}, self.issue_mode,
                          self.assign_mode, later)
        start_ns = max(self.clock.monotonic_ns(), self.next_issue_ns)  # a paced grid goes on across phases
        self.next_issue_ns = start_ns
        in_flight: dict[int, Issued] = {}
        written: list[dict[str, Any]] = []
        nxt, done = 0, 0
        spin = self.run.wait == "spin"
        while done < len(plan):
            raise_if_interrupted()
            while self.replay is not None and nxt < len(plan) and self.replay.has(self.seq) and not in_flight:
                phase, idx = plan[nxt]  # live samples drained first: their answers come in their place
                row = self.replay.play(self.seq, sources.policy_of(self.replay.device(self.seq) or sources.at(
                    self.seq)[0]), rng,
                                       int(samples.sample_id[idx]), phase)
                written += [row] if keep else []
                self.seq, nxt, done = self.seq + 1, nxt + 1, done + 1
                self.on_progress(Progress(sources.name, phase, before + done, total))
            if done == len(plan):
                break
            if self.replay is not None and nxt < len(plan) and not self.replay.has(self.seq):
                self.replay.observe()  # everything replayed so far came back before a live sample
            self.on_tick()
            if stop is not None and nxt < len(plan) and stop():
                plan = plan[:nxt]  # drain what is in flight, issue nothing more
            while nxt < len(plan) and len(in_flight) < self.limit and (
                    self.clock.monotonic_ns() >= self.next_issue_ns) and not (
                    self.replay is not None and self.replay.has(self.seq)):
                at = self.clock.monotonic_ns() if due is None else start_ns + int(due[nxt])
                issued = self._issue(sources, rng, samples, *plan[nxt], at)
                in_flight[issued.seq] = issued
                nxt += 1
                if due is None:
                    self.next_issue_ns = 0
                elif nxt < len(plan):
                    self.next_issue_ns = start_ns + int(due[nxt])
                else:  # the next phase's first sample keeps the interval too
                    self.next_issue_ns = start_ns + int(due[-1]) + int(self.run.interval_ms * 1e6)
            got = self.session.recv(self._wait_s(nxt < len(plan), len(in_flight)), spin=spin)
            self.session.keepalive(in_flight)
            if got is None:
                continue
            done += self._on_message(got, in_flight, sources, written if keep else None, (before + done, total))
        self.issued = len(plan)
        if self.replay is not None:
            self.replay.observe()
        if self.collector.ledger.pending:
            rows = self.flush_windows()
            written += rows if keep else []
        return written

    def _on_message(self, got: Received, in_flight: dict[int, Issued], sources: Sources,
                    written: list[dict[str, Any]] | None, progress: tuple[int, int]) -> int:
        """Handle one message during issuing; 1 when it finished a sample in flight, else 0."""
        self.session.note_heard(got.agent_id)
        msg = got.msg
        if isinstance(msg, p.Result):
            if msg.run_seq not in in_flight:
                return 0  # a late answer to a sample this run already gave up on
            answered = in_flight.pop(msg.run_seq)
            sources.done(answered.source, answered.seq)
            rows = self.collector.result(got, msg, answered)
            sources.policy_of(answered.source).observe(answered.sample_id, confidences(msg.stages))
            if written is not None:
                written += rows
            self.on_progress(Progress(sources.name, answered.phase, progress[0] + 1, progress[1]))
            return 1
        if isinstance(msg, p.EnergyWindow):
            rows = self.collector.window(msg)
            if written is not None:
                written += rows
        elif isinstance(msg, p.Failure):
            raise self.session.failed(got.agent_id, msg)
        return 0

    def settle(self, until: Callable[[], bool], timeout_s: float) -> bool:
        """With nothing in flight, handle the agents' messages until ``until()`` or ``timeout_s``; its last value."""
        deadline = self.clock.monotonic_ns() + int(timeout_s * NS)
        sources = Sources(self.session.tier_agents(self.collector.tiers[0]), Policy("settle"), None)
        while not until() and self.clock.monotonic_ns() < deadline:
            raise_if_interrupted()
            got = self.session.recv(0.02)
            self.session.keepalive({})
            if got is not None:
                self._on_message(got, {}, sources, None, (0, 0))
        return until()

    def flush_windows(self) -> list[dict[str, Any]]:
        """Ask every agent to close its open energy window and wait; returns the rows completed.

        Called at the end of each phase that left rows waiting, so no window spans two policies.
        """
        self._flush_seq += 1
        completed: list[dict[str, Any]] = []
        self.collector.sink = completed
        try:
            self.session.flush(self._flush_seq, lambda got: None)
        finally:
            self.collector.sink = None
        return completed
