"""The agent process: Hello, heartbeats, load a partition, serve samples.

Sockets:
    control: DEALER connected to the controller's ROUTER. Hello, heartbeats,
        Configure/Ready, Ping/Pong, Result, Stop/Bye.
    data in: PULL bound on this device; Work arrives here from the controller
        (first tier) or from the previous tier.
    data out: PUSH connected to the next tier's data socket (device to device;
        samples never pass through the controller between tiers).

One thread: zmq sockets are not thread-safe, and a partition's compute on a
sample is short next to the heartbeat period. An agent that hears nothing from
the controller for ``heartbeat_s * liveness`` exits by itself, so a lost
controller never leaves agents behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from agents import protocol as p
from agents.cpucap import CpuCapError, CpuCaps
from agents.facts import host_facts
from agents.meters import EnergyDelta, EnergyMeter, MeterError, NullMeter, open_meter
from agents.netio import ArrivalCounter, NicError
from agents.runtime import Partition, PartitionError, softmax
from agents.runtime import confidence as measure_confidence
from agents.security import KeysError, curve_client, curve_server, load_keys, start_zap
from agents.shaper import HeldLink
from agents.thermal import ThermalSampler

log = logging.getLogger("agents")


@dataclass(frozen=True)
class AgentTimeouts:
    """Liveness settings; the controller passes the same values on the command line."""

    heartbeat_s: float = 0.5
    liveness: int = 6
    first_contact_s: float = 60.0  # the controller starts every agent before it answers any (SSH starts take s)


@dataclass
class _Config:
    partition: Partition | None  # the tier graph; None with a chain
    tier_final: bool
    msg: p.Configure
    wire_in: ArrivalCounter | None = None
    batching: bool = False  # energy windows span several samples (asked once, not per sample)
    chain: list[Partition] = dataclasses.field(default_factory=list)  # one graph per layer, from msg.first_layer
    router: Partition | None = None  # the pool router (first tier of a bundle that has one)


@dataclass
class _Ran:
    """What this tier computed for one sample: its answer there, and what goes on if it does not exit."""

    logits: np.ndarray
    confidence: float
    prediction: int
    exited: bool
    layer: int
    layer_confidences: list[float]
    onward: dict[str, np.ndarray]  # the next tier's inputs (empty when it exited)
    thresholds: dict[str, float] | None = None  # the onward thresholds, where a pool router chose the route


def run_chain(chain: list[Partition], first_layer: int, final_layer: int, work: p.Work,
              tier_final: bool) -> _Ran:
    """Run the layer graphs from where the sample stands to where it exits or is split off.

    It starts after the last layer an earlier tier ran (or at ``first_layer``), exits after layer
    k when its confidence reaches ``thresholds["L<k>"]`` or k is the model's last layer, and
    otherwise stops at ``work.split`` (or the chain's end) and hands on the hidden state.
    """
    start = work.stages[-1].layer + 1 if work.stages else first_layer
    end = first_layer + len(chain) - 1
    stop = work.split if start <= work.split <= end else end
    if not first_layer <= start <= end:
        raise ValueError(f"layer {start} is not among the layers {first_layer}-{end} this tier holds")
    mask = work.tensors["attention_mask"]
    feed = dict(work.tensors)
    confs: list[float] = []
    for k in range(start, stop + 1):
        out = chain[k - first_layer].run(feed)
        logits = out["logits"]
        confidence, prediction = measure_confidence(logits[0], work.measure)
        confs.append(confidence)
        final = k == final_layer or (k == end and tier_final)
        if final or p.should_exit(work.thresholds.get(f"L{k}", float("inf")), confidence):
            return _Ran(logits, confidence, prediction, True, k, confs, {})
        feed = {"hidden": out["hidden_out"], "attention_mask": mask}
    return _Ran(logits, confidence, prediction, False, stop, confs, feed)


def _pool_thresholds(router: Partition | None, outputs: dict[str, np.ndarray], work: p.Work) -> dict[str, float]:
    """The thresholds of the route the pool router picks (:func:`agents.protocol.pool_route`).

    0 at the chosen tier, inf at the others: the tiers after this one follow the route unchanged.
    """
    if router is None:
        raise ValueError("the Work routes by difficulty pools but this tier has no pool router: the bundle has none "
                         "(rebuild it with `testbed partition`)")
    if "hidden_out" not in outputs or "attention_mask" not in work.tensors:
        raise ValueError("the pool router reads hidden_out and attention_mask, which this tier's graph lacks")
    logits = router.run({"hidden": outputs["hidden_out"], "attention_mask": work.tensors["attention_mask"]})
    route = p.pool_route(softmax(logits["pool_logits"][0]), work.pools)
    return {str(tier): (0.0 if tier == route else float("inf")) for tier, _ in work.pools}


@dataclass
class _Window:
    """An open energy window that spans several samples (batch windows)."""

    batch: int
    opened: float  # monotonic s
    start_ns: int  # wall clock when the meter window began
    end_ns: int = 0  # ... and when it ended (start + the meter's duration)
    run_seqs: list[int] = dataclasses.field(default_factory=list)
    compute_ns: list[int] = dataclasses.field(default_factory=list)


class Agent:
    """One device's agent. ``serve()`` runs until Stop, a signal, or controller loss."""

    def __init__(
        self,
        agent_id: str,
        tier: str,
        controller: str,
        workdir: Path,
        bind_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        data_port: int = 0,
        timeouts: AgentTimeouts = AgentTimeouts(),
        meter: EnergyMeter | None = None,
        rx_counter: type[ArrivalCounter] | Any = ArrivalCounter,
        models: Path | None = None,
        sysfs_root: str = "/",
        keys: dict[str, Any] | None = None,
    ):
        problem = p.tier_name_problem(tier)
        if problem:
            raise ValueError(problem)
        self.agent_id = agent_id
        self.tier = tier
        self.controller = controller
        self.workdir = workdir
        self.models = (models if models is not None else workdir / "bundles").resolve()
        self.sysfs_root = sysfs_root
        self._thermal: ThermalSampler | None = None
        self.bind_host = bind_host
        self.advertise_host = advertise_host or bind_host
        self.data_port = data_port
        self.timeouts = timeouts
        self.meter: EnergyMeter = meter or NullMeter()
        self._metered = not isinstance(self.meter, NullMeter)  # per-sample windows only where energy is read
        self.idle_w = math.nan
        self._baseline_due: float | None = None
        self.served = 0
        self.answered = 0  # Results this agent sent the controller (samples that finished here)
        self._config: _Config | None = None
        self._stopping = False
        self._ctx = zmq.Context()
        self._ctrl = self._ctx.socket(zmq.DEALER)
        self._ctrl.setsockopt(zmq.IDENTITY, agent_id.encode())
        self._ctrl.setsockopt(zmq.LINGER, 500)
        self._ctrl.setsockopt(zmq.MAXMSGSIZE, p.MAX_CONTROL_BYTES)
        # a send never blocks the loop for long: with no controller to take it (its port held by a stranger
        # that fails the handshake, so the pipe is gone) the heartbeat would block forever and liveness never fire
        self._send_timeout_ms = max(1, int(timeouts.heartbeat_s * 1000))
        self._ctrl.setsockopt(zmq.SNDTIMEO, self._send_timeout_ms)
        self.dropped = 0  # messages dropped because no peer took them within the send timeout
        self._link: _ControllerLink | None = None  # the control connection's state, while the loop runs
        self._data_in = self._ctx.socket(zmq.PULL)
        self._data_in.setsockopt(zmq.LINGER, 0)
        self._data_in.setsockopt(zmq.MAXMSGSIZE, p.MAX_DATA_BYTES)
        self.keys = keys
        self._zap = None
        if keys is not None:  # CurveZMQ: the controller's key checked, only the run's peers admitted
            self._zap = start_zap(self._ctx, list(keys["peers"]))
            curve_client(self._ctrl, keys, keys["controller"])
            curve_server(self._data_in, keys)
        self._data_out: zmq.Socket | None = None
        self._peers: dict[str, zmq.Socket] = {}  # next-tier device -> its socket, for per-sample routes
        # userspace link shaping (Configure, then Shape steps): offloads held until due, in order; the
        # controller link: Results held before they leave, and on the first tier Work held before it counts
        # as received
        self._out = HeldLink(f"{agent_id}/data-out")
        self._ctl_in = HeldLink(f"{agent_id}/controller-in")
        self._ctl_out = HeldLink(f"{agent_id}/controller-out")
        self._rx_counter = rx_counter  # (iface) -> ArrivalCounter; tests pass one with known steps
        self._window: _Window | None = None
        self._batches = 0
        self._caps: CpuCaps | None = None  # CPU caps a run changes mid-run (Configure.cpu_caps, Limit)

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> int:
        """Run the agent loop; returns the process exit code."""
        if self.data_port:
            self._data_in.bind(f"tcp://{self.bind_host}:{self.data_port}")
            port = self.data_port
        else:
            port = self._data_in.bind_to_random_port(f"tcp://{self.bind_host}")
        endpoint = f"tcp://{self.advertise_host}:{port}"
        self._ctrl.connect(self.controller)
        self._thermal = ThermalSampler(self.sysfs_root)
        facts = {**host_facts(), "meter": self.meter.describe(), "thermal_zones": sorted(self._thermal.zones),
                 "throttle_flags": self._thermal.has_throttled, "security": "curve" if self.keys else "none"}
        self._send(p.Hello(self.agent_id, self.tier, p.AGENT_VERSION, p.PROTOCOL_VERSION, endpoint, facts))
        log.info("agent %s (%s) data socket %s, controller %s", self.agent_id, self.tier, endpoint, self.controller)
        try:
            return self._loop()
        finally:
            self.close()

    def request_stop(self, *_: Any) -> None:
        """Signal handler: finish the current message, then exit."""
        self._stopping = True

    def _loop(self) -> int:
        poller = zmq.Poller()
        poller.register(self._ctrl, zmq.POLLIN)
        poller.register(self._data_in, zmq.POLLIN)
        link = self._link = _ControllerLink(self._ctrl)
        poller.register(link.monitor, zmq.POLLIN)
        hb = self.timeouts.heartbeat_s
        next_hb = time.monotonic()
        last_heard = time.monotonic()
        heard_once = False
        while not self._stopping:
            now = time.monotonic()
            if now >= next_hb:
                self._ctl_send(p.encode(p.Heartbeat(self.agent_id, time.time_ns())), wait=False)
                next_hb = now + hb
            limit = hb * self.timeouts.liveness if heard_once else max(hb * self.timeouts.liveness,
                                                                       self.timeouts.first_contact_s)
            if now - last_heard > limit:
                log.error("no word from the controller for %.1f s; exiting after %d samples, %d answered",
                          now - last_heard, self.served, self.answered)
                return 3
            if heard_once and link.down_for(now) > hb:
                log.error("the controller's connection dropped %.1f s ago and did not come back (a heartbeat "
                          "period); exiting after %d samples, %d answered", link.down_for(now), self.served,
                          self.answered)
                return 3
            if self._baseline_due is not None and now >= self._baseline_due:
                self._finish_baseline()
            self._release_due(now)
            due = min((d for d in (self._out.next_due(), self._ctl_out.next_due(), self._ctl_in.next_due())
                       if d is not None), default=None)
            if due is not None and due - now <= 0.002:
                # poll() counts whole milliseconds and a sleeping thread wakes 0.1-0.2 ms late on a busy
                # host: sleep to within SPIN_S of the due time, then spin, so a held message moves on time
                _wait_until(due)
                continue
            wake = min(next_hb, self._baseline_due or next_hb, due - 0.001 if due is not None else next_hb)
            events = dict(poller.poll(timeout=max(1, int((wake - now) * 1000))))
            if link.monitor in events:
                link.read_events(time.monotonic())
            if self._ctrl in events:
                last_heard = time.monotonic()
                heard_once = True
                link.down_since = None
                if self.on_control(self._ctrl.recv_multipart(copy=False)):
                    return 0
            if self._data_in in events:
                frames = self._data_in.recv_multipart(copy=False)
                if self._ctl_in.active:  # first tier, shaped controller link: received when the delay is over
                    self._ctl_in.hold(frames, time.monotonic())
                else:
                    self._on_work(frames)
        log.info("stopped by signal after %d samples, %d answered", self.served, self.answered)
        return 0

    @property
    def links(self) -> dict[str, HeldLink]:
        """The agent's held links by name: ``data-out``, ``controller-in``, ``controller-out``."""
        return {"data-out": self._out, "controller-in": self._ctl_in, "controller-out": self._ctl_out}

    def close(self) -> None:
        """Close the meter and the sockets; lift the CPU caps."""
        if self._caps is not None:
            self._caps.close()
        close_meter = getattr(self.meter, "close", None)
        if close_meter is not None:
            close_meter()
        if self._thermal is not None:
            self._thermal.close()
        if self._zap is not None:
            self._zap.stop()
        if self._link is not None:
            self._ctrl.disable_monitor()
            self._link.monitor.close(linger=0)
        for s in (self._ctrl, self._data_in, self._data_out, *self._peers.values()):
            if s is not None:
                s.close()
        self._ctx.term()

    def _send(self, msg: Any) -> None:
        self._ctl_send(p.encode(msg))

    def _ctl_send(self, frames: list[Any], wait: bool = True) -> None:
        """To the controller; dropped (counted, logged at powers of two) when nothing takes it in time.

        ``wait=False``: dropped at once when it cannot be queued (a heartbeat is worth nothing late).
        """
        try:
            self._ctrl.send_multipart(frames, copy=False, flags=0 if wait else zmq.NOBLOCK)
        except zmq.Again:
            self._note_drop("the controller")

    def _data_send(self, frames: list[Any], sock: zmq.Socket | None = None) -> None:
        """To the next tier; dropped like :meth:`_ctl_send` when it does not take it in time."""
        sock = sock or self._data_out
        assert sock is not None
        try:
            sock.send_multipart(frames, copy=False)
        except zmq.Again:
            self._note_drop("the next tier")

    def _note_drop(self, whom: str) -> None:
        self.dropped += 1
        if self.dropped & (self.dropped - 1) == 0:
            log.warning("%s took no message in time: %d messages dropped so far", whom, self.dropped)

    def _fail(self, stage: str, what: str) -> None:
        what = what[:1000]  # hostile input is not echoed whole into logs and replies
        log.error("%s: %s", stage, what)
        self._send(p.Failure(self.agent_id, stage, what))

    # ------------------------------------------------------------------ control

    def on_control(self, raw: list[zmq.Frame]) -> bool:
        """Handle one control message; True means exit now.

        No message can crash the agent: an error in handling one becomes a Failure reply, and the
        agent goes on serving.
        """
        try:
            msg = p.decode(raw)
        except p.ProtocolError as e:
            self._fail("decode", str(e)[:500])
            return False
        try:
            return self._handle(msg)
        except Exception as e:  # noqa: BLE001 - whatever a hostile or buggy message provokes, keep serving
            self._fail("control", f"{msg.KIND}: {type(e).__name__}: {str(e)[:300]}")
            return False

    def _handle(self, msg: Any) -> bool:
        if isinstance(msg, p.Configure):
            self._configure(msg)
        elif isinstance(msg, p.Ping):
            self._send(p.Pong(self.agent_id, msg.seq, time.time_ns()))
        elif isinstance(msg, p.Shape) and msg.link not in p.LINKS:
            self._fail("shape", f"link {msg.link!r} is none of {p.LINKS}; the controller and agent disagree")
        elif isinstance(msg, p.Shape):
            links = [self._out] if msg.link == "data" else self._ctl_links()
            log.info("link schedule: %s link now held %.3f ms +- %.3f ms", msg.link, msg.delay_ms, msg.jitter_ms)
            for link in links:
                link.set(msg.delay_ms, msg.jitter_ms)
        elif isinstance(msg, p.Limit):
            self._limit(msg)
        elif isinstance(msg, p.Flush):
            self._close_window()
            self._send(p.Flushed(self.agent_id, msg.seq))
        elif isinstance(msg, p.Stop):
            log.info("stop (%s) after %d samples, %d answered", msg.reason, self.served, self.answered)
            self._release_all()
            self._close_window()
            self._send_timeline()
            self._send_thermal()
            self._send(p.Bye(self.agent_id, self.served))
            return True
        elif not isinstance(msg, p.Heartbeat):
            self._fail("control", f"unexpected {msg.KIND!r} message on the control socket")
        return False

    def _limit(self, msg: p.Limit) -> None:
        """A CPU schedule step: apply it and say what was written, or fail saying why."""
        if self._caps is None:
            self._fail("limit", f"a {msg.kind} limit, but no Configure opened a CPU cap (Configure.cpu_caps)")
            return
        try:
            applied = self._caps.set(msg.kind, msg.value)
        except CpuCapError as e:
            self._fail("limit", str(e))
            return
        log.info("cpu schedule: %s now %s (%s)", msg.kind, msg.value or "uncapped", applied)
        self._send(p.Limited(self.agent_id, msg.seq, msg.kind, msg.value, applied, time.time_ns()))

    def _open_caps(self, kinds: list[str]) -> bool:
        """Open the CPU caps Configure names (kept across Configures of the same run); False after a Failure."""
        if self._caps is not None and set(kinds) <= set(self._caps.caps):
            return True
        if self._caps is not None:
            self._caps.close()
            self._caps = None
        if not kinds:
            return True
        try:
            self._caps = CpuCaps(kinds, Path(self.sysfs_root))
        except CpuCapError as e:
            self._fail("configure", f"this run changes the CPU's {', '.join(kinds)} mid-run, which this device "
                                    f"cannot: {e}")
            return False
        return True

    def _send_timeline(self) -> None:
        """The meter's sampled power, if it keeps one (ina, pmic, external, nvml-power)."""
        snapshot = getattr(self.meter, "snapshot", None)
        if snapshot is None:
            return
        times, rails = snapshot()
        if times:
            self._send(p.Timeline(self.agent_id, self.meter.source, time.time_ns() - time.monotonic_ns(),
                                  np.asarray(times, np.float64),
                                  {r: np.asarray(v, np.float64) for r, v in rails.items()}))

    def _send_thermal(self) -> None:
        """Temperatures and throttle flags sampled during the run, where the board has any."""
        if self._thermal is None:
            return
        times, temps, flags = self._thermal.snapshot()
        if times:
            self._send(p.Thermal(self.agent_id, time.time_ns() - time.monotonic_ns(), np.asarray(times, np.float64),
                                 {z: np.asarray(v, np.float64) for z, v in temps.items()},
                                 np.asarray(flags, np.int64)))

    def _path(self, name: str) -> Path:
        """The graph file ``name`` names (relative to the workdir), only if it is an .onnx file under ``models``."""
        path = Path(name)
        full = (path if path.is_absolute() else self.workdir / path).resolve()
        if full.suffix != ".onnx" or self.models not in full.parents:
            raise PartitionError(f"{name[:120]!r} is not an .onnx file under {self.models} (--models): this agent "
                                 "loads graphs only from there")
        return full

    def _load(self, msg: p.Configure) -> tuple[Partition | None, list[Partition]]:
        """The tier graph, or with ``msg.chain`` the layer graphs instead; raises PartitionError."""
        if not msg.chain:
            part = Partition.load(self._path(msg.partition_path), msg.sha256, threads=msg.threads,
                                  providers=msg.providers)
            if msg.logits_name not in part.outputs:
                raise PartitionError(f"{msg.partition_path} has no output {msg.logits_name!r}; it has {part.outputs}")
            return part, []
        bad = [e for e in msg.chain if not (isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e))]
        if bad or msg.first_layer < 1 or msg.final_layer < msg.first_layer:
            raise PartitionError(f"chain {msg.chain[:3]}... from layer {msg.first_layer} to {msg.final_layer}: give "
                                 "[[path, sha256], ...] and layers from 1")
        chain = [Partition.load(self._path(f), sha, threads=msg.threads, providers=msg.providers)
                 for f, sha in msg.chain]
        lacking = [msg.chain[i][0] for i, g in enumerate(chain) if "logits" not in g.outputs]
        if lacking:
            raise PartitionError(f"layer graphs {lacking} have no output 'logits'")
        return None, chain

    def _configure(self, msg: p.Configure) -> None:
        self._close_window()  # a window never spans two configurations
        if not self._open_caps(list(msg.cpu_caps)):
            return
        try:
            part, chain = self._load(msg)
        except PartitionError as e:
            self._fail("configure", str(e))
            return
        final = not msg.next_endpoint
        if not final and not self._connect_next(msg):
            return
        wire_in = None
        if msg.wire_in_iface:
            try:
                wire_in = self._rx_counter(msg.wire_in_iface)
            except NicError as e:
                self._fail("configure", str(e))
                return
        try:
            router = Partition.load(self._path(msg.router[0]), msg.router[1], threads=1) if msg.router else None
        except PartitionError as e:
            self._fail("configure", f"pool router: {e}")
            return
        self._config = _Config(part, final, msg, wire_in, msg.batch_samples > 1 or msg.min_window_s > 0, chain,
                               router)
        self._out.set(msg.delay_ms, msg.jitter_ms)
        self._ctl_in.set(0.0, 0.0)
        for link in self._ctl_links():
            link.set(msg.ctl_delay_ms, msg.ctl_jitter_ms)
        log.info("loaded %s in %.1f ms (final=%s, next=%s)", f"{len(chain)} layer graphs" if chain else
                 msg.partition_path, sum(g.load_ms for g in chain) if chain else part.load_ms,  # type: ignore[union-attr]
                 final, msg.next_endpoint or "-")
        if msg.idle_s > 0:
            # Ready goes out from the loop once the baseline window closes; heartbeats keep flowing meanwhile
            self.meter.begin("idle-baseline")
            self._baseline_due = time.monotonic() + msg.idle_s
        else:
            self._ready()

    def _push(self, endpoint: str, key: str) -> zmq.Socket | None:
        """A PUSH socket to a next-tier device; None (after a Failure) when the run has keys and ``key`` is none."""
        if self.keys is not None and len(key) != 40:
            self._fail("configure", "this agent runs with CurveZMQ keys and Configure names no key (the next "
                                    f"tier's public key) for {endpoint[:80]}")
            return None
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        # the next tier's queue full for a whole liveness window: it is gone (the controller says so too)
        sock.setsockopt(zmq.SNDTIMEO, int(self._send_timeout_ms * self.timeouts.liveness))
        if self.keys is not None:
            curve_client(sock, self.keys, key)
        sock.connect(endpoint)
        return sock

    def _connect_next(self, msg: p.Configure) -> bool:
        """The configured next device's socket, and one per device a Work's route may name; False after a Failure."""
        for sock in [self._data_out, *self._peers.values()]:
            if sock is not None:
                sock.close()
        self._data_out, self._peers = self._push(msg.next_endpoint, msg.next_key), {}
        if self._data_out is None:
            return False
        for device, endpoint, key in msg.next_peers:
            sock = self._data_out if endpoint == msg.next_endpoint else self._push(endpoint, key)
            if sock is None:
                return False
            self._peers[device] = sock
        return True

    def _ctl_links(self) -> list[HeldLink]:
        """What a delay on this tier's controller link holds.

        The Results it sends, and on the first tier (the only one the controller issues Work to)
        the Work arriving on the data socket.
        """
        first = self._config is not None and self._config.msg.first
        return [self._ctl_in, self._ctl_out] if first else [self._ctl_out]

    def _ready(self) -> None:
        assert self._config is not None
        cfg, msg = self._config, self._config.msg
        if cfg.chain:
            load_ms, ins, outs = sum(g.load_ms for g in cfg.chain), cfg.chain[0].inputs, cfg.chain[-1].outputs
            providers = cfg.chain[0].providers
        else:
            assert cfg.partition is not None
            load_ms, ins, outs = cfg.partition.load_ms, cfg.partition.inputs, cfg.partition.outputs
            providers = cfg.partition.providers
        missing = [w for w in msg.providers if w not in providers]
        if missing:
            log.warning("execution providers %s asked for but not offered by this onnxruntime; running on %s",
                        missing, providers)
        self._send(p.Ready(self.agent_id, msg.seq, load_ms, ins, outs, providers, self.idle_w))

    def _finish_baseline(self) -> None:
        """Idle power = energy of the baseline window over its length; NaN without a meter."""
        self._baseline_due = None
        delta = self.meter.end("idle-baseline")
        if delta.energy_j is not None and delta.duration_s > 0:
            self.idle_w = delta.energy_j / delta.duration_s
            log.info("idle baseline: %.3f W over %.2f s (%s)", self.idle_w, delta.duration_s, delta.source)
        self._ready()

    # ------------------------------------------------------------------ data

    def _accept_work(self, frames: list[zmq.Frame]) -> tuple[p.Work, _Config] | None:
        """The decoded Work and the configuration to run it under; None (reported) when it cannot run."""
        try:
            work = p.decode(frames)
        except p.ProtocolError as e:
            self._fail("decode", str(e))
            return None
        if not isinstance(work, p.Work):
            self._fail("data", f"unexpected {work.KIND!r} message on the data socket")
            return None
        if self._config is None:
            self._fail("work", f"sample {work.sample_id} arrived before Configure")
            return None
        return work, self._config

    def _open_energy(self, work: p.Work, batching: bool) -> str:
        """Open the sample's meter window (or the batch's); returns the per-sample window key, or ""."""
        if batching:
            if self._window is None:
                self._window = _Window(self._batches, time.monotonic(), time.time_ns())
                self._batches += 1
                self.meter.begin(f"batch-{self._window.batch}")
            return ""
        if self._metered:
            key = f"sample-{work.run_seq}"
            self.meter.begin(key)
            return key
        return ""

    def _close_energy(self, work: p.Work, cfg: _Config, key: str,
                      compute_ns: int) -> tuple[float, float, bool, int, EnergyDelta | None]:
        """(energy_j, net_j, approx, batch, the batch window closing now or None) of the sample just run."""
        if cfg.batching:
            w = self._window
            assert w is not None
            w.run_seqs.append(work.run_seq)
            w.compute_ns.append(compute_ns)
            closing = None
            if len(w.run_seqs) >= cfg.msg.batch_samples and time.monotonic() - w.opened >= cfg.msg.min_window_s:
                closing = self.meter.end(f"batch-{w.batch}")
            return math.nan, math.nan, False, w.batch, closing
        if key:
            energy = self.meter.end(key)
            energy_j = math.nan if energy.energy_j is None else energy.energy_j
            net_j = energy_j - self.idle_w * energy.duration_s  # NaN propagates when either is unknown
            return energy_j, net_j, energy.approx, -1, None
        return math.nan, math.nan, False, -1, None  # no meter: nothing to read on the sample's path

    def _on_work(self, frames: list[zmq.Frame]) -> None:
        recv_ns = time.time_ns()
        accepted = self._accept_work(frames)
        if accepted is None:
            return
        work, cfg = accepted
        wire_in = cfg.wire_in.arrival() if cfg.wire_in is not None else -1
        frame_bytes = sum(map(len, frames))
        key = self._open_energy(work, cfg.batching)
        start_ns = time.time_ns()
        try:
            ran = self._compute(work, cfg)
        except Exception as e:  # onnxruntime raises untyped errors; report and keep serving
            if key:
                self.meter.end(key)
            self._fail("compute", f"sample {work.sample_id}: {e}")
            return
        end_ns = time.time_ns()
        energy_j, net_j, approx, batch, closing = self._close_energy(work, cfg, key, end_ns - start_ns)
        self.served += 1
        nbytes = int(ran.logits.nbytes) if ran.exited else sum(int(t.nbytes) for t in ran.onward.values())
        stage = p.Stage(self.tier, self.agent_id, recv_ns, start_ns, end_ns, time.time_ns(), ran.confidence,
                        ran.prediction, ran.exited, nbytes, energy_j, approx, net_j, frame_bytes, wire_in, batch,
                        ran.layer, ran.layer_confidences, self._caps.throttled_ms() if self._caps else -1.0)
        if ran.exited:
            self.answered += 1
            result = p.encode(p.Result(self.agent_id, work.run_seq, work.sample_id, ran.logits,
                                       [*work.stages, stage]))
            if self._ctl_out.active:
                self._ctl_out.hold(result, time.monotonic())
            else:
                self._ctl_send(result)
        else:
            self._offload(p.encode(p.Work(work.run_seq, work.sample_id, ran.onward,
                                          work.thresholds if ran.thresholds is None else ran.thresholds,
                                          [*work.stages, stage], work.measure, work.split, [], work.route)), work)
        if closing is not None:  # after the sample left: the window report is not on the sample's path
            self._send_window(closing)

    def _compute(self, work: p.Work, cfg: _Config) -> _Ran:
        """Run the tier's part of the sample: its layer graphs (a chain), or its tier graph and exit rule."""
        msg = cfg.msg
        if cfg.chain:
            return run_chain(cfg.chain, msg.first_layer, msg.final_layer, work, cfg.tier_final)
        assert cfg.partition is not None
        outputs = cfg.partition.run(work.tensors)
        logits = outputs[msg.logits_name]
        confidence, prediction = measure_confidence(logits[0], work.measure)
        thresholds = _pool_thresholds(cfg.router, outputs, work) if work.pools and not work.stages else None
        rule = work.thresholds if thresholds is None else thresholds
        if cfg.tier_final or p.should_exit(rule.get(self.tier, float("inf")), confidence):
            return _Ran(logits, confidence, prediction, True, msg.last_layer, [], {})
        onward = {dst: outputs[src] if src in outputs else work.tensors[src] for src, dst in msg.offload.items()}
        return _Ran(logits, confidence, prediction, False, msg.last_layer, [], onward, thresholds)

    def _offload(self, frames: list[Any], work: p.Work) -> None:
        """Send a Work on to the next tier (held first when the link has a userspace delay).

        To the device the Work's route names for the next tier (chosen per sample by the
        controller), else to the configured next device.
        """
        assert self._data_out is not None
        sock = self._data_out
        hop = len(work.stages)  # the tiers done before this one: the route's entry for the next tier
        if hop < len(work.route):
            sock = self._peers.get(work.route[hop])  # type: ignore[assignment]
            if sock is None:
                self._fail("offload", f"sample {work.sample_id}: route names {work.route[hop][:64]!r}, which is not "
                                      f"one of this agent's next devices {sorted(self._peers)}")
                return
        if self._out.active:
            self._out.hold((sock, frames), time.monotonic())
        else:
            self._data_send(frames, sock)

    def _send_window(self, delta: EnergyDelta) -> None:
        """Report the just-closed batch window (``delta`` is its meter reading)."""
        w = self._window
        assert w is not None
        self._window = None
        w.end_ns = w.start_ns + int(delta.duration_s * 1e9)
        energy_j = math.nan if delta.energy_j is None else delta.energy_j
        net_j = energy_j - self.idle_w * delta.duration_s
        self._send(p.EnergyWindow(self.agent_id, w.batch, w.start_ns, w.end_ns, energy_j, net_j, delta.approx,
                                  w.run_seqs, w.compute_ns))

    def _close_window(self) -> None:
        """Close the open batch window, if any, and report it (Flush, Stop, a new Configure)."""
        if self._window is not None:
            self._send_window(self.meter.end(f"batch-{self._window.batch}"))

    def _release_due(self, now: float) -> None:
        """Move the held messages whose time has come (userspace shaping): sends first, then arrivals."""
        for sock, frames in self._out.pop_due(now):
            self._data_send(frames, sock)
        for frames in self._ctl_out.pop_due(now):
            self._ctl_send(frames)
        for frames in self._ctl_in.pop_due(now):
            self._on_work(frames)

    def _release_all(self) -> None:
        """Stopping: held Results leave now, before Bye; held offloads and arrivals are dropped."""
        self._out.drain()  # offloads of a stopped run: the next tier is stopping too
        for frames in self._ctl_out.drain():
            self._ctl_send(frames)
        self._ctl_in.drain()  # arrived after the controller stopped the run: not served


class _ControllerLink:
    """Whether the connection to the controller is up, from a monitor on the control socket.

    Dropped (``EVENT_DISCONNECTED``) until a handshake succeeds again or the controller is heard;
    a controller that died, or whose port a stranger now holds (its handshake fails), stays down.
    """

    def __init__(self, sock: zmq.Socket):
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.down_since: float | None = None

    def read_events(self, now: float) -> None:
        """Take every pending monitor event."""
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_DISCONNECTED:
                self.down_since = self.down_since or now
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.down_since = None

    def down_for(self, now: float) -> float:
        """Seconds the connection has been down (0 when up)."""
        return 0.0 if self.down_since is None else now - self.down_since


SPIN_S = 0.0005  # the last part of a userspace hold is spun, not slept: sleep wakes late by up to this much


def _wait_until(due: float) -> None:
    """Return at ``due`` (``time.monotonic()`` seconds) within microseconds: sleep, then spin the rest."""
    rest = due - time.monotonic()
    if rest > SPIN_S:
        time.sleep(rest - SPIN_S)
    while time.monotonic() < due:
        pass


def _tier_arg(value: str) -> str:
    problem = p.tier_name_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m agents``."""
    ap = argparse.ArgumentParser(prog="python -m agents", description="testbed device agent")
    ap.add_argument("--controller", required=True, help="controller ROUTER endpoint, e.g. tcp://10.0.0.1:5555")
    ap.add_argument("--id", required=True, dest="agent_id", help="device id from inventory.yaml")
    ap.add_argument("--tier", required=True, type=_tier_arg, help="this device's tier in the run, e.g. mobile")
    ap.add_argument("--workdir", default=".", help="partition paths are relative to this directory")
    ap.add_argument("--sysfs-root", default="/", help="read thermal zones and throttle flags under this "
                    "directory instead of / (a board's tree, for tests)")
    ap.add_argument("--keys", default=None, help="the run's CurveZMQ key file (0600; deleted once read); "
                    "without it the sockets are plain")
    ap.add_argument("--models", default=None, help="the only directory graphs are loaded from (default: "
                    "WORKDIR/bundles, where deploy puts them)")
    ap.add_argument("--bind", default="127.0.0.1", help="address the data socket binds to")
    ap.add_argument("--advertise", default=None, help="address other tiers use to reach the data socket")
    ap.add_argument("--data-port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--heartbeat-s", type=float, default=AgentTimeouts.heartbeat_s)
    ap.add_argument("--liveness", type=int, default=AgentTimeouts.liveness)
    ap.add_argument("--first-contact-s", type=float, default=AgentTimeouts.first_contact_s,
                    help="how long to wait for the controller's first word before exiting")
    ap.add_argument("--cpus", default="", help="comma-separated CPU ids this agent may run on (default: any)")
    ap.add_argument("--meter", default="auto",
                    help="auto, rapl, nvml, ina, pmic, model or none (auto: the first present, in that order), "
                         "or external with --meter-command")
    ap.add_argument("--meter-command", default="", help="external meter: a command printing watts per line")
    ap.add_argument("--meter-scale", type=float, default=None, help="pmic meter: the board's draw over the PMIC "
                    "rail sum, measured once against a wall meter")
    ap.add_argument("--idle-w", type=float, default=None, help="model meter: idle watts")
    ap.add_argument("--busy-w", type=float, default=None, help="model meter: watts with this process busy")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpus:
        cpus = {int(c) for c in args.cpus.split(",")}
        os.sched_setaffinity(0, cpus)
        log.info("pinned to CPUs %s", sorted(cpus))
    try:
        meter = open_meter(args.meter, idle_w=args.idle_w, busy_w=args.busy_w, scale=args.meter_scale,
                           command=shlex.split(args.meter_command) or None)
    except MeterError as e:
        log.error("meter: %s", e)
        return 2
    log.info("energy meter: %s", meter.describe())
    keys = None
    if args.keys:
        try:
            keys = load_keys(args.keys)
        except KeysError as e:
            log.error("%s", e)
            return 2
        os.remove(args.keys)  # the secret lives in this process only from here on
    agent = Agent(args.agent_id, args.tier, args.controller, Path(args.workdir), args.bind, args.advertise,
                  args.data_port, AgentTimeouts(args.heartbeat_s, args.liveness, args.first_contact_s), meter,
                  models=Path(args.models) if args.models else None, sysfs_root=args.sysfs_root, keys=keys)
    signal.signal(signal.SIGTERM, agent.request_stop)
    signal.signal(signal.SIGINT, agent.request_stop)
    return agent.serve()
