"""One real agent process driven over real sockets by the test, as the controller would."""

import subprocess
import sys

import numpy as np
import pytest
import zmq

from agents import protocol as p

from conftest import ROOT
from loopback.helpers import env

pytestmark = pytest.mark.loopback


def boards_root(tmp_path):
    """A Raspberry Pi's thermal zone and throttle flags (throttled now) for the agent to sample."""
    import boards

    boards.raspberry_pi_thermal(tmp_path / "pi", 71_000, "0x4")
    return tmp_path / "pi"


@pytest.fixture
def agent(tmp_path, tiny_bundle):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agents", "--controller", f"tcp://127.0.0.1:{port}",
                             "--id", "cloud-9", "--tier", "cloud", "--heartbeat-s", "0.1", "--liveness", "10",
                             "--first-contact-s", "1.5", "--models", str(tiny_bundle.root),
                             "--sysfs-root", str(boards_root(tmp_path)),
                             "--meter", "none"],
                            cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)

    def recv(kind, timeout_ms=20_000):
        while router.poll(timeout_ms):
            ident, *frames = router.recv_multipart()
            msg = p.decode(frames)
            if msg.KIND == kind:
                return ident, msg
        raise AssertionError(f"no {kind} from the agent; log:\n{(tmp_path / 'agent.log').read_text()}")

    yield router, proc, recv
    proc.kill()
    proc.wait()
    router.close(0)
    ctx.term()


def test_hello_heartbeat_configure_serve_stop(agent, tiny_bundle):
    router, proc, recv = agent
    ident, hello = recv("hello")
    assert ident == b"cloud-9" and hello.tier == "cloud" and hello.protocol_version == p.PROTOCOL_VERSION
    assert hello.facts["onnxruntime"] and hello.data_endpoint.startswith("tcp://127.0.0.1:")
    recv("heartbeat")
    send = lambda m: router.send_multipart([ident, *p.encode(m)])  # noqa: E731
    spec = tiny_bundle.tier("cloud")
    path = str(tiny_bundle.root / spec.file)

    send(p.Configure(1, path, "0" * 64, "logits", {}, "", 1))
    _, fail = recv("failure")
    assert fail.stage == "configure" and "stale or corrupt" in fail.what
    for outside in ("/etc/passwd", str(tiny_bundle.root / ".." / "x.onnx"), str(tiny_bundle.root / "bundle.yaml")):
        send(p.Configure(1, outside, "0" * 64, "logits", {}, "", 1))
        _, fail = recv("failure")
        assert "is not an .onnx file under" in fail.what and str(tiny_bundle.root.resolve()) in fail.what

    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(hello.data_endpoint)
    hidden = np.ones((1, 4, 8), np.float32)
    work = p.Work(7, 3, {"hidden": hidden, "attention_mask": np.ones((1, 4), np.int64)}, {})
    push.send_multipart(p.encode(work))
    _, early = recv("failure")
    assert "before Configure" in early.what

    send(p.Configure(2, path, spec.sha256, "logits", {}, "", 1))
    _, ready = recv("ready")
    assert ready.inputs == ["hidden", "attention_mask"] and "logits" in ready.outputs
    push.send_multipart(p.encode(work))
    _, result = recv("result")
    assert result.sample_id == 3 and result.logits.shape == (1, 3)
    assert [s.tier for s in result.stages] == ["cloud"] and result.stages[0].exited
    assert result.stages[0].bytes_out == 12
    assert np.isnan(result.stages[0].energy_j)  # started with --meter none
    assert hello.facts["meter"]["source"] == "none"

    push.send(b"not a message")
    _, bad = recv("failure")
    assert bad.stage == "decode"
    # a frame over the data socket's limit is dropped with its connection; the agent serves the next sender
    big = ctx.socket(zmq.PUSH)
    big.connect(hello.data_endpoint)
    big.send(b"\0" * (p.MAX_DATA_BYTES + 1))
    again = ctx.socket(zmq.PUSH)
    again.connect(hello.data_endpoint)
    again.send_multipart(p.encode(work))
    _, result = recv("result")
    assert result.sample_id == 3
    big.close(0)
    again.close(0)
    assert hello.facts["thermal_zones"] == ["cpu-thermal"] and hello.facts["throttle_flags"] is True
    send(p.Stop("test over"))
    _, thermal = recv("thermal")  # sampled during the run, sent before Bye
    assert list(thermal.temps_c) == ["cpu-thermal"] and thermal.temps_c["cpu-thermal"][0] == 71.0
    assert len(thermal.times_s) >= 1 and (thermal.throttled == 4).all()
    _, bye = recv("bye")
    assert bye.served == 2
    assert proc.wait(10) == 0
    push.close(0)


def test_agent_exits_when_the_controller_goes_silent(agent):
    router, proc, recv = agent
    recv("hello")
    # never answer: after --first-contact-s (1.5 s; the controller starts every agent before it answers
    # any) the agent gives up on its own
    assert proc.wait(20) == 3


def test_a_device_that_cannot_cap_its_cpu_refuses_configure_and_keeps_serving(agent, tiny_bundle):
    """The agent's sysfs is a Pi's thermal tree only: no cgroup cpu controller, no cpufreq."""
    router, proc, recv = agent
    ident, _ = recv("hello")
    send = lambda m: router.send_multipart([ident, *p.encode(m)])  # noqa: E731
    spec = tiny_bundle.tier("cloud")
    send(p.Limit(1, "cores", 0.5))
    _, fail = recv("failure")
    assert fail.stage == "limit" and "no Configure opened a CPU cap" in fail.what
    for kinds, why in ((["cores"], "cannot cap CPU time; use max_freq_mhz"), (["max_freq_mhz"], "use cores")):
        send(p.Configure(1, str(tiny_bundle.root / spec.file), spec.sha256, spec.logits, {}, "", 1, cpu_caps=kinds))
        _, fail = recv("failure")
        assert fail.stage == "configure" and "changes the CPU's" in fail.what and why in fail.what
    send(p.Configure(2, str(tiny_bundle.root / spec.file), spec.sha256, spec.logits, {}, "", 1))
    _, ready = recv("ready")  # without caps the same device configures
    assert ready.seq == 2 and proc.poll() is None
