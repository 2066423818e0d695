"""Decoding that cannot be crashed: 10,000 generated frames per socket kind raise nothing but ProtocolError.

In `make test`, not `make check` (a minute or two of hypothesis)."""

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import protocol as p

CONTROL = ["configure", "ping", "shape", "flush", "stop", "heartbeat", "hello", "failure"]
DATA = ["work", "result"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                    st.text(max_size=30), st.binary(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
array_headers = st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(["<f4", "<i8", ",i8", "O", "V8", "<U3"]),
                                                          st.text(max_size=6)),
                                       "shape": st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2**64 - 1)),
                                                         max_size=10),
                                       "frame": st.one_of(st.integers(-1, 3), st.integers(-2**63, 2**64 - 1))})


def bodies(kinds):
    field = st.sampled_from(sorted({f.name for k in kinds for f in dataclasses.fields(p.MESSAGES[k])}))
    return st.dictionaries(field, st.one_of(values, array_headers, st.dictionaries(st.text(max_size=8),
                                                                                   array_headers, max_size=3)),
                           max_size=10)


def frames_for(kinds):
    header = st.fixed_dictionaries({"v": st.sampled_from([p.PROTOCOL_VERSION, p.PROTOCOL_VERSION - 1]),
                                    "kind": st.sampled_from(kinds), "body": bodies(kinds)})
    packed = header.map(lambda h: msgpack.packb(h, use_bin_type=True))
    first = st.one_of(packed, st.binary(max_size=40))
    return st.tuples(first, st.lists(st.binary(max_size=64), max_size=3)).map(lambda t: [t[0], *t[1]])


def _decode_or_refuse(frames):
    try:
        msg = p.decode(frames)
    except p.ProtocolError:
        return
    if isinstance(msg, p.Work):
        assert msg.measure in p.MEASURES and msg.split >= 0
        assert all(isinstance(v, float | int) and not math.isnan(v) for v in msg.thresholds.values())
        assert all(a.dtype.str in p.ALLOWED_DTYPES for a in msg.tensors.values())


FUZZ = settings(max_examples=10_000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(frames_for(CONTROL))
def test_control_frames_never_crash_the_decoder(frames):
    _decode_or_refuse(frames)


@FUZZ
@given(frames_for(DATA))
def test_data_frames_never_crash_the_decoder(frames):
    _decode_or_refuse(frames)


@pytest.mark.parametrize("thresholds, measure, problem", [
    ({"mobile": "x"}, "max", "thresholds"), ({"mobile": float("nan")}, "max", "thresholds"),
    ({"mobile": 0.5}, "maximum", "measure")])
def test_the_messages_that_killed_an_agent_are_refused_by_name(thresholds, measure, problem):
    work = p.encode(p.Work(1, 1, {"hidden": np.zeros((1, 2), np.float32)}, {"mobile": 0.5}))
    head = msgpack.unpackb(work[0], raw=False)
    head["body"]["thresholds"], head["body"]["measure"] = thresholds, measure
    with pytest.raises(p.ProtocolError, match=problem):
        p.decode([msgpack.packb(head), *work[1:]])
    head["body"]["thresholds"], head["body"]["measure"] = {}, "max"
    head["body"]["tensors"]["hidden"]["dtype"] = ",i8"  # numpy raised SyntaxError on it
    with pytest.raises(p.ProtocolError, match="dtype"):
        p.decode([msgpack.packb(head), *work[1:]])
    shape = p.encode(p.Shape(1, 5.0, 0.0, "data"))
    head = msgpack.unpackb(shape[0], raw=False)
    head["body"]["delay_ms"] = -5.0
    with pytest.raises(p.ProtocolError, match="delay_ms: -5.0 must be a non-negative number"):
        p.decode([msgpack.packb(head)])
