"""The run: deploy and shape, start agents, Hello, configure, align clocks, issue samples, collect, stop.

:class:`Controller` is the composition root of a run. It receives (or builds) the transport,
the fleet, the writer and the clock, and composes the :class:`~testbed.run.session.AgentSession`
(the agents), the :class:`~testbed.run.issuer.Issuer` (the samples) and the
:class:`~testbed.run.collector.Collector` (the rows). Samples go to the first tier only;
offloads go device to device; the finishing tier sends the Result back. Whatever happens (an
error, a lost agent, Ctrl-C), :meth:`Controller.run` stops every agent it started, reaps the
processes, joins the rows already measured into ``samples.parquet`` and records the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np

from agents import protocol as p
from testbed import policies
from testbed.core.clock import Clock, SystemClock
from testbed.core.config import Experiment, Inventory
from testbed.core.errors import ResultsError, TestbedError
from testbed.core.hops import Hop
from testbed.devices.fleet import Fleet
from testbed.devices.launch import AgentArgs
from testbed.devices.owned import Ownership
from testbed.formats.bundle import Bundle, Samples
from testbed.formats.manifest import AgentExit, RunManifest, Status
from testbed.formats.results import RunWriter, new_run_id
from testbed.run import records, resume
from testbed.run.collector import Collector
from testbed.run.issuer import Issuer, Progress
from testbed.run.keys import RunKeys
from testbed.run.resume import Resume
from testbed.run.schedules import Schedules
from testbed.run.session import AgentSession
from testbed.run.signals import Deferred, interrupts_deferred, interrupts_latched
from testbed.run.transport import ZmqTransport

__all__ = ["Controller", "Progress", "RunOutcome"]


@dataclass
class RunOutcome:
    """What a finished (or failed) run left behind."""

    run_dir: Path
    rows: int
    status: str
    error: str | None = None


class Controller:
    """Runs one experiment against the devices of an inventory.

    ``transport``, ``fleet`` and ``writer`` are built from the inventory and the run directory
    unless given; ``clock`` is the system clock unless given.
    """

    def __init__(self, experiment: Experiment, experiment_path: Path, inventory: Inventory, inventory_path: Path,
                 bundle: Bundle, results_root: Path, clock: Clock | None = None,
                 on_progress: Callable[[Progress], None] = lambda _: None, run_id: str | None = None,
                 trust_new_hosts: bool = False, *, transport: ZmqTransport | None = None,
                 fleet: Fleet | None = None, writer: RunWriter | None = None, resume: Resume | None = None):
        self.exp, self.exp_path, self.inv, self.inv_path = experiment, experiment_path, inventory, inventory_path
        self.bundle = bundle
        self.tiers = bundle.tiers  # the run's tiers, in the order a sample crosses them
        self.clock = clock or SystemClock()
        self.on_progress = on_progress
        self.resume = resume  # a stopped run this one goes on with, in its directory
        self.run_id = resume.manifest.run_id if resume else (run_id or new_run_id())
        self.run_dir = resume.run_dir if resume else results_root / experiment.name / self.run_id
        self.trust_new_hosts = trust_new_hosts
        self.transport, self.fleet, self.writer = transport, fleet, writer
        self.manifest: RunManifest | None = None
        self.keys: RunKeys | None = None  # the run's CurveZMQ keys (controller.security: curve)
        self.session: AgentSession | None = None
        self.issuer: Issuer | None = None
        self.collector: Collector | None = None
        self.schedules: Schedules | None = None  # the link and CPU schedules, once the agents are up

    # ------------------------------------------------------------------ the run

    def run(self) -> RunOutcome:
        """Run the experiment; returns where the results are. Raises after cleanup on any failure."""
        m = self._open()
        writer, fleet = self.writer, self.fleet
        assert writer is not None and fleet is not None
        status, error = "failed", None
        latched = interrupts_latched()
        try:
            latched.__enter__()
            self._prepare_devices(fleet, m)
            self._start(fleet, m)
            pctx = policies.context_for(self.bundle, self.exp.samples.split, self.exp.seed,
                                        {s.name for s in self.exp.policies})
            for i, spec in enumerate(self.exp.policies):
                self._restart_schedules(spec.key)
                policy = self._make_policy(spec, pctx)
                self._run_policy(policy, np.random.default_rng(self.exp.seed + i))
                m.policies[spec.key] = records.policy_record(policy)
                writer.write_manifest(m)
            self._measure_drift(m)
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
            with interrupts_deferred() as deferred:
                self._teardown(status, error, deferred)
            latched.__exit__(None, None, None)
        return RunOutcome(self.run_dir, writer.rows_written, status, error)

    def _open(self) -> RunManifest:
        """The writer, fleet, collector and manifest: a new run's, or a resumed run's with its attempts kept."""
        hashes = self.bundle.verify()
        r = self.resume
        if r is not None:
            resume.check_bundle(r, hashes)
        flush = self.exp.run.flush_rows
        writer = self.writer = self.writer or (RunWriter.reopen(self.run_dir, self.tiers, flush) if r else
                                               RunWriter(self.run_dir, self.tiers, flush))
        self.fleet = self.fleet or Fleet(self.exp, self.inv, self.bundle, self.run_dir, self.run_id,
                                         Ownership(self.run_dir), self.trust_new_hosts, exp_path=self.exp_path)
        self.collector = Collector(writer, {t.tier: t.exit.layer for t in self.bundle.spec.tiers},
                                   self.bundle.layers_run)
        m = records.initial_manifest(self.run_id, self.exp, self.exp_path, self.inv, self.inv_path,
                                     self.bundle, hashes)
        if r is not None:
            m = m.model_copy(update={"attempts": [*r.manifest.attempts, resume.attempt_record(r.manifest)],
                                     "policies": r.manifest.policies,
                                     "resumed": {"attempt": r.attempt, "rows_on_disk": len(r.done),
                                                 "side_files_set_aside": resume.set_aside(r)}})
        self.manifest = m
        writer.write_manifest(m)
        return m

    def _prepare_devices(self, fleet: Fleet, m: RunManifest) -> None:
        """Connect, choose the shaping backend, shape and probe the links, before any agent starts.

        The probes do not compete with samples, and no heartbeat waits on them.
        """
        assert self.writer is not None
        fleet.connect_all()
        fleet.choose_backend()
        m.deploy = fleet.record()
        m.shaping = records.shaping_record(fleet.backend, self.exp.shaping.links, fleet.shape())
        self.writer.write_manifest(m)
        if m.shaping.get("kernel"):
            m.shaping["probes"] = fleet.probe()
        self.writer.write_manifest(m)

    def _start(self, fleet: Fleet, m: RunManifest) -> None:
        """Start the agents (last tier first), hear every Hello, configure, align clocks; record them."""
        assert self.writer is not None and self.collector is not None
        keys = self.keys = (RunKeys.create(self.exp.device_ids())
                            if self.inv.controller.security == "curve" else None)
        transport = self.transport = self.transport or ZmqTransport(self.inv.controller.bind, self.clock, keys)
        session = self.session = AgentSession(transport, self.clock, self.exp.timeouts, str(self.exp_path),
                                              self.collector.window)
        self.issuer = Issuer(session, transport, self.collector, self.clock, self.exp.run, lambda: schedules.tick(),
                             self.on_progress, self.exp.seed)
        issuer = self.issuer
        issuer.issue_mode = self.exp.topology.issue
        issuer.assign_mode = self.exp.topology.assign if isinstance(self.exp.topology.assign, str) else "map"
        schedules = self.schedules = Schedules(self.exp, fleet, session, self.clock, issuer.schedule_t,
                                               lambda: self.writer.write_manifest(m), m)  # type: ignore[union-attr]
        session.on_limited = schedules.on_limited
        if self.resume is not None:
            self.issuer.replay = resume.Replay(self.resume.done)
        port = transport.endpoint.rsplit(":", 1)[1]
        owned: list[dict[str, Any]] = []
        m.owned = {"record": fleet.owned.path.name, "processes": owned}
        for tier, dev_id in ((t, d) for t in reversed(self.tiers) for d in self.exp.tier_devices(t)):
            device = self.inv.device(dev_id)
            args = AgentArgs(f"tcp://{self.inv.controller_address(device)}:{port}", self.exp.timeouts.heartbeat_s,
                             self.exp.timeouts.liveness, self.exp.timeouts.hello_s,
                             keys.agent_file(device.id) if keys is not None else b"")
            handle = fleet.start(device, args)
            session.add(device.id, tier, handle)
            # recorded the moment it exists, so cleanup knows it even if the next start fails
            owned.append({"device": device.id, "host": device.host, "pid": handle.pid, "log": str(handle.log_path)})
            self.writer.write_manifest(m)
        session.await_hellos()
        for a in session.agents.values():
            assert a.hello is not None
            transport.trust(a.hello.data_endpoint, a.device_id)
        self._configure()
        session.align_clocks()
        agents = list(session.agents.values())
        self.collector.offsets = {a.device_id: a.offset_ns for a in agents}
        self.collector.context = {"run_id": self.run_id, "experiment": self.exp.name, "split": self.exp.samples.split,
                                  "energy_sources": {a.device_id: (a.hello.facts if a.hello else {}).get(
                                      "meter", {}).get("source", "none") for a in agents}}
        m.agents = records.agent_records(agents)
        m.energy = records.energy_record(agents, self.exp.energy)
        m.bytes_wire = {r.pop("hop"): r for r in self._wire().values()}
        self.writer.write_manifest(m)

    def _measure_drift(self, m: RunManifest) -> None:
        """Each agent's clock offset again after the samples: the drift goes beside the offset the rows used."""
        assert self.session is not None
        self.session.align_clocks(end=True)
        for a in self.session.agents.values():
            m.agents.setdefault(a.device_id, {}).update(records.clock_drift(a))
        self.writer.write_manifest(m)  # type: ignore[union-attr]

    def _wire(self) -> dict[str, dict[str, str]]:
        return records.wire_ifaces(self.inv, {t: self.exp.tier_devices(t) for t in self.tiers}, self.tiers)

    def _configure(self, files: dict[str, tuple[str, str]] | None = None, seq: int = 1,
                   ranges: dict[str, tuple[int, int]] | None = None) -> None:
        """Load each tier's partition (``files``: tier -> (file, sha256) of a variant; default the bundle's).

        ``ranges``: tier -> (first, last) layer: that tier runs the bundle's layer graphs of that range
        as a chain instead of its tier graph (a split point at every layer).
        """
        assert self.session is not None and self.fleet is not None and self.issuer is not None
        agents = self.session.agents
        wire = self._wire()
        t = self.issuer.schedule_t()
        messages = {}
        tiers = self.tiers
        keys = self.keys
        for i, tier, a in ((tiers.index(x.tier), x.tier, x) for x in agents.values()):
            spec = self.bundle.tier(tier)
            file, sha = (files or {}).get(tier, (spec.file, spec.sha256))
            last = i + 1 == len(tiers)
            to = agents[self.exp.next_device(tiers, a.device_id) or a.device_id]  # its own id: the last tier
            nxt = "" if last or to.hello is None else to.hello.data_endpoint
            nxt_key = "" if last or keys is None else keys.public(to.device_id)
            link = None if last else self.fleet.userspace_link(Hop(tier, tiers[i + 1]).link, t)
            ctl = self.fleet.userspace_link(f"controller-{tier}", t)
            messages[a.device_id] = p.Configure(
                seq=seq, partition_path=a.handle.partition_path(file), sha256=sha,
                logits_name=spec.logits, offload=dict(spec.offload), next_endpoint=nxt,
                threads=self.inv.device(a.device_id).threads, idle_s=self.exp.energy.idle_s if seq == 1 else 0.0,
                delay_ms=link.delay_ms if link else 0.0, jitter_ms=link.jitter_ms if link else 0.0,
                ctl_delay_ms=ctl.delay_ms if ctl else 0.0, ctl_jitter_ms=ctl.jitter_ms if ctl else 0.0,
                wire_in_iface=wire.get(tier, {}).get("interface", ""),
                batch_samples=self.exp.energy.batch_samples, min_window_s=self.exp.energy.min_window_s,
                first=i == 0, last_layer=spec.layers[-1], router=self._router(a, tier),
                providers=list(self.inv.device(a.device_id).providers), next_key=nxt_key,
                cpu_caps=self.exp.cpu.kinds(a.device_id, tier), next_peers=self._peers(tiers, i),
                **self._chain(a, (ranges or {}).get(tier)))
        self.session.configure(messages, self.exp.timeouts.configure_s + self.exp.energy.idle_s)

    def _peers(self, tiers: tuple[str, ...], i: int) -> list[list[str]]:
        """Configure's next_peers for a device of tier ``i``: every next-tier device, where samples are routed."""
        assert self.session is not None
        if not self.exp.per_sample or i + 1 == len(tiers):
            return []
        return [[b.device_id, b.hello.data_endpoint if b.hello else "",
                 self.keys.public(b.device_id) if self.keys is not None else ""]
                for b in self.session.tier_agents(tiers[i + 1])]

    def _router(self, a: Any, tier: str) -> list[str]:
        """Configure's router for ``tier``: the bundle's pool router where this tier runs it, else none."""
        r = self.bundle.spec.router
        return [a.handle.partition_path(r.file), r.sha256] if r is not None and r.tier == tier else []

    def _chain(self, a: Any, layer_range: tuple[int, int] | None) -> dict[str, Any]:
        """Configure's chain fields for a tier that runs ``layer_range`` as layer graphs (none: its tier graph)."""
        if layer_range is None:
            return {}
        graphs = self.bundle.spec.layer_graphs
        chain = [[a.handle.partition_path(g.file), g.sha256] for g in graphs
                 if layer_range[0] <= g.layer <= layer_range[1]]
        return {"chain": chain, "first_layer": layer_range[0], "final_layer": len(graphs)}

    # ------------------------------------------------------------------ samples

    def _make_policy(self, spec: Any, pctx: Any) -> policies.Policy | dict[str, policies.Policy]:
        """The policy, or one state per first-tier device for a policy that learns online (topology.policy_state)."""
        policy = policies.make(spec, pctx)
        sources = self.exp.tier_devices(self.tiers[0])
        learns = type(policy).observe is not policies.Policy.observe
        if len(sources) == 1 or not learns or self.exp.topology.policy_state == "shared" or policy.needs_resources:
            return policy
        return {sources[0]: policy, **{d: policies.make(spec, pctx) for d in sources[1:]}}

    def _run_policy(self, policy_set: policies.Policy | dict[str, policies.Policy], rng: np.random.Generator) -> None:
        assert self.issuer is not None
        samples = self.bundle.samples(self.exp.samples.split)
        count = self.exp.samples.count or len(samples)  # validated against the split size
        warm = self.exp.samples.warmup
        policy = policy_set if isinstance(policy_set, policies.Policy) else next(iter(policy_set.values()))
        if policy.needs_resources:
            self._run_adaptive(policy, rng, samples, count, max(warm, 3))
            return
        ranges = policy.layer_ranges()
        if ranges is not None:  # the policy splits inside tiers: the agents run layer graphs for it
            self._configure(seq=2, ranges=ranges)
        try:
            # warmup and measure run as two phases, so no batch energy window holds samples of both
            if warm:
                self.issuer.issue_all(policy_set, rng, samples, [("warmup", i % count) for i in range(warm)],
                                      (0, warm + count * self.exp.samples.repeat))
            total = count * self.exp.samples.repeat  # a long run cycles through the split
            self.issuer.issue_all(policy_set, rng, samples, [("measure", i % count) for i in range(total)],
                                  (warm, warm + total))
        finally:
            if ranges is not None:
                self._configure(None, seq=3)

    def _run_adaptive(self, policy: policies.Policy, rng: np.random.Generator, samples: Samples, count: int,
                      warm: int) -> None:
        """Warm up on the full network through every tier, measure the resources, let the policy choose, run.

        A policy that re-plans (``replan``) stops issuing when a schedule step changes the resources,
        drains the samples in flight, waits for the agents to confirm their caps, measures again
        through every tier on the variant loaded (phase ``probe``) and plans again; the agents switch
        partitions when the variant changes.
        """
        issuer, sched = self.issuer, self.schedules
        assert issuer is not None and sched is not None
        total = count * self.exp.samples.repeat  # a long run cycles through the split
        probe = policies.StaticPolicy(policy.name, policies.at_tier(self.tiers[-1], self.tiers))
        if issuer.first_issue_ns is None:  # steps due at 0 s hold from the warmup on
            issuer.first_issue_ns = self.clock.monotonic_ns()
            sched.tick()
            issuer.settle(lambda: sched.settled, self.exp.timeouts.configure_s)
        seen = sched.changes  # a step during the warmup is planned for at once
        rows = issuer.issue_all(probe, rng, samples, [("warmup", i % count) for i in range(warm)], keep=True)
        policy.plan(policy.resources(rows), trigger="warmup", at_s=round(issuer.schedule_t(), 6),
                    unix_ns=self.clock.time_ns())
        loaded = policy.partitions()
        seq = 2
        if loaded is not None:
            self._configure(loaded, seq=seq)
        try:
            done = 0
            while done < total:
                stop = (lambda seen=seen: sched.changes != seen) if policy.replan else None
                issuer.issue_all(policy, rng, samples, [("measure", i % count) for i in range(done, total)],
                                 (done, total), stop=stop)
                done += issuer.issued
                if done >= total:
                    break
                rows = self._probe(policy, probe, rng, samples, done % count, count)
                policy.plan(policy.resources(rows), trigger=sched.since(seen), at_s=round(issuer.schedule_t(), 6),
                            unix_ns=self.clock.time_ns())
                seen = sched.changes  # the probe measured every step so far
                if policy.partitions() != loaded:
                    loaded, seq = policy.partitions(), seq + 1
                    self._configure(loaded, seq=seq)
        finally:
            if loaded is not None:
                self._configure(None, seq=seq + 1)

    def _probe(self, policy: policies.Policy, probe: policies.Policy, rng: np.random.Generator, samples: Samples,
               first: int, count: int) -> list[dict[str, Any]]:
        """Measure the resources again through every tier (phase probe), once the agents confirmed their caps.

        A step that lands during the probe leaves it measuring two settings: it is measured again.
        """
        issuer, sched = self.issuer, self.schedules
        assert issuer is not None and sched is not None
        for _ in range(10):  # a schedule has finitely many steps; ten probes in a row end it anyway
            before = sched.changes
            issuer.settle(lambda: sched.settled, self.exp.timeouts.configure_s)
            rows = issuer.issue_all(probe, rng, samples, [("probe", (first + k) % count) for k in range(policy.probe)],
                                    keep=True)
            if sched.changes == before:
                break
        return rows

    def _restart_schedules(self, policy: str) -> None:
        """``run.schedule_clock: policy``: links and caps back as configured, the schedules' clock from zero."""
        if self.exp.run.schedule_clock != "policy":
            return
        assert self.schedules is not None and self.issuer is not None
        self.schedules.restart(policy)
        self.issuer.first_issue_ns = None

    # ------------------------------------------------------------------ teardown

    def _stop_devices(self, status: str, problems: list[str]) -> None:
        """Stop and reap the agents, close the sockets, fetch logs and unshape; each step whatever the last did."""
        m, collector = self.manifest, self.collector
        assert m is not None and collector is not None
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.session is not None:
            session = self.session

            def stop() -> None:
                m.agent_exit = {d: AgentExit(**rec) for d, rec in session.stop(status, collector.late).items()}
                m.rejected_messages = dict(session.rejected)
            steps.append(("stopping the agents", stop))
        if self.transport is not None:
            steps.append(("closing the sockets", self.transport.close))
        if self.fleet is not None:
            fleet = self.fleet
            handles = {a.device_id: a.handle for a in self.session.agents.values()} if self.session else {}
            steps.append(("fetching logs and unshaping", lambda: problems.extend(fleet.after_stop(handles))))
        for what, step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001  (teardown goes on: the rows are saved after these steps)
                problems.append(f"{what} failed: {type(e).__name__}: {e}")

    def _teardown(self, status: str, error: str | None, deferred: Deferred | None = None) -> None:
        """Stop agents, reap them, save rows and the manifest; never raises over the original error.

        ``deferred``: Ctrl-C presses that arrived meanwhile, counted instead of obeyed (the manifest says how many).
        """
        m, writer, collector = self.manifest, self.writer, self.collector
        assert m is not None and writer is not None and collector is not None
        problems: list[str] = []
        self._stop_devices(status, problems)
        batch = None
        try:  # the side files (energy windows, power, thermal) may not fit a full disk: the rows come first
            batch = collector.finish()
        except Exception as e:  # noqa: BLE001
            problems.append(f"energy windows and timelines not written: {type(e).__name__}: {e}")
        m.teardown_problems = [*m.teardown_problems, *problems]
        if batch is not None or collector.timelines or collector.thermals:
            m.energy = dict(m.energy or {})
            if collector.timelines:
                m.energy["timelines"] = collector.timelines
            if collector.thermals:
                m.energy["thermal"] = collector.thermals
            if batch is not None:
                m.energy["batch_windows"] = batch
        try:
            writer.close()
        except ResultsError as e:  # a full disk: the last rows went to a rescue file, which the error names
            m.teardown_problems = [*m.teardown_problems, str(e)]
            if status == "complete":
                status, error = "failed", str(e)
        m.status = cast(Status, status)
        if deferred is not None and deferred.count:
            m.teardown_problems = [*m.teardown_problems, f"Ctrl-C pressed {deferred.count} more time(s) while the "
                                   "run was stopping: not obeyed, so every measured row reached the disk"]
        m.error, m.ended_at, m.rows = error, datetime.now(UTC).isoformat(), writer.rows_written
        m.rows_rescued = writer.rows_rescued
        if m.resumed is not None and self.issuer is not None and self.issuer.replay is not None:
            replayed = self.issuer.replay.record()
            m.resumed = {**m.resumed, **replayed, "rows_issued": self.issuer.seq - replayed["rows_replayed"]}
        try:
            writer.write_manifest(m)
        except OSError as e:
            m.teardown_problems = [*m.teardown_problems, f"manifest not written: {e}"]
            where = writer.rescue_manifest(m)  # the run dir still says running: report and --resume mark it lost
            if where is not None:
                m.teardown_problems = [*m.teardown_problems[:-1], f"manifest not written to the run directory "
                                       f"({e.strerror or e}); its final form is in {where}"]
                writer.rescue_manifest(m)
