import dataclasses

import msgpack
import numpy as np
import pytest

from agents import protocol as p


def _stage(tier="mobile"):
    return p.Stage(tier, f"{tier}-1", 10, 20, 30, 40, 0.75, 2, False, 1234, 0.5, False, 0.25, 2000, 2100, -1)


MESSAGES = [
    p.Hello("mobile-1", "mobile", p.AGENT_VERSION, p.PROTOCOL_VERSION, "tcp://127.0.0.1:5000", {"cores": 4}),
    p.Heartbeat("controller", 123),
    p.Configure(1, "/x/mobile.onnx", "ab" * 32, "logits", {"hidden_out": "hidden"}, "tcp://127.0.0.1:1", 1),
    p.Ready("edge-1", 1, 12.5, ["hidden"], ["logits"], ["CPUExecutionProvider"], 3.5),
    p.Failure("edge-1", "configure", "no such file"),
    p.Ping(3),
    p.Pong("cloud-1", 3, 99),
    p.Stop("done"),
    p.Bye("cloud-1", 7),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.KIND)
def test_round_trip(msg):
    assert p.decode(p.encode(msg)) == msg


def test_work_round_trip_keeps_arrays_bit_exact():
    hidden = np.random.default_rng(0).normal(size=(1, 7, 384)).astype(np.float32)
    mask = np.ones((1, 7), np.int64)
    work = p.Work(5, 42, {"hidden": hidden, "attention_mask": mask}, {"mobile": 0.9, "edge": float("inf")},
                  [_stage()])
    back = p.decode(p.encode(work))
    assert back.tensors["hidden"].dtype == np.float32 and back.tensors["hidden"].shape == (1, 7, 384)
    assert np.array_equal(back.tensors["hidden"], hidden)
    assert np.array_equal(back.tensors["attention_mask"], mask)
    assert back.thresholds["edge"] == float("inf")
    assert back.stages == [_stage()]


def test_result_round_trip():
    r = p.Result("cloud-1", 1, 2, np.array([[0.1, 2.0, -1.0]], np.float32), [_stage("mobile"), _stage("edge")])
    back = p.decode(p.encode(r))
    assert np.array_equal(back.logits, r.logits) and back.stages == r.stages


def _frame(kind, body, v=p.PROTOCOL_VERSION):
    return msgpack.packb({"v": v, "kind": kind, "body": body}, use_bin_type=True)


def test_tensors_travel_out_of_band_and_decode_without_copy():
    hidden = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    frames = p.encode(p.Work(1, 1, {"hidden": hidden}, {}))
    assert len(frames) == 2 and bytes(frames[1]) == hidden.tobytes()
    assert len(frames[0]) < 200  # the header stays small whatever the tensor size
    back = p.decode([bytes(f) for f in frames])
    assert not back.tensors["hidden"].flags.owndata  # a view on the received frame
    assert p.wire_size(frames) == len(frames[0]) + hidden.nbytes


def test_decode_names_kind_and_every_missing_field():
    with pytest.raises(p.ProtocolError) as e:
        p.decode(_frame("hello", {"agent_id": "m", "tier": "mobile"}))
    assert e.value.kind == "hello"
    missing = {x.split(":")[0] for x in e.value.problems}
    assert missing == {"agent_version", "protocol_version", "data_endpoint", "facts"}


def test_decode_names_bad_types():
    with pytest.raises(p.ProtocolError) as e:
        p.decode(_frame("ping", {"seq": "three"}))
    assert e.value.kind == "ping" and "seq: expected int, got str" in str(e.value)


def test_decode_rejects_array_with_wrong_byte_count():
    bad = {"dtype": "<f4", "shape": [2, 2], "frame": 1}
    with pytest.raises(p.ProtocolError) as e:
        p.decode([_frame("result", {"agent_id": "c", "run_seq": 1, "sample_id": 1, "logits": bad, "stages": []}),
                  b"\x00" * 12])
    assert "logits" in str(e.value) and "12 bytes" in str(e.value)


def test_decode_rejects_other_version_and_unknown_kind_and_garbage():
    with pytest.raises(p.ProtocolError, match="protocol version 99"):
        p.decode(_frame("ping", {"seq": 1}, v=99))
    with pytest.raises(p.ProtocolError, match="unknown kind"):
        p.decode(_frame("teleport", {}))
    with pytest.raises(p.ProtocolError, match="not msgpack|lacks"):
        p.decode(b"\xc1garbage")
    with pytest.raises(p.ProtocolError, match="frame"):
        p.decode([_frame("result", {"agent_id": "c", "run_seq": 1, "sample_id": 1, "stages": [],
                                    "logits": {"dtype": "<f4", "shape": [1], "frame": 5}})])
    with pytest.raises(p.ProtocolError, match="stages"):
        p.decode(_frame("work", {"run_seq": 1, "sample_id": 1, "tensors": {}, "thresholds": {}, "stages": [[1, 2]]}))


def _sample_work(stages: int = 2) -> p.Work:
    rng = np.random.default_rng(3)
    stage = p.Stage("mobile", "mobile-1", 1, 2, 3, 4, 0.25, 2, False, 4608, float("nan"), False, float("nan"), 900, -1,
                    -1)
    return p.Work(7, 42, {"hidden": rng.standard_normal((1, 3, 384), dtype=np.float32),
                          "attention_mask": np.ones((1, 3), np.int64)}, {"mobile": 0.9, "edge": float("inf")},
                  [stage._replace(tier=f"t{i}") for i in range(stages)], "entropy")


@pytest.mark.parametrize("msg", [
    _sample_work(0), _sample_work(2),
    p.Result("cloud-1", 7, 42, np.arange(3, dtype=np.float32)[None, :], _sample_work(3).stages)])
def test_the_fast_work_and_result_paths_match_the_per_field_ones_byte_for_byte(msg):
    fast, generic = p.encode(msg), p.encode_generic(msg)
    assert [bytes(f) for f in fast] == [bytes(f) for f in generic]
    a, b = p.decode(fast), p.decode(fast, fast=False)
    assert type(a) is type(b) and repr(a.stages) == repr(b.stages) and all(type(s) is p.Stage for s in a.stages)
    arrays = (lambda m: m.tensors) if isinstance(msg, p.Work) else (lambda m: {"logits": m.logits})
    assert all(np.array_equal(arrays(a)[k], arrays(b)[k]) and arrays(a)[k].dtype == arrays(b)[k].dtype
               for k in arrays(b))
    rest = [f.name for f in dataclasses.fields(b) if f.name not in ("tensors", "logits")]
    assert repr([getattr(a, n) for n in rest]) == repr([getattr(b, n) for n in rest])  # NaN stages: by repr


def test_a_bad_work_falls_back_to_the_checks_that_name_every_field():
    """The fast path accepts only what the per-field path would; anything else gets every problem named."""
    hidden = {"dtype": "<f4", "shape": [1, 2], "frame": 1}
    body = {"run_seq": True, "sample_id": "42", "tensors": {"hidden": hidden}, "thresholds": {}, "stages": [[1, 2]]}
    with pytest.raises(p.ProtocolError) as e:
        p.decode([_frame("work", body), b"\x00" * 8])
    assert e.value.kind == "work"
    assert {x.split(":")[0] for x in e.value.problems} == {"run_seq", "sample_id", "stages"}
    with pytest.raises(p.ProtocolError, match="tensors"):  # frame 0 is the header, never a tensor
        p.decode([_frame("work", body | {"run_seq": 1, "sample_id": 1, "stages": [],
                                         "tensors": {"hidden": hidden | {"frame": 0}}}), b"\x00" * 8])


def test_encode_refuses_non_messages():
    with pytest.raises(p.ProtocolError):
        p.encode({"kind": "ping"})


@pytest.mark.parametrize("threshold,conf,expected", [(0.0, 0.1, True), (0.9, 0.9, True), (0.9, 0.89, False),
                                                     (float("inf"), 1.0, False)])
def test_should_exit(threshold, conf, expected):
    assert p.should_exit(threshold, conf) is expected


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("-inf"), float("nan"), "0.5", True])
def test_a_work_threshold_is_in_0_1_or_never(bad):
    w = _sample_work(0)
    for work in (w.__class__(**{**w.__dict__, "thresholds": {"mobile": bad}}),
                 w.__class__(**{**w.__dict__, "pools": [["mobile", bad]]})):
        with pytest.raises(p.ProtocolError, match="thresholds|pools"):
            p.decode(p.encode(work))
    ok = w.__class__(**{**w.__dict__, "thresholds": {"mobile": 0, "edge": 1, "cloud": float("inf")},
                        "pools": [["mobile", 0.4], ["edge", float("inf")]]})
    got = p.decode(p.encode(ok))
    assert got.thresholds == ok.thresholds and got.pools == ok.pools


def test_a_split_and_the_layers_a_chain_ran_travel_with_the_sample():
    stage = _sample_work(1).stages[0]._replace(layer=3, layer_confidences=[0.41, 0.55, 0.62])
    work = p.Work(7, 42, {"hidden": np.zeros((1, 2, 4), np.float32)}, {"L2": 0.8}, [stage], "max", split=3)
    for decoded in (p.decode(p.encode(work)), p.decode(p.encode_generic(work), fast=False)):
        assert decoded.split == 3 and decoded.stages[0].layer == 3
        assert decoded.stages[0].layer_confidences == [0.41, 0.55, 0.62]
    cfg = p.Configure(1, "", "", "logits", {}, "", 1, chain=[["layers/L1.onnx", "ab"], ["layers/L2.onnx", "cd"]],
                      first_layer=1, final_layer=6, last_layer=0)
    assert p.decode(p.encode(cfg)).chain == [["layers/L1.onnx", "ab"], ["layers/L2.onnx", "cd"]]
    short = p.encode(work)  # a stage of an older version (16 fields) is refused by name
    body = __import__("msgpack").unpackb(short[0], raw=False)
    body["body"]["stages"][0] = body["body"]["stages"][0][:16]
    with pytest.raises(p.ProtocolError, match="stages: expected a list of stages of 19 fields"):
        p.decode([__import__("msgpack").packb(body), *short[1:]])
