"""Wire protocol between the controller and the agents, and between agents.

Every message is a frozen dataclass with a ``KIND``. On the wire a message is a
ZeroMQ multipart message: frame 0 is a msgpack map
``{"v": PROTOCOL_VERSION, "kind": KIND, "body": {...}}``; every numpy array in the
body is replaced by ``{"dtype", "shape", "frame": i}`` and its raw C-order bytes
travel as frame ``i`` (no copy into msgpack; a zero-copy view on receipt). Stages
travel as positional lists. ``decode`` checks every field at once and raises
``ProtocolError`` naming the message kind and the missing or bad fields.

The per-sample path (Work, Result) runs right after onnxruntime has streamed a
partition's weights through the CPU caches, where every Python step costs several
times its warm price (measured: 219 vs 57 us for decode+encode); so converters are
compiled once per field, not looked up per message, and Work and Result have a path
of their own that makes no per-field calls: a well-formed one is built at once, and
anything off in it goes through the per-field converters, which name every problem.
The wire bytes are the same either way (measured after a partition's run: decode
108 -> 87 us, decode + new stage + encode 190 -> 140 us).

This module is the only one that ``testbed/`` imports from ``agents/``; it must stay
free of anything but the standard library, numpy and msgpack.

Format history:
    1: Hello, Heartbeat, Configure, Ready, Failure, Ping, Pong, Work, Result, Timeline, Stop, Bye;
       multipart frames with tensors out of band.
    2: Work.measure: the confidence measure of the exit rule (``max`` softmax or ``entropy``).
    3: Configure.delay_ms / jitter_ms: userspace shaping of the agent's outgoing data link.
    4: Stage.frame_bytes_in / wire_in_bytes / energy_batch; Configure.wire_in_iface /
       batch_samples / min_window_s; Flush, EnergyWindow, Flushed: energy windows that span
       several samples, and interface byte counters on the hop a sample arrived over;
       Shape: a link schedule's new userspace delay and jitter, mid-run.
    5: Configure.ctl_delay_ms / ctl_jitter_ms and Shape.link: userspace shaping of the first
       tier's link with the controller (Work held on arrival, Results held before they leave).
    6: ctl_delay_ms on the other tiers too: each tier holds the Results it sends the controller;
       only the first tier also holds the Work arriving on its data socket (a version-5 edge agent
       would have held the offloads it received).
    7: a run's tiers are any names (``TIER_NAME``), two or more, ordered by the bundle: the agent takes
       any valid name, and Configure.first says whether the controller issues Work to this tier (the
       first tier, whose data socket hears the controller), which the tier's name no longer tells.
    8: a split point at every layer: Configure.chain (one graph per layer, in order, from
       Configure.first_layer; Configure.final_layer is the model's last) and Configure.last_layer (the
       layer a tier graph ends at); Work.split (offload after this layer; 0: after the last one held);
       Stage.layer (the last layer the tier ran) and Stage.layer_confidences (the confidence after each
       layer a chain ran, in order; empty for a tier graph).
    9: routing by difficulty pools (DIMEC-DC): Configure.router ([path, sha256] of the first tier's pool
       router; empty: none) and Work.pools ([[tier, threshold], ...] in the tiers' order; empty: route by
       thresholds alone). The first tier runs the router, picks the route by :func:`pool_route` and
       sends the sample on with thresholds that make it exit at that tier. Configure.providers: the
       onnxruntime execution providers to try, in order; Ready.providers says which the graphs took.
       Thermal: temperatures and throttle flags sampled during the run, sent at Stop.
       Configure.next_key: the next tier's CurveZMQ public key, for runs with keys.
    10: CPU shortage mid-run: Configure.cpu_caps (the kinds of :data:`CPU_CAPS` the run will change: the
        agent opens them before Ready, or fails Configure saying why), Limit (a new cap) and Limited (what
        the agent wrote, and when); Stage.throttled_ms (the time the kernel held the agent's cgroup
        throttled since its previous sample left: a CPU cap's stalls, charged to the tier).
        Per-sample routes between tiers: Configure.next_peers ([[device id, endpoint, key], ...], every
        next-tier device a route may name) and Work.route (the device of each later tier, in order,
        chosen per sample by the controller; empty: each agent's configured next device).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, NamedTuple
from typing import Callable as TypingCallable  # a runtime alias: subscriptable on Python 3.8

import msgpack
import numpy as np

PROTOCOL_VERSION = 10
#: the largest message an agent's data socket takes (a Work: a hidden state of 512 tokens x 1024 floats is 2 MiB)
MAX_DATA_BYTES = 64 << 20
#: ... its control socket (Configure, Shape, Stop: a few KiB)
MAX_CONTROL_BYTES = 16 << 20
#: ... and the controller's socket (Results, energy windows, a device's whole power timeline at Stop)
MAX_CONTROLLER_BYTES = 256 << 20
LINKS = ("data", "controller")  # what a Shape message reshapes
#: what a Limit message caps: CPU time in cores (a cgroup quota) or the CPU clock in MHz (cpufreq)
CPU_CAPS = ("cores", "max_freq_mhz")
MEASURES = ("max", "entropy")
AGENT_VERSION = "0.1.0"
#: the three-tier layout (a phone, an edge box, a GPU server) that builders and examples default to;
#: a run's tiers come from its bundle: two or more names, in the order a sample crosses them
DEFAULT_TIERS = ("mobile", "edge", "cloud")
#: a tier name: lower-case letters and digits, so it fits result columns and link names (``mobile_cloud``)
TIER_NAME = re.compile(r"[a-z][a-z0-9]{0,23}")


def tier_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a tier, or None when it can."""
    if isinstance(name, str) and TIER_NAME.fullmatch(name):
        return None
    return (f"{name!r} is not a tier name: use 1-24 lower-case letters and digits, starting with a letter "
            f"(e.g. {', '.join(DEFAULT_TIERS)})")


class ProtocolError(Exception):
    """A message could not be encoded or decoded.

    Attributes:
        kind: the message kind, or ``"?"`` when even that was unreadable.
        problems: one line per missing or bad field.
    """

    def __init__(self, kind: str, problems: list[str]):
        self.kind = kind
        self.problems = list(problems)
        super().__init__(f"bad {kind!r} message: " + "; ".join(self.problems))


def should_exit(threshold: float, confidence: float) -> bool:
    """The exit rule every tier applies: exit when confidence reaches the threshold.

    A threshold of 0 always exits; infinity never does (a Work carries only [0, 1] or infinity).
    Policies in ``testbed/`` compile to these thresholds, so the rule lives here once.
    """
    return confidence >= threshold


def pool_route(probs: list[float], pools: list[Any]) -> str:
    """The tier a pool router sends a sample to: "" for the last tier.

    ``probs``: the router's probability of each pool, easiest first; ``pools``: [[tier, threshold],
    ...] for every tier but the last, in order. Tier i takes the sample when the probability that
    it is in one of the first i+1 pools reaches its threshold; the first such tier wins.
    """
    cumulative = 0.0
    for i, (tier, threshold) in enumerate(pools):
        cumulative += probs[i] if i < len(probs) else 0.0
        if cumulative >= threshold:
            return str(tier)
    return ""


def route_ok(value: Any) -> bool:
    """A Work's route: a list of at most 16 device ids of at most 64 characters."""
    return type(value) is list and len(value) <= 16 and all(type(x) is str and 0 < len(x) <= 64 for x in value)


def peers_ok(value: Any) -> bool:
    """Configure's next_peers: [[device id, endpoint, key], ...], strings each, at most 256 of them."""
    return type(value) is list and len(value) <= 256 and all(
        type(e) is list and len(e) == 3 and all(type(x) is str and len(x) <= 256 for x in e) for e in value)


def pools_ok(value: Any) -> bool:
    """Pool thresholds as a Work carries them: a list of [tier name, number not NaN]."""
    return type(value) is list and all(
        type(e) is list and len(e) == 2 and type(e[0]) is str and threshold_ok(e[1]) for e in value)


# --------------------------------------------------------------------------- messages


class Stage(NamedTuple):
    """What one tier did to one sample; all times are ``time.time_ns`` on that agent.

    A named tuple, not a dataclass: immutable all the same, and built, packed and unpacked at
    C speed on the per-sample path (it travels as the positional list it is).

    ``energy_j`` covers the compute window (start_ns to end_ns) on that device's meter;
    ``energy_net_j`` is what it took above the device's measured idle power. With batch
    windows (``energy_batch`` >= 0) both are NaN here: the window's :class:`EnergyWindow`
    carries the energy, and the controller shares it out.

    ``frame_bytes_in`` is the whole message this tier received (all frames: header and
    tensors); ``wire_in_bytes`` is what the interface this sample arrived through took in
    since the previous arrival (-1: not measured, e.g. an interface shared with other traffic).
    """

    tier: str
    device: str
    recv_ns: int
    start_ns: int
    end_ns: int
    send_ns: int
    confidence: float
    prediction: int
    exited: bool
    bytes_out: int
    energy_j: float  # NaN when the device has no meter
    energy_approx: bool
    energy_net_j: float  # energy_j minus idle power over the window; NaN without a baseline
    frame_bytes_in: int  # bytes of all frames of the Work message this tier received
    wire_in_bytes: int  # interface rx bytes since the previous arrival on this hop; -1: not measured
    energy_batch: int  # the agent's energy window holding this sample; -1: its own window (energy above)
    layer: int = 0  # the last layer this tier ran (0: not said)
    layer_confidences: list = []  # a chain's confidence after each layer it ran, in order; [] for a tier graph
    throttled_ms: float = -1.0  # CPU-cap throttling of this agent since its previous sample left (-1: no cap)


@dataclass(frozen=True)
class Hello:
    """First message of an agent: who it is, where its data socket listens, host facts."""

    KIND: ClassVar[str] = "hello"
    agent_id: str
    tier: str
    agent_version: str
    protocol_version: int
    data_endpoint: str
    facts: dict[str, Any]


@dataclass(frozen=True)
class Heartbeat:
    """Liveness, sent both ways every ``heartbeat_s``."""

    KIND: ClassVar[str] = "heartbeat"
    sender: str
    t_ns: int


@dataclass(frozen=True)
class Configure:
    """Tell an agent which partition to load and where to offload to.

    ``offload`` maps a local tensor (an output of the partition, or an input passed
    through) to the input name it takes at the next tier.
    """

    KIND: ClassVar[str] = "configure"
    seq: int
    partition_path: str
    sha256: str
    logits_name: str
    offload: dict[str, str]
    next_endpoint: str
    threads: int
    idle_s: float = 0.0  # measure idle power this long before Ready (0: no baseline)
    delay_ms: float = 0.0  # userspace shaping: hold each offload this long before sending (kept in order)
    jitter_ms: float = 0.0  # ... plus a uniform draw in [-jitter, +jitter]
    wire_in_iface: str = ""  # count rx bytes of this interface per arriving sample ("": do not)
    batch_samples: int = 1  # samples per energy window (1 with min_window_s 0: one window per sample)
    min_window_s: float = 0.0  # an energy window also stays open at least this long
    # userspace shaping of the tier's link with the controller: each Result leaves ctl_delay_ms (+- ctl_jitter_ms)
    # late; on the first tier (whose data socket hears the controller) each Work also counts as received as late
    ctl_delay_ms: float = 0.0
    ctl_jitter_ms: float = 0.0
    first: bool = False  # this is the first tier: the controller issues Work to its data socket
    last_layer: int = 0  # the layer this tier's graph ends at (stamped into its stages)
    chain: list = field(default_factory=list)  # [[path, sha256], ...]: one graph per layer instead of a tier graph
    first_layer: int = 0  # the layer chain[0] runs
    final_layer: int = 0  # the model's last layer: a chain that reaches it exits there
    router: list = field(default_factory=list)  # [path, sha256] of the pool router (first tier, DIMEC-DC)
    providers: list = field(default_factory=list)  # onnxruntime execution providers to try, in order (empty: CPU)
    next_key: str = ""  # the next tier's CurveZMQ public key (z85), where the run has keys
    cpu_caps: list = field(default_factory=list)  # CPU_CAPS kinds the run changes on this device (opened now)
    next_peers: list = field(default_factory=list)  # [[device id, endpoint, key], ...]: what a Work.route may name


@dataclass(frozen=True)
class Ready:
    """The partition is loaded and the offload socket connected."""

    KIND: ClassVar[str] = "ready"
    agent_id: str
    seq: int
    load_ms: float
    inputs: list[str]
    outputs: list[str]
    providers: list[str]
    idle_w: float = math.nan  # measured idle power; NaN without a meter or a baseline


@dataclass(frozen=True)
class Failure:
    """An agent could not do what it was asked; ``what`` says what and what to try."""

    KIND: ClassVar[str] = "failure"
    agent_id: str
    stage: str
    what: str


@dataclass(frozen=True)
class Ping:
    """Clock-offset probe: the agent answers with its own wall clock."""

    KIND: ClassVar[str] = "ping"
    seq: int


@dataclass(frozen=True)
class Pong:
    """Answer to :class:`Ping`."""

    KIND: ClassVar[str] = "pong"
    agent_id: str
    seq: int
    t_ns: int


@dataclass(frozen=True)
class Work:
    """One sample travelling down the tiers; each tier appends a :class:`Stage`.

    ``thresholds`` maps tier to its exit threshold (see :func:`should_exit`); the
    last tier always exits. ``measure`` is the confidence the rule compares: ``max``
    (max softmax) or ``entropy`` (1 - normalised entropy of the softmax).
    """

    KIND: ClassVar[str] = "work"
    run_seq: int
    sample_id: int
    tensors: dict[str, np.ndarray]
    thresholds: dict[str, float]
    stages: list[Stage] = field(default_factory=list)
    measure: str = "max"
    split: int = 0  # with a chain: offload after this layer unless the sample exits by then (0: the chain's end)
    pools: list = field(default_factory=list)  # [[tier, threshold], ...]: the first tier routes by its pool router
    route: list = field(default_factory=list)  # device id of each later tier, in order ([]: the configured ones)


@dataclass(frozen=True)
class Result:
    """The answer, sent to the controller by whichever tier finished the sample."""

    KIND: ClassVar[str] = "result"
    agent_id: str
    run_seq: int
    sample_id: int
    logits: np.ndarray
    stages: list[Stage]


@dataclass(frozen=True)
class Timeline:
    """A device's power timeline, sent at Stop by agents whose meter samples power.

    ``times_s`` are the agent's monotonic seconds; ``wall_minus_mono_ns`` maps them to its
    wall clock (``time_ns() - monotonic_ns()`` when sent).
    """

    KIND: ClassVar[str] = "timeline"
    agent_id: str
    source: str
    wall_minus_mono_ns: int
    times_s: np.ndarray
    rails_w: dict[str, np.ndarray]


@dataclass(frozen=True)
class Shape:
    """A link schedule step: from now on, hold messages ``delay_ms`` (+- ``jitter_ms``).

    ``link``: ``data``, the offloads to the next tier; ``controller``, the tier's link with the
    controller (as :class:`Configure`'s ``ctl_delay_ms``: the Results, and on the first tier the
    Work arriving too).
    """

    KIND: ClassVar[str] = "shape"
    seq: int
    delay_ms: float
    jitter_ms: float
    link: str = "data"


@dataclass(frozen=True)
class Limit:
    """A CPU schedule step: cap this device's ``kind`` (:data:`CPU_CAPS`) at ``value``; 0 lifts the cap."""

    KIND: ClassVar[str] = "limit"
    seq: int
    kind: str
    value: float


@dataclass(frozen=True)
class Limited:
    """The answer to :class:`Limit`: what the agent wrote (``applied``) at its wall clock ``t_ns``."""

    KIND: ClassVar[str] = "limited"
    agent_id: str
    seq: int
    kind: str
    value: float
    applied: str
    t_ns: int


@dataclass(frozen=True)
class Flush:
    """Close the open energy window now; the agent answers with its window, then :class:`Flushed`."""

    KIND: ClassVar[str] = "flush"
    seq: int


@dataclass(frozen=True)
class EnergyWindow:
    """One energy window of an agent that spans several samples (batch windows).

    ``run_seqs`` and ``compute_ns`` list the samples computed in it and their onnxruntime
    time; the controller shares ``energy_j`` out in proportion to ``compute_ns``.
    ``start_ns``/``end_ns`` are the meter window on the agent's wall clock: it begins just before
    the first sample's compute and ends after the last one's, or when a Flush, Stop or Configure
    closes it, so the gaps between samples (and before a flush) are in it.
    """

    KIND: ClassVar[str] = "energy_window"
    agent_id: str
    batch: int
    start_ns: int
    end_ns: int
    energy_j: float  # NaN without a meter
    energy_net_j: float  # NaN without an idle baseline
    approx: bool
    run_seqs: list[int]
    compute_ns: list[int]


@dataclass(frozen=True)
class Flushed:
    """Every window closed before this message has been sent."""

    KIND: ClassVar[str] = "flushed"
    agent_id: str
    seq: int


@dataclass(frozen=True)
class Stop:
    """Ask an agent to exit."""

    KIND: ClassVar[str] = "stop"
    reason: str


@dataclass(frozen=True)
class Bye:
    """An agent's last word before it exits."""

    KIND: ClassVar[str] = "bye"
    agent_id: str
    served: int


#: the bits of a Raspberry Pi's ``get_throttled`` that say it is limited right now (under-voltage, capped
#: frequency, throttled, soft temperature limit)
THROTTLED_NOW = 0xF


@dataclass(frozen=True)
class Thermal:
    """A device's temperatures and throttle flags over the run, sent at Stop (where it has any).

    ``times_s`` are the agent's monotonic seconds (``wall_minus_mono_ns`` maps them to its wall
    clock); ``temps_c`` zone -> degrees C; ``throttled`` the Pi firmware's flags per sample
    (-1: none or unreadable).
    """

    KIND: ClassVar[str] = "thermal"
    agent_id: str
    wall_minus_mono_ns: int
    times_s: np.ndarray
    temps_c: dict[str, np.ndarray]
    throttled: np.ndarray


MESSAGES: dict[str, type] = {
    cls.KIND: cls
    for cls in (Hello, Heartbeat, Configure, Ready, Failure, Ping, Pong, Work, Result, Timeline, Thermal, Shape,
                Limit, Limited, Flush, EnergyWindow, Flushed, Stop, Bye)
}

Frames = List[Any]  # bytes, memoryview or zmq.Frame: anything with the buffer protocol
_STAGE_FIELDS = list(Stage._fields)


# --------------------------------------------------------------------------- encode


def _packb(obj: Any) -> bytes:
    # a Packer per call (msgpack.packb): a shared one would be state that two threads could interleave
    return msgpack.packb(obj, use_bin_type=True)


def _pack_array(a: np.ndarray, frames: Frames) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    frames.append(memoryview(a.data).cast("B"))
    return {"dtype": a.dtype.str, "shape": a.shape, "frame": len(frames) - 1}


def _to_wire(value: Any, frames: Frames) -> Any:
    """Generic encoder for nested maps and lists (Hello facts and the like)."""
    if isinstance(value, np.ndarray):
        return _pack_array(value, frames)
    if isinstance(value, dict):
        return {k: _to_wire(v, frames) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_wire(v, frames) for v in value]
    return value


def _enc_arrays(value: dict[str, np.ndarray], frames: Frames) -> dict[str, Any]:
    return {k: _pack_array(v, frames) for k, v in value.items()}


def _enc_stages(value: list[Stage], frames: Frames) -> list[Stage]:
    return value  # tuples: msgpack packs them as the positional lists they are


def _enc_plain(value: Any, frames: Frames) -> Any:
    return value


def _encoder(type_name: str) -> Callable[[Any, Frames], Any]:
    table: dict[str, Callable[[Any, Frames], Any]] = {
        "np.ndarray": _pack_array, "dict[str, np.ndarray]": _enc_arrays, "list[Stage]": _enc_stages,
        "str": _enc_plain, "int": _enc_plain, "float": _enc_plain, "bool": _enc_plain}
    return table.get(type_name, _to_wire)


# Per kind: (field name, encoder); compiled once.
_ENCODERS: dict[str, list[tuple[str, Callable[[Any, Frames], Any]]]] = {
    kind: [(f.name, _encoder(str(f.type))) for f in dataclasses.fields(cls)] for kind, cls in MESSAGES.items()
}


def _encode_work(msg: Work) -> Frames:
    """:func:`encode` of a Work, field by field without the per-field encoder calls (the per-sample path)."""
    frames: Frames = [b""]
    body = {"run_seq": msg.run_seq, "sample_id": msg.sample_id,
            "tensors": {k: _pack_array(v, frames) for k, v in msg.tensors.items()},
            "thresholds": msg.thresholds, "stages": msg.stages, "measure": msg.measure, "split": msg.split,
            "pools": msg.pools, "route": msg.route}
    frames[0] = _packb({"v": PROTOCOL_VERSION, "kind": "work", "body": body})
    return frames


def _encode_result(msg: Result) -> Frames:
    """:func:`encode` of a Result, as :func:`_encode_work`."""
    frames: Frames = [b""]
    body = {"agent_id": msg.agent_id, "run_seq": msg.run_seq, "sample_id": msg.sample_id,
            "logits": _pack_array(msg.logits, frames), "stages": msg.stages}
    frames[0] = _packb({"v": PROTOCOL_VERSION, "kind": "result", "body": body})
    return frames


def encode(msg: Any) -> Frames:
    """Serialise a message dataclass to frames for ``send_multipart``."""
    cls = type(msg)
    if cls is Work:
        return _encode_work(msg)
    if cls is Result:
        return _encode_result(msg)
    return encode_generic(msg)


def encode_generic(msg: Any) -> Frames:
    """:func:`encode` through the per-field encoders, for every kind (Work and Result have faster twins)."""
    kind = getattr(msg, "KIND", None)
    if kind not in MESSAGES or not isinstance(msg, MESSAGES[kind]):
        raise ProtocolError(str(kind or type(msg).__name__), ["not a protocol message"])
    frames: Frames = [b""]
    body = {name: enc(getattr(msg, name), frames) for name, enc in _ENCODERS[kind]}
    frames[0] = _packb({"v": PROTOCOL_VERSION, "kind": kind, "body": body})
    return frames


def wire_size(frames: Frames) -> int:
    """Bytes of all frames together."""
    return sum(memoryview(f).nbytes if not hasattr(f, "bytes") else len(f.bytes) for f in frames)


# --------------------------------------------------------------------------- decode

Converter = TypingCallable[[Any, Frames], Any]


#: the tensor types a message may carry (little-endian as numpy writes them): anything else is refused
ALLOWED_DTYPES = frozenset(np.dtype(t).str for t in ("float16", "float32", "float64", "int8", "int16", "int32",
                                                     "int64", "uint8", "bool"))
MAX_TENSOR_DIMS = 8
_DTYPES: dict[str, np.dtype] = {}


def _unpack_array(obj: Any, frames: Frames) -> np.ndarray:
    try:
        name = obj["dtype"]
        if name not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {str(name)[:20]!r} is not one of {sorted(ALLOWED_DTYPES)}")
        dtype = _DTYPES.get(name) or _DTYPES.setdefault(name, np.dtype(name))
        shape = tuple(obj["shape"])
        if len(shape) > MAX_TENSOR_DIMS:
            raise ValueError(f"{len(shape)} dimensions, at most {MAX_TENSOR_DIMS}")
        i = obj["frame"]
        if type(i) is not int or i < 1:  # frame 0 is the header
            raise ValueError(f"frame {i!r} is not a tensor frame")
        frame = frames[i]
        for n in shape:
            if type(n) is not int or n < 0:
                raise ValueError(f"shape {shape} is not a list of sizes")
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"bad array header {obj!r}: expected dtype, shape and frame ({e})") from e
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    expected = dtype.itemsize * math.prod(shape)
    if buf.nbytes != expected:
        raise ValueError(f"{buf.nbytes} bytes for shape {shape} {dtype}, expected {expected}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _fast_stages(value: Any) -> list[Stage] | None:
    """The stages of a Work or Result when every one is a list of the right length; None otherwise."""
    if type(value) is not list:
        return None
    n = len(_STAGE_FIELDS)
    for s in value:
        if type(s) is not list or len(s) != n:
            return None
    return [Stage(*s) for s in value]


def threshold_ok(v: Any) -> bool:
    """A threshold as the exit rule takes it: a number in [0, 1], or infinity (never exit)."""
    return type(v) in (int, float) and (0 <= v <= 1 or v == math.inf)


def thresholds_ok(value: Any) -> bool:
    """Exit thresholds as a Work carries them: names to :func:`threshold_ok` numbers."""
    return type(value) is dict and all(type(k) is str and threshold_ok(v) for k, v in value.items())


def _decode_work(body: dict[str, Any], frames: Frames) -> Work | None:
    """A well-formed Work, checked as the generic path checks it, with no per-field calls.

    The per-sample path. None when anything is off, so that the generic path names every problem.
    """
    try:
        run_seq, sample_id, tensors, thresholds = body["run_seq"], body["sample_id"], body["tensors"], body[
            "thresholds"]
        stages = _fast_stages(body.get("stages", []))
        measure, split, pools = body.get("measure", "max"), body.get("split", 0), body.get("pools", [])
        route = body.get("route", [])
        if (type(run_seq) is not int or type(sample_id) is not int or type(tensors) is not dict
                or not thresholds_ok(thresholds) or stages is None or measure not in MEASURES
                or type(split) is not int or split < 0 or not pools_ok(pools) or not route_ok(route)):
            return None
        return Work(run_seq, sample_id, {k: _unpack_array(v, frames) for k, v in tensors.items()}, thresholds,
                    stages, measure, split, pools, route)
    except (KeyError, TypeError, ValueError):
        return None


def _decode_result(body: dict[str, Any], frames: Frames) -> Result | None:
    """A well-formed Result, as :func:`_decode_work`."""
    try:
        agent_id, run_seq, sample_id = body["agent_id"], body["run_seq"], body["sample_id"]
        stages = _fast_stages(body["stages"])
        if type(agent_id) is not str or type(run_seq) is not int or type(sample_id) is not int or stages is None:
            return None
        return Result(agent_id, run_seq, sample_id, _unpack_array(body["logits"], frames), stages)
    except (KeyError, TypeError, ValueError):
        return None


_FAST_DECODERS: dict[str, Callable[[dict[str, Any], Frames], Any]] = {"work": _decode_work,
                                                                        "result": _decode_result}


def _scalar(types: tuple[type, ...], name: str, to_float: bool = False) -> Converter:
    def convert(value: Any, frames: Frames) -> Any:
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise ValueError(f"expected {name}, got {type(value).__name__}")
        return float(value) if to_float else value
    return convert


def _container(kind: type, name: str) -> Converter:
    def convert(value: Any, frames: Frames) -> Any:
        if not isinstance(value, kind):
            raise ValueError(f"expected {name}, got {type(value).__name__}")
        return value
    return convert


def _arrays(value: Any, frames: Frames) -> dict[str, np.ndarray]:
    if not isinstance(value, dict):
        raise ValueError("expected a map of arrays")
    out = {}
    for k, v in value.items():
        try:
            out[k] = _unpack_array(v, frames)
        except ValueError as e:
            raise ValueError(f"[{k}]: {e}") from e
    return out


def _thresholds(value: Any, frames: Frames) -> dict[str, float]:
    if not thresholds_ok(value):
        raise ValueError("expected a map of names to numbers in [0, 1] (0: always exit) or inf (never exit)")
    return {k: float(v) for k, v in value.items()}


def _stages(value: Any, frames: Frames) -> list[Stage]:
    if not isinstance(value, list) or not all(isinstance(s, list) and len(s) == len(_STAGE_FIELDS) for s in value):
        raise ValueError(f"expected a list of stages of {len(_STAGE_FIELDS)} fields each")
    return [Stage(*s) for s in value]


_CONVERTERS: dict[str, Converter] = {
    "str": _scalar((str,), "str"),
    "int": _scalar((int,), "int"),
    "float": _scalar((int, float), "float", to_float=True),
    "bool": _scalar((bool,), "bool"),
    "np.ndarray": _unpack_array,
    "dict[str, np.ndarray]": _arrays,
    "list[Stage]": _stages,
    "dict[str, float]": _thresholds,
}


def _converter(type_name: str) -> Converter:
    if type_name in _CONVERTERS:
        return _CONVERTERS[type_name]
    if type_name.startswith("dict"):
        return _container(dict, "a map")
    if type_name.startswith("list"):
        return _container(list, "a list")
    raise TypeError(f"no wire converter for {type_name}")


# Per kind: field name -> (converter, required); compiled once, used on every message.
_FIELDS: dict[str, dict[str, tuple[Converter, bool]]] = {
    kind: {f.name: (_converter(str(f.type)),
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
           for f in dataclasses.fields(cls)}
    for kind, cls in MESSAGES.items()
}


_SINGLE_FRAME = (bytes, bytearray, memoryview)


def decode(frames: Frames | bytes, fast: bool = True) -> Any:
    """Parse frames (or a single bytes frame) into a message dataclass, checking every field.

    ``fast``: a well-formed Work or Result takes a path with no per-field calls; anything off in
    it falls back to the per-field converters, which name every problem (``False``: always them).

    Raises:
        ProtocolError: naming the kind and each missing or bad field, or a version mismatch.
    """
    if isinstance(frames, _SINGLE_FRAME):
        frames = [frames]
    if not frames:
        raise ProtocolError("?", ["no frames"])
    head = frames[0]
    try:
        frame = msgpack.unpackb(head.buffer if hasattr(head, "buffer") else head, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError("?", [f"not msgpack: {e}"]) from e
    if not isinstance(frame, dict) or "kind" not in frame or "body" not in frame:
        raise ProtocolError("?", ["frame lacks 'kind' or 'body'"])
    kind = frame["kind"]
    if frame.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(str(kind), [f"protocol version {frame.get('v')!r}, this side speaks {PROTOCOL_VERSION}"])
    fields = _FIELDS.get(kind)
    if fields is None:
        raise ProtocolError(str(kind), [f"unknown kind; known: {', '.join(sorted(MESSAGES))}"])
    body = frame["body"]
    if not isinstance(body, dict):
        raise ProtocolError(kind, ["body is not a map"])
    quick = _FAST_DECODERS.get(kind) if fast else None
    if quick is not None and (msg := quick(body, frames)) is not None:
        return msg
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, (convert, required) in fields.items():
        if name not in body:
            if required:
                problems.append(f"{name}: missing")
            continue
        try:
            values[name] = convert(body[name], frames)
        except Exception as e:  # noqa: BLE001 - numpy and msgpack raise many types on hostile input
            problems.append(f"{name}: {str(e)[:200]}")
    problems += _semantic_problems(kind, values)
    if problems:
        raise ProtocolError(kind, problems)
    return MESSAGES[kind](**values)


def _semantic_problems(kind: str, values: dict[str, Any]) -> list[str]:
    """What well-typed fields may still get wrong: values outside what the receiver can act on."""
    problems = []
    if values.get("measure", "max") not in MEASURES:
        problems.append(f"measure: {str(values['measure'])[:20]!r} is not one of {MEASURES}")
    if kind == "limit" and values.get("kind") not in CPU_CAPS:
        problems.append(f"kind: {str(values.get('kind'))[:20]!r} is not one of {CPU_CAPS}")
    caps = values.get("cpu_caps")
    if caps and not all(c in CPU_CAPS for c in caps):
        problems.append(f"cpu_caps: {str(caps)[:60]} names kinds other than {CPU_CAPS}")
    for name in ("split", "delay_ms", "jitter_ms", "value", "ctl_delay_ms", "ctl_jitter_ms", "idle_s", "min_window_s",
                 "first_layer", "final_layer", "last_layer"):
        v = values.get(name)
        if v is not None and (v != v or v < 0):
            problems.append(f"{name}: {v} must be a non-negative number")
    if "route" in values and not route_ok(values["route"]):
        problems.append(f"route: {str(values['route'])[:60]} is not a list of at most 16 device ids")
    if "next_peers" in values and not peers_ok(values["next_peers"]):
        problems.append(f"next_peers: {str(values['next_peers'])[:60]} is not [[device id, endpoint, key], ...]")
    if "pools" in values and not pools_ok(values["pools"]):
        problems.append(f"pools: {str(values['pools'])[:60]} is not a list of [tier, threshold]")
    prov = values.get("providers")
    if prov and not all(type(x) is str and x.endswith("ExecutionProvider") and len(x) <= 64 for x in prov):
        problems.append(f"providers: {str(prov)[:80]} is not a list of onnxruntime execution provider names")
    if values.get("next_key") and len(values["next_key"]) != 40:
        problems.append("next_key: not a 40-character z85 public key")
    router = values.get("router")
    if router and not (len(router) == 2 and all(type(x) is str for x in router)):
        problems.append(f"router: {str(router)[:60]} is not [path, sha256]")
    if kind == "configure" and values.get("threads", 1) < 1:
        problems.append(f"threads: {values['threads']} must be at least 1")
    return problems
