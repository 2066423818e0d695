"""The run: start agents, Hello, configure, align clocks, issue samples, collect, stop.

The controller issues every sample to the first (mobile) tier only; offloads go
device to device; the finishing tier sends the Result back. It composes the
launcher, the transport, the writer and the policies, and owns no I/O of its own
beyond calling them. Whatever happens (an error, a lost agent, Ctrl-C), the
``finally`` path stops every agent it started, reaps the processes, joins the
rows already measured into ``samples.parquet`` and records the outcome in the
manifest.
"""

from __future__ import annotations

import hashlib
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from agents import protocol as p
from testbed import __version__, policies
from testbed.core import costmodel
from testbed.core.clock import Clock, SystemClock
from testbed.core.config import Experiment, Inventory, TimeoutSpec
from testbed.core.errors import AgentLostError, AgentStartError, RunProtocolError, TestbedError
from testbed.devices import shaping
from testbed.devices.fleet import Fleet
from testbed.devices.launch import AgentArgs, AgentHandle
from testbed.devices.owned import Ownership
from testbed.formats.bundle import Bundle, Samples
from testbed.formats.results import RunWriter, new_run_id, write_energy_windows, write_power_timeline
from testbed.formats.schema import SCHEMA_VERSION
from testbed.run.energy import EnergyLedger, window_record
from testbed.run.rows import Issued, build_row, clock_offset_ns
from testbed.run.transport import Received, ZmqTransport

NS = 1_000_000_000
PINGS = 16  # clock-offset round trips per agent
PING_GAP_S = 0.003  # between them


@dataclass(frozen=True)
class Progress:
    """Reported to the caller after every finished sample."""

    policy: str
    phase: str
    done: int
    total: int


@dataclass
class RunOutcome:
    """What a finished (or failed) run left behind."""

    run_dir: Path
    rows: int
    status: str
    error: str | None = None


@dataclass
class _Agent:
    device_id: str
    tier: str
    handle: AgentHandle
    hello: p.Hello | None = None
    ready: p.Ready | None = None
    last_heard_ns: int = 0
    offset_ns: int = 0
    rtt_ns: int = 0
    pings: list[tuple[int, int, int]] = field(default_factory=list)


def _git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        return {"sha": sha or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "testbed": __version__, "protocol": str(p.PROTOCOL_VERSION)}
    for dist in ("numpy", "onnxruntime", "pyzmq", "msgpack", "pandas", "pyarrow", "pydantic", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    import zmq

    out["libzmq"] = zmq.zmq_version()
    return out


def _has_pings(agent: _Agent, n: int) -> bool:
    return len(agent.pings) >= n


class Controller:
    """Runs one experiment against the devices of an inventory."""

    def __init__(
        self,
        experiment: Experiment,
        experiment_path: Path,
        inventory: Inventory,
        inventory_path: Path,
        bundle: Bundle,
        results_root: Path,
        clock: Clock | None = None,
        on_progress: Callable[[Progress], None] = lambda _: None,
        run_id: str | None = None,
        trust_new_hosts: bool = False,
    ):
        self.exp = experiment
        self.exp_path = experiment_path
        self.inv = inventory
        self.inv_path = inventory_path
        self.bundle = bundle
        self.clock = clock or SystemClock()
        self.on_progress = on_progress
        self.run_id = run_id or new_run_id()
        self.run_dir = results_root / experiment.name / self.run_id
        self.timeouts: TimeoutSpec = experiment.timeouts
        self._agents: dict[str, _Agent] = {}
        self._transport: ZmqTransport | None = None
        self._writer: RunWriter | None = None
        self._manifest: dict[str, Any] = {}
        self._last_hb_sent_ns = 0
        self._seq = 0  # issue order over the whole run: the seq column
        self.trust_new_hosts = trust_new_hosts
        self._fleet: Fleet | None = None
        self._ledger = EnergyLedger()
        self._windows: list[dict[str, Any]] = []  # energy_windows.parquet
        self._flush_seq = 0
        self._samples_t0_ns: int | None = None  # when the first sample was issued: link schedules count from it
        self._next_issue_ns = 0  # run.interval_ms: the next sample leaves no earlier than this (monotonic)
        self._steps_applied: set[tuple[str, int]] = set()
        self._flushed: set[str] = set()
        self._window_sink: list[dict[str, Any]] | None = None  # rows completed while a Flush is awaited

    # ------------------------------------------------------------------ public

    def run(self) -> RunOutcome:
        """Run the experiment; returns where the results are. Raises after cleanup on any failure."""
        hashes = self.bundle.verify()
        self._writer = RunWriter(self.run_dir, self.exp.run.flush_rows)
        self._fleet = Fleet(self.exp, self.inv, self.bundle, self.run_dir, self.run_id, Ownership(self.run_dir),
                            self.trust_new_hosts, exp_path=self.exp_path)
        self._manifest = self._initial_manifest(hashes)
        self._writer.write_manifest(self._manifest)
        status, error = "failed", None
        try:
            self._fleet.connect_all()
            self._fleet.choose_backend()
            self._manifest["deploy"] = self._fleet.record()
            # links are shaped and probed before any agent starts: the probes do not compete with samples,
            # and no heartbeat waits on them
            self._manifest["shaping"] = self._shaping_record(self._fleet.shape())
            self._writer.write_manifest(self._manifest)
            if self._manifest["shaping"].get("kernel"):
                self._manifest["shaping"]["probes"] = self._fleet.probe()
            self._writer.write_manifest(self._manifest)
            self._transport = ZmqTransport(self.inv.controller.bind, self.clock)
            self._start_agents()
            self._await_hellos()
            self._configure()

            self._align_clocks()
            self._manifest["agents"] = self._agent_records()
            self._manifest["energy"] = self._energy_record()
            self._manifest["bytes_wire"] = {r.pop("hop"): r for r in self._wire_ifaces().values()}
            self._writer.write_manifest(self._manifest)
            pctx = policies.context_for(self.bundle, self.exp.samples.split, self.exp.seed,
                                  {s.name for s in self.exp.policies})
            for i, spec in enumerate(self.exp.policies):
                policy = policies.make(spec, pctx)
                self._run_policy(policy, np.random.default_rng(self.exp.seed + i))
                self._manifest.setdefault("policies", {})[spec.key] = policies.record(policy)
                self._writer.write_manifest(self._manifest)
            status = "complete"
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the user (Ctrl-C)"
            raise
        except TestbedError as e:
            error = str(e)
            raise
        except Exception as e:  # record any crash in the manifest, then let it propagate
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            self._teardown(status, error)
        return RunOutcome(self.run_dir, self._writer.rows_written, status, error)

    # ------------------------------------------------------------------ phases

    def _start_agents(self) -> None:
        assert self._transport is not None and self._writer is not None
        assert self._fleet is not None
        port = self._transport.endpoint.rsplit(":", 1)[1]
        owned: list[dict[str, Any]] = []
        self._manifest["owned"] = {"record": self._fleet.owned.path.name, "processes": owned}
        for tier in reversed(p.TIERS):
            device = self.inv.device(self.exp.devices[tier])
            args = AgentArgs(f"tcp://{self.inv.controller_address(device)}:{port}", self.timeouts.heartbeat_s,
                             self.timeouts.liveness, self.timeouts.hello_s)
            handle = self._fleet.start(device, args)
            self._agents[device.id] = _Agent(device.id, tier, handle, last_heard_ns=self.clock.monotonic_ns())
            # recorded the moment it exists, so cleanup knows it even if the next start fails
            owned.append({"device": device.id, "host": device.host, "pid": handle.pid, "log": str(handle.log_path)})
            self._writer.write_manifest(self._manifest)

    def _await(self, what: str, timeout_s: float, done: Callable[[], bool], on_msg: Callable[[Received], None],
               poll_s: float = 0.05, waiting_on: list[str] | None = None) -> None:
        """Pump control messages until ``done()`` or the timeout; dead agents fail fast.

        ``done()`` is asked again at least every ``poll_s``, also when no message arrives.
        ``waiting_on``: the agents a timeout names (default: every agent whose ``what`` is not done).
        """
        assert self._transport is not None
        deadline = self.clock.monotonic_ns() + int(timeout_s * NS)
        while not done():
            for a in self._agents.values():
                code = a.handle.returncode()
                if code is not None:
                    raise AgentStartError(f"agent {a.device_id} ({a.tier}) exited with status {code} while "
                                          f"waiting for {what}; last lines of {a.handle.log_path}:\n"
                                          f"{a.handle.log_tail()}")
            if self.clock.monotonic_ns() > deadline:
                missing = waiting_on or [a.device_id for a in self._agents.values() if not self._phase_done(what, a)]
                tails = "\n".join(f"--- {d}:\n{self._agents[d].handle.log_tail(8)}" for d in missing)
                raise AgentStartError(f"no {what} from {', '.join(missing)} within {timeout_s:.0f} s "
                                      f"(timeouts.{'hello_s' if what in ('Hello', 'Pong') else 'configure_s'} in "
                                      f"{self.exp_path}); their logs:\n{tails}")
            self._heartbeat()  # agents give up on a silent controller, also while they load or measure idle
            got = self._transport.recv(poll_s)
            if got is not None:
                self._note_heard(got.agent_id)
                if isinstance(got.msg, p.EnergyWindow):
                    self._on_window(got.msg)
                else:
                    on_msg(got)

    def _phase_done(self, what: str, a: _Agent) -> bool:
        return {"Hello": a.hello is not None, "Ready": a.ready is not None,
                "Pong": len(a.pings) >= PINGS, "Flushed": a.device_id in self._flushed}[what]

    def _note_heard(self, agent_id: str) -> None:
        if agent_id in self._agents:
            self._agents[agent_id].last_heard_ns = self.clock.monotonic_ns()

    def _await_hellos(self) -> None:
        def on_msg(got: Received) -> None:
            agent_id, msg = got.agent_id, got.msg
            if isinstance(msg, p.Hello):
                a = self._agents.get(agent_id)
                if a is None:
                    raise RunProtocolError(f"Hello from {agent_id!r}, which this run did not start")
                if msg.protocol_version != p.PROTOCOL_VERSION:
                    raise RunProtocolError(f"agent {agent_id} speaks protocol {msg.protocol_version}, the controller "
                                           f"{p.PROTOCOL_VERSION}; deploy the same agents/ version to every device")
                if msg.tier != a.tier:
                    raise RunProtocolError(f"agent {agent_id} says it is {msg.tier}, the inventory says {a.tier}")
                a.hello = msg

        self._await("Hello", self.timeouts.hello_s, lambda: all(a.hello for a in self._agents.values()), on_msg)

    def _configure(self, files: dict[str, tuple[str, str]] | None = None, seq: int = 1) -> None:
        """Load each tier's partition (``files``: tier -> (file, sha256) of a variant; default the bundle's)."""
        assert self._transport is not None
        by_tier = {a.tier: a for a in self._agents.values()}
        for a in self._agents.values():
            a.ready = None
        wire = self._wire_ifaces()
        for i, tier in enumerate(p.TIERS):
            spec = self.bundle.tier(tier)
            file, sha = (files or {}).get(tier, (spec.file, spec.sha256))
            a = by_tier[tier]
            nxt = by_tier[p.TIERS[i + 1]].hello.data_endpoint if i + 1 < len(p.TIERS) else ""  # type: ignore[union-attr]
            device = self.inv.device(a.device_id)
            assert self._fleet is not None
            link = (self._fleet.userspace_link(f"{tier}-{p.TIERS[i + 1]}", self._schedule_t())
                    if i + 1 < len(p.TIERS) else None)
            ctl = self._fleet.userspace_link(f"controller-{tier}", self._schedule_t())
            self._transport.send(a.device_id, p.Configure(
                seq=seq, partition_path=a.handle.partition_path(file), sha256=sha,
                logits_name=spec.logits, offload=dict(spec.offload), next_endpoint=nxt, threads=device.threads,
                idle_s=self.exp.energy.idle_s if seq == 1 else 0.0,
                delay_ms=link.delay_ms if link else 0.0, jitter_ms=link.jitter_ms if link else 0.0,
                ctl_delay_ms=ctl.delay_ms if ctl else 0.0, ctl_jitter_ms=ctl.jitter_ms if ctl else 0.0,
                wire_in_iface=wire.get(tier, {}).get("interface", ""),
                batch_samples=self.exp.energy.batch_samples, min_window_s=self.exp.energy.min_window_s))

        def on_msg(got: Received) -> None:
            agent_id, msg = got.agent_id, got.msg
            if isinstance(msg, p.Ready):
                self._agents[agent_id].ready = msg
            elif isinstance(msg, p.Failure):
                raise AgentStartError(f"agent {agent_id} could not load its partition: {msg.what}")

        self._await("Ready", self.timeouts.configure_s + self.exp.energy.idle_s,
                    lambda: all(a.ready for a in self._agents.values()), on_msg)

    def _align_clocks(self) -> None:
        """Estimate each agent's clock offset from PINGS round trips, one agent at a time, PING_GAP_S apart.

        The min-RTT round trip wins (its error is at most half of it). One agent at a time, so no Pong
        waits behind another's decode; spread out, so a CPU-capped agent (throttled for a while after
        loading its partition) answers some of them right away.
        """
        assert self._transport is not None
        sent: dict[tuple[str, int], int] = {}

        def on_msg(got: Received) -> None:
            msg = got.msg
            if isinstance(msg, p.Pong):
                t0 = sent.pop((got.agent_id, msg.seq), None)
                if t0 is not None:
                    self._agents[got.agent_id].pings.append((t0, msg.t_ns, got.wall_ns))

        for a in self._agents.values():
            for k in range(PINGS):
                if k:
                    pause = self.clock.monotonic_ns() + int(PING_GAP_S * NS)
                    self._await("Pong", self.timeouts.hello_s, partial(self._past, pause), on_msg,
                                poll_s=PING_GAP_S / 3, waiting_on=[a.device_id])
                sent[(a.device_id, k)] = self.clock.time_ns()
                try:
                    self._transport.send(a.device_id, p.Ping(k))
                except TestbedError as e:
                    raise self._lost(a, e) from e
                self._await("Pong", self.timeouts.hello_s, partial(_has_pings, a, k + 1), on_msg,
                            waiting_on=[a.device_id])
            a.offset_ns, a.rtt_ns = clock_offset_ns(a.pings)

    # ------------------------------------------------------------------ samples

    def _run_policy(self, policy: policies.Policy, rng: np.random.Generator) -> None:
        samples = self.bundle.samples(self.exp.samples.split)
        count = self.exp.samples.count or len(samples)  # validated against the split size
        warm = self.exp.samples.warmup
        if policy.needs_resources:
            self._run_adaptive(policy, rng, samples, count, max(warm, 3))
            return
        # warmup and measure run as two phases, so no batch energy window holds samples of both
        if warm:
            self._issue_all(policy, rng, samples, [("warmup", i % count) for i in range(warm)], (0, warm + count))
        self._issue_all(policy, rng, samples, [("measure", i) for i in range(count)], (warm, warm + count))

    def _run_adaptive(self, policy: policies.Policy, rng: np.random.Generator, samples: Samples, count: int,
                      warm: int) -> None:
        """Warm up on the full network through every tier, measure the resources, let the policy choose, run."""
        probe = policies.StaticPolicy(policy.name, policies.all_tier(p.TIERS[-1]))
        rows = self._issue_all(probe, rng, samples, [("warmup", i % count) for i in range(warm)])
        full = self.bundle.spec.resnet_variants[0]
        res: dict[str, dict[str, float]] = {"ms_per_mac": {}, "ms_per_offload": {}, "ms_per_byte": {}}
        for t in p.TIERS:
            ms = [r[f"compute_ms_{t}"] for r in rows if r[f"compute_ms_{t}"] is not None]
            res["ms_per_mac"][t] = float(np.median(ms)) / max(1, full.macs[t])
        for hop in full.bytes_per_offload:
            col = f"net_ms_{hop.replace('-', '_')}"
            net = [r[col] for r in rows if r[col] is not None]
            res["ms_per_offload"][hop] = float(np.median(net)) if net else 0.0
        policy.plan(res)
        files = policy.partitions()
        swap = files is not None
        if files is not None:
            self._configure(files, seq=2)
        try:
            self._issue_all(policy, rng, samples, [("measure", i) for i in range(count)])
        finally:
            if swap:
                self._configure(None, seq=3)

    def _issue_all(self, policy: policies.Policy, rng: np.random.Generator, samples: Samples,
                   plan: list[tuple[str, int]], progress: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """Issue the plan's samples; returns the rows written (also flushed to the run directory).

        ``progress`` is (samples of this policy done before, the policy's total) for the progress bar.
        """
        before, total = progress or (0, len(plan))
        if self._samples_t0_ns is None:
            self._samples_t0_ns = self.clock.monotonic_ns()
        assert self._transport is not None and self._writer is not None
        first = next(a for a in self._agents.values() if a.tier == p.TIERS[0])
        assert first.hello is not None
        exit_layers = {t.tier: t.exit.layer for t in self.bundle.spec.tiers}
        offsets = {a.device_id: a.offset_ns for a in self._agents.values()}
        ctx = {"run_id": self.run_id, "experiment": self.exp.name, "split": self.exp.samples.split,
               "energy_sources": {a.device_id: a.hello.facts.get("meter", {}).get("source", "none")  # type: ignore[union-attr]
                                  for a in self._agents.values()}}
        in_flight: dict[int, Issued] = {}
        written: list[dict[str, Any]] = []
        nxt, done = 0, 0
        gap_ns = int(self.exp.run.interval_ms * 1e6)
        spin = self.exp.run.wait == "spin"
        while done < len(plan):
            self._apply_schedule()
            while nxt < len(plan) and len(in_flight) < self.exp.run.concurrency and (
                    self.clock.monotonic_ns() >= self._next_issue_ns):
                phase, idx = plan[nxt]
                tensors = samples.tensors(idx)
                sample_id = int(samples.sample_id[idx])
                work = p.Work(self._seq, sample_id, tensors, policy.thresholds(sample_id, rng), [], policy.measure)
                issued = Issued(self._seq, sample_id, int(samples.label[idx]), phase, policy.name,
                                self.clock.monotonic_ns(), self.clock.time_ns(),
                                sum(int(t.nbytes) for t in tensors.values()), policy.choice(sample_id))
                self._seq += 1
                self._next_issue_ns = issued.issue_mono_ns + gap_ns
                in_flight[work.run_seq] = issued
                self._transport.issue(first.hello.data_endpoint, work)
                nxt += 1
            wait_s = min(0.05, self.timeouts.heartbeat_s / 2)
            if nxt < len(plan) and len(in_flight) < self.exp.run.concurrency:  # paced: up to the next issue
                wait_s = min(wait_s, max(0.0, (self._next_issue_ns - self.clock.monotonic_ns()) / NS))
            got = self._transport.recv(wait_s, spin=spin)
            self._keepalive(in_flight)
            if got is None:
                continue
            agent_id, msg = got.agent_id, got.msg
            self._note_heard(agent_id)
            if isinstance(msg, p.Result):
                if msg.run_seq not in in_flight:
                    continue  # a late answer to a sample this run already gave up on
                answered = in_flight.pop(msg.run_seq)
                row = build_row(msg, answered, got.mono_ns, got.wall_ns, offsets, exit_layers, ctx)
                written += self._write_rows(self._ledger.add_row(row))
                policy.observe(answered.sample_id, {s.tier: s.confidence for s in msg.stages})
                done += 1
                self.on_progress(Progress(policy.name, answered.phase, before + done, total))
            elif isinstance(msg, p.EnergyWindow):
                written += self._on_window(msg)
            elif isinstance(msg, p.Failure):
                raise AgentLostError(agent_id, f"failed during the run ({msg.stage}): {msg.what}",
                                     self._agents[agent_id].handle.log_tail())
        if self._ledger.pending:
            written += self._flush_windows()
        return written

    def _schedule_t(self) -> float:
        """Seconds since the first sample was issued (0 before): the time base of link schedules."""
        return 0.0 if self._samples_t0_ns is None else (self.clock.monotonic_ns() - self._samples_t0_ns) / NS

    def _apply_schedule(self) -> None:
        """Apply the link schedule steps that are due: the sending agent's delay (userspace), tc on the devices."""
        links = self.exp.shaping.links
        if not any(prof.schedule for prof in links.values()) or self._fleet is None or self._fleet.backend == "none":
            return
        assert self._transport is not None
        t = self._schedule_t()
        for hop, i, profile in shaping.due_steps(links, t, self._steps_applied):
            self._steps_applied |= {(hop, j) for j in range(i + 1)}
            rec: dict[str, Any] = {"hop": hop, "step": i, "at_s": links[hop].schedule[i].at_s,  # type: ignore[index]
                                   "applied_at_s": round(t, 6), "unix_ns": self.clock.time_ns(),
                                   "profile": profile.model_dump(exclude={"schedule"})}
            if self._fleet.backend == "userspace":
                # the sending agent of a device hop; for a controller link the tier's agent (Results, and on the
                # first tier the Work arriving too)
                a, b = hop.split("-")
                ctl = a == "controller"
                sender = next(x for x in self._agents.values() if x.tier == (b if ctl else a))
                try:
                    self._transport.send(sender.device_id, p.Shape(i, profile.delay_ms, profile.jitter_ms,
                                                                   "controller" if ctl else "data"))
                except TestbedError as e:
                    raise self._lost(sender, e) from e
                rec["userspace"] = {"device": sender.device_id, "link": "controller" if ctl else "data",
                                    "delay_ms": profile.delay_ms, "jitter_ms": profile.jitter_ms}
            kernel = self._fleet.reshape(hop, profile)
            if kernel:
                rec["kernel"] = kernel
            self._manifest["shaping"].setdefault("schedule_applied", []).append(rec)
            assert self._writer is not None
            self._writer.write_manifest(self._manifest)

    def _write_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._writer is not None
        for row in rows:
            self._writer.append(row)
        return rows

    def _on_window(self, msg: p.EnergyWindow) -> list[dict[str, Any]]:
        """Keep a batch window (for energy_windows.parquet) and write the rows it completes."""
        a = self._agents.get(msg.agent_id)
        self._windows.append(window_record(msg, a.offset_ns if a else 0))
        rows = self._write_rows(self._ledger.add_window(msg))
        if self._window_sink is not None:
            self._window_sink += rows
        return rows

    def _flush_windows(self) -> list[dict[str, Any]]:
        """Ask every agent to close its open energy window and wait for their answers; returns the rows completed.

        Called at the end of each phase that left rows waiting, so no window spans two policies.
        """
        assert self._transport is not None
        self._flush_seq += 1
        self._flushed.clear()
        for a in self._agents.values():
            try:
                self._transport.send(a.device_id, p.Flush(self._flush_seq))
            except TestbedError as e:
                raise self._lost(a, e) from e
        completed: list[dict[str, Any]] = []

        def on_msg(got: Received) -> None:
            if isinstance(got.msg, p.Flushed) and got.msg.seq == self._flush_seq:
                self._flushed.add(got.agent_id)
            elif isinstance(got.msg, p.Failure):
                raise AgentLostError(got.agent_id, f"failed during the run ({got.msg.stage}): {got.msg.what}",
                                     self._agents[got.agent_id].handle.log_tail())

        self._window_sink = completed
        try:
            self._await("Flushed", self.timeouts.configure_s, lambda: len(self._flushed) == len(self._agents), on_msg)
        finally:
            self._window_sink = None
        return completed

    def _keepalive(self, in_flight: dict[int, Issued]) -> None:
        """Send heartbeats; fail on a dead or silent agent, or a sample stuck too long."""
        assert self._transport is not None
        now = self.clock.monotonic_ns()
        hb_ns = int(self.timeouts.heartbeat_s * NS)
        for a in self._agents.values():
            code = a.handle.returncode()
            if code is not None:
                raise AgentLostError(a.device_id, f"process exited with status {code} during the run",
                                     a.handle.log_tail())
            silent = now - a.last_heard_ns
            if silent > hb_ns * self.timeouts.liveness:
                raise AgentLostError(a.device_id, f"no heartbeat for {silent / NS:.1f} s "
                                     f"({self.timeouts.liveness} x heartbeat_s={self.timeouts.heartbeat_s})",
                                     a.handle.log_tail())
        self._heartbeat()
        if in_flight:
            oldest = min(in_flight.values(), key=lambda i: i.issue_mono_ns)
            waited = (now - oldest.issue_mono_ns) / NS
            if waited > self.timeouts.sample_s:
                raise AgentLostError("?", f"sample {oldest.sample_id} (seq {oldest.seq}) has not come back after "
                                     f"{waited:.1f} s (timeouts.sample_s={self.timeouts.sample_s}); "
                                     "check the agents' logs in the run directory")

    def _save_timeline(self, msg: p.Timeline) -> None:
        """Write a device's power timeline beside the rows, on the controller's clock."""
        assert self._writer is not None
        a = self._agents.get(msg.agent_id)
        offset = a.offset_ns if a else 0
        t_unix_ns = (msg.times_s * 1e9).astype(np.int64) + msg.wall_minus_mono_ns - offset
        path = write_power_timeline(self.run_dir, msg.agent_id, t_unix_ns, msg.rails_w, msg.source)
        self._manifest.setdefault("energy", {}).setdefault("timelines", {})[msg.agent_id] = {
            "file": path.name, "source": msg.source, "samples": len(msg.times_s), "rails": sorted(msg.rails_w)}

    def _heartbeat(self) -> None:
        """Send every agent a heartbeat when one is due."""
        assert self._transport is not None
        now = self.clock.monotonic_ns()
        if now - self._last_hb_sent_ns >= int(self.timeouts.heartbeat_s * NS):
            for a in self._agents.values():
                if a.hello is not None:  # the ROUTER cannot address an agent before it connects
                    try:
                        self._transport.send(a.device_id, p.Heartbeat("controller", self.clock.time_ns()))
                    except TestbedError as e:
                        raise self._lost(a, e) from e
            self._last_hb_sent_ns = now

    def _past(self, mono_ns: int) -> bool:
        return self.clock.monotonic_ns() >= mono_ns

    def _lost(self, a: _Agent, e: Exception) -> AgentLostError:
        """The error for an agent whose connection is gone: with its exit status once its host reports it."""
        deadline = time.monotonic() + 2.0  # a real process on a real host: real time
        code = a.handle.returncode()
        while code is None and time.monotonic() < deadline:
            time.sleep(0.05)
            code = a.handle.returncode()
        why = (f"process exited with status {code} during the run" if code is not None
               else f"its connection to the controller is gone ({e})")
        return AgentLostError(a.device_id, why, a.handle.log_tail())

    # ------------------------------------------------------------------ teardown

    def _teardown(self, status: str, error: str | None) -> None:
        """Stop agents, reap them, save rows and the manifest; never raises over the original error."""
        stopped: dict[str, Any] = {}
        if self._transport is not None:
            for a in self._agents.values():
                try:
                    self._transport.send(a.device_id, p.Stop(status))
                except TestbedError:
                    pass
            deadline = self.clock.monotonic_ns() + int(self.timeouts.stop_s * NS)
            while self.clock.monotonic_ns() < deadline:
                alive = any(a.handle.returncode() is None for a in self._agents.values())
                try:
                    got = self._transport.recv(0.05)
                except TestbedError:
                    continue
                if got is None and not alive:
                    break  # every agent has exited and nothing they sent is left unread
                if got and isinstance(got.msg, p.Bye):
                    stopped[got.agent_id] = got.msg.served
                elif got and isinstance(got.msg, p.Timeline):
                    self._save_timeline(got.msg)
                elif got and isinstance(got.msg, p.EnergyWindow):
                    self._on_window(got.msg)
        for a in self._agents.values():
            code = a.handle.stop(self.timeouts.stop_s)
            stopped.setdefault(a.device_id, None)
            self._manifest.setdefault("agent_exit", {})[a.device_id] = {"exit_status": code,
                                                                         "served": stopped[a.device_id]}
        if self._transport is not None:
            self._transport.close()
        if self._fleet is not None:
            problems = self._fleet.after_stop({a.device_id: a.handle for a in self._agents.values()})
            if problems:
                self._manifest["teardown_problems"] = problems
        assert self._writer is not None
        self._finish_energy()
        self._writer.close()
        self._manifest.update({"status": status, "error": error, "ended_at": datetime.now(UTC).isoformat(),
                               "rows": self._writer.rows_written})
        self._writer.write_manifest(self._manifest)

    def _finish_energy(self) -> None:
        """Rows still waiting for a window go out with that energy null; the raw windows go beside the rows."""
        assert self._writer is not None
        left = self._ledger.drain()
        self._write_rows(left)
        if self._windows or left:
            rec = self._manifest.setdefault("energy", {})
            if not isinstance(rec, dict):
                rec = self._manifest["energy"] = {}
            rec["batch_windows"] = {"count": len(self._windows), "rows_without_their_window": len(left)}
            if self._windows:
                rec["batch_windows"]["file"] = write_energy_windows(self.run_dir, self._windows).name

    def _wire_ifaces(self) -> dict[str, dict[str, str]]:
        """Per receiving tier: the interface its hop from the previous tier arrives through, or why none is counted.

        Only a dedicated link counts (one the hop's data alone uses); else bytes_wire stays null.
        """
        out: dict[str, dict[str, str]] = {}
        by_tier = {a.tier: a.device_id for a in self._agents.values()}
        for prev, tier in zip(p.TIERS, p.TIERS[1:], strict=False):
            dev = self.inv.device(by_tier[tier])
            iface = dev.interfaces.get(prev)
            hop = f"{prev}_{tier}"
            if not iface:
                out[tier] = {"hop": hop, "why_not": f"{dev.id} has no interfaces.{prev} in the inventory "
                             "(its link to the previous tier is not known to be its own)"}
            elif iface == dev.interface_to("controller"):
                out[tier] = {"hop": hop, "why_not": f"{dev.id}'s interface {iface} also carries its control "
                             "traffic"}
            else:
                out[tier] = {"hop": hop, "device": dev.id, "interface": iface}
        return out

    # ------------------------------------------------------------------ manifest

    def _shaping_record(self, readback: dict[str, Any] | None = None) -> dict[str, Any]:
        fleet = self._fleet
        backend = fleet.backend if fleet else "none"
        if backend == "none":
            return {"backend": "none", "note": "links are not shaped"}
        rec: dict[str, Any] = {"backend": backend,
                               "links": {k: v.model_dump() for k, v in self.exp.shaping.links.items()}}
        if backend == "userspace":
            rec["applied_by"] = ("delay and jitter: the sending agent of each hop holds its offloads (uniform jitter, "
                                 "in order), in the direction samples travel"
                                 + ("; rate: htb on both ends' interfaces (kernel)" if readback else ""))
        else:
            rec["applied_by"] = "netem (under an htb rate class where rate_mbit is set) on both ends' interfaces"
        if readback:
            rec["kernel"] = readback
        return rec

    def _initial_manifest(self, hashes: dict[str, str]) -> dict[str, Any]:
        exp_text = self.exp_path.read_text()
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "status": "running",
            "started_at": datetime.now(UTC).isoformat(),
            "command": sys.argv,
            "experiment": {"path": str(self.exp_path), "yaml": exp_text,
                           "sha256": hashlib.sha256(exp_text.encode()).hexdigest(),
                           "resolved": self.exp.model_dump()},
            "inventory": {"path": str(self.inv_path), "yaml": self.inv_path.read_text(),
                          "resolved": self.inv.model_dump()},
            "bundle": {"path": str(self.bundle.root), "name": self.bundle.spec.name, "sha256": hashes,
                       "exits": {t.tier: t.exit.model_dump() for t in self.bundle.spec.tiers},
                       "model": self.bundle.spec.model, "build": yaml.safe_dump(self.bundle.spec.build.model_dump())},
            "git": _git_state(Path(__file__).resolve().parent.parent),
            "controller": {"host": platform.node(), "platform": platform.platform(), "versions": _versions()},
            "shaping": {"backend": "pending", "note": "filled in once the devices are deployed and shaped"},
            "cost_model": costmodel.from_spec(self.exp.cost).record()
            | {"layers": {t.tier: len(t.runs_layers or t.layers) for t in self.bundle.spec.tiers}},
            "energy": {"meters": "filled in when the agents have said Hello"},
        }

    def _energy_record(self) -> dict[str, Any]:
        meters, idle = {}, {}
        for a in self._agents.values():
            assert a.hello is not None and a.ready is not None
            meters[a.device_id] = a.hello.facts.get("meter", {"source": "none"})
            idle[a.device_id] = None if math.isnan(a.ready.idle_w) else a.ready.idle_w
        e = self.exp.energy
        batching = e.batch_samples > 1 or e.min_window_s > 0
        window = ("each tier's compute window per sample (onnxruntime run); idle time between samples is not "
                  "attributed") if not batching else (
            f"batch windows of at least {e.batch_samples} samples and {e.min_window_s} s per device, from just "
            "before the first sample's compute to the end of the last one's, or to the flush at the end of each "
            "phase (the gaps between samples included); each sample gets a share in proportion to its compute "
            "time (energy_batch_<tier>; raw windows in energy_windows.parquet)")
        return {"meters": meters, "idle_baseline_s": e.idle_s, "idle_w": idle,
                "batch_samples": e.batch_samples, "min_window_s": e.min_window_s, "window": window}

    def _agent_records(self) -> dict[str, Any]:
        out = {}
        for a in self._agents.values():
            assert a.hello is not None and a.ready is not None
            out[a.device_id] = {"tier": a.tier, "pid": a.handle.pid, "agent_version": a.hello.agent_version,
                                "protocol_version": a.hello.protocol_version, "data_endpoint": a.hello.data_endpoint,
                                "facts": a.hello.facts, "load_ms": a.ready.load_ms, "providers": a.ready.providers,
                                "idle_w": None if math.isnan(a.ready.idle_w) else a.ready.idle_w,
                                "clock_offset_ns": a.offset_ns, "clock_rtt_ns": a.rtt_ns, "clock_pings": len(a.pings)}
        return out
