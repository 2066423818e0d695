"""Wire protocol between the controller and the agents, and between agents.

Every message is a frozen dataclass with a ``KIND``. On the wire a message is one
msgpack map ``{"v": PROTOCOL_VERSION, "kind": KIND, "body": {...}}``; numpy arrays
travel as raw bytes plus dtype and shape. ``decode`` checks every field at once and
raises ``ProtocolError`` naming the message kind and the missing or bad fields.

This module is the only one that ``testbed/`` imports from ``agents/``; it must stay
free of anything but the standard library, numpy and msgpack.

Format history:
    1: Hello, Heartbeat, Configure, Ready, Failure, Ping, Pong, Work, Result, Stop, Bye.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
AGENT_VERSION = "0.1.0"
TIERS = ("mobile", "edge", "cloud")


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

    A threshold of 0 always exits; one above 1 (or infinite) never does.
    Policies in ``testbed/`` compile to these thresholds, so the rule lives here once.
    """
    return confidence >= threshold


# --------------------------------------------------------------------------- arrays


def pack_array(a: np.ndarray) -> dict[str, Any]:
    """Represent an array as dtype, shape and its raw C-order bytes."""
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def unpack_array(obj: Any, where: str) -> np.ndarray:
    """Rebuild an array packed by :func:`pack_array`; ``where`` names it in errors."""
    if not isinstance(obj, dict) or not {"dtype", "shape", "data"} <= obj.keys():
        raise ValueError(f"{where}: expected an array map with dtype, shape and data")
    try:
        dtype = np.dtype(obj["dtype"])
        shape = tuple(int(s) for s in obj["shape"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad dtype/shape ({e})") from e
    expected = dtype.itemsize * math.prod(shape)
    if len(obj["data"]) != expected:
        raise ValueError(f"{where}: {len(obj['data'])} bytes for shape {shape} {dtype}, expected {expected}")
    return np.frombuffer(obj["data"], dtype=dtype).reshape(shape)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Stage:
    """What one tier did to one sample; all times are ``time.time_ns`` on that agent."""

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
    exit_layer: int
    logits_name: str
    offload: dict[str, str]
    next_endpoint: str
    threads: int


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
    last tier always exits.
    """

    KIND: ClassVar[str] = "work"
    run_seq: int
    sample_id: int
    tensors: dict[str, np.ndarray]
    thresholds: dict[str, float]
    stages: list[Stage] = field(default_factory=list)


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


MESSAGES: dict[str, type] = {
    cls.KIND: cls
    for cls in (Hello, Heartbeat, Configure, Ready, Failure, Ping, Pong, Work, Result, Stop, Bye)
}

_SIMPLE = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _to_wire(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return pack_array(value)
    if isinstance(value, Stage):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(v) for v in value]
    return value


def encode(msg: Any) -> bytes:
    """Serialise a message dataclass to bytes."""
    kind = getattr(msg, "KIND", None)
    if kind not in MESSAGES or not isinstance(msg, MESSAGES[kind]):
        raise ProtocolError(str(kind or type(msg).__name__), ["not a protocol message"])
    body = {f.name: _to_wire(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": kind, "body": body}, use_bin_type=True)


def _check(kind: str, name: str, type_name: str, value: Any) -> tuple[Any, str | None]:
    """Convert one field from wire form; return (value, problem)."""
    where = f"{kind}.{name}"
    try:
        if type_name in _SIMPLE:
            ok = isinstance(value, _SIMPLE[type_name]) and not (
                type_name in ("int", "float") and isinstance(value, bool)
            )
            return (float(value) if type_name == "float" and ok else value), (
                None if ok else f"{name}: expected {type_name}, got {type(value).__name__}"
            )
        if type_name == "np.ndarray":
            return unpack_array(value, where), None
        if type_name == "dict[str, np.ndarray]":
            if not isinstance(value, dict):
                return None, f"{name}: expected a map of arrays"
            return {k: unpack_array(v, f"{where}[{k}]") for k, v in value.items()}, None
        if type_name == "list[Stage]":
            if not isinstance(value, list):
                return None, f"{name}: expected a list of stages"
            return [Stage(**s) for s in value], None
        if type_name.startswith("dict"):
            return value, None if isinstance(value, dict) else f"{name}: expected a map"
        if type_name.startswith("list"):
            return value, None if isinstance(value, list) else f"{name}: expected a list"
    except (TypeError, ValueError) as e:
        return None, f"{name}: {e}"
    return value, None


def decode(data: bytes) -> Any:
    """Parse bytes into a message dataclass, checking every field.

    Raises:
        ProtocolError: naming the kind and each missing or bad field, or a version mismatch.
    """
    try:
        frame = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError("?", [f"not msgpack: {e}"]) from e
    if not isinstance(frame, dict) or "kind" not in frame or "body" not in frame:
        raise ProtocolError("?", ["frame lacks 'kind' or 'body'"])
    kind = frame["kind"]
    if frame.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(str(kind), [f"protocol version {frame.get('v')!r}, this side speaks {PROTOCOL_VERSION}"])
    cls = MESSAGES.get(kind)
    if cls is None:
        raise ProtocolError(str(kind), [f"unknown kind; known: {', '.join(sorted(MESSAGES))}"])
    body = frame["body"]
    if not isinstance(body, dict):
        raise ProtocolError(kind, ["body is not a map"])
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(cls):
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{f.name}: missing")
            continue
        value, problem = _check(kind, f.name, str(f.type), body[f.name])
        if problem:
            problems.append(problem)
        values[f.name] = value
    if problems:
        raise ProtocolError(kind, problems)
    return cls(**values)
