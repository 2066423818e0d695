"""Agents that die, go silent, or never start; Ctrl-C. Rows measured before stay on disk."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from testbed.cli import main
from testbed.core.config import load_experiment, load_inventory
from testbed.core.errors import AgentLostError, AgentStartError
from testbed.formats.bundle import Bundle
from testbed.formats.results import load_samples
from testbed.run.controller import Controller

from conftest import ROOT, write_experiment, write_inventory
from loopback.helpers import agent_pids, assert_gone, env, only_run

pytestmark = pytest.mark.loopback
CLOUD = [{"name": "all-cloud"}]


def _controller(tmp_path, bundle, on_progress, policies=CLOUD, **inv_overrides):
    exp_path = write_experiment(tmp_path / "exp.yaml", bundle.root, policies, count=60, warmup=0)
    inv_path = write_inventory(tmp_path / "inv.yaml", **inv_overrides)
    return Controller(load_experiment(exp_path), exp_path, load_inventory(inv_path), inv_path, bundle,
                      tmp_path / "results", on_progress=on_progress)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_lost_agent_stops_the_run_and_keeps_measured_rows(tiny_bundle, tmp_path, how):
    """kill: the process dies. stop: it is alive but silent (SIGSTOP), noticed by missing heartbeats."""
    state = {}

    def on_progress(pr):
        if pr.done == 25 and "pid" not in state:
            state["pid"] = ctrl.session.agents["edge-1"].handle.pid
            os.kill(state["pid"], signal.SIGKILL if how == "kill" else signal.SIGSTOP)

    many = [{"name": "all-cloud", "label": f"c{i}"} for i in range(100)]  # outlasts the liveness timeout
    ctrl = _controller(tmp_path, tiny_bundle, on_progress, CLOUD if how == "kill" else many)
    with pytest.raises(AgentLostError) as e:
        ctrl.run()
    assert e.value.device == "edge-1"
    assert ("exited with status" if how == "kill" else "no heartbeat") in str(e.value)
    assert "agent edge-1" in e.value.log_tail or "loaded" in e.value.log_tail  # the tail of its own log
    df, complete = load_samples(ctrl.run_dir)
    assert complete and len(df) >= 25 and df["seq"].is_unique
    m = json.loads((ctrl.run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and "edge-1" in m["error"] and m["rows"] == len(df)
    assert_gone(agent_pids(ctrl.run_dir))


def _unstartable(tmp_path):
    """An executable whose interpreter is missing: validate cannot tell, the start fails (ENOENT)."""
    script = tmp_path / "no-such-python"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    return str(script)


def test_agent_that_cannot_be_started_is_named(tiny_bundle, tmp_path):
    ctrl = _controller(tmp_path, tiny_bundle, lambda _: None, **{"edge-1": {"python": _unstartable(tmp_path)}})
    with pytest.raises(AgentStartError, match="edge-1.*no-such-python.*inventory"):
        ctrl.run()
    pids = agent_pids(ctrl.run_dir)
    assert len(pids) == 1  # the cloud agent started before the edge failed, and was recorded and stopped
    assert_gone(pids)


def test_agent_that_exits_at_start_shows_its_log(tiny_bundle, tmp_path):
    script = tmp_path / "badpython"
    script.write_text("#!/bin/sh\necho 'ImportError: no module named onnxruntime' >&2\nexit 9\n")
    script.chmod(0o755)
    ctrl = _controller(tmp_path, tiny_bundle, lambda _: None, **{"cloud-1": {"python": str(script)}})
    with pytest.raises(AgentStartError) as e:
        ctrl.run()
    text = str(e.value)
    assert "cloud-1" in text and "status 9" in text and "no module named onnxruntime" in text
    assert_gone(agent_pids(ctrl.run_dir))
    assert json.loads((ctrl.run_dir / "manifest.json").read_text())["status"] == "failed"


def test_cli_maps_errors_to_exit_codes(tiny_bundle, tmp_path, capsys):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "al-cloud"}])
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "r")]) == 2
    assert "did you mean 'all-cloud'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing started, nothing written
    missing = write_inventory(tmp_path / "inv1.yaml", **{"mobile-1": {"python": "/nonexistent/python"}})
    assert main(["run", str(exp), "--inventory", str(missing), "--results", str(tmp_path / "r"), "-q"]) == 2
    assert "devices[0].python: '/nonexistent/python' is not an executable" in capsys.readouterr().err
    bad_inv = write_inventory(tmp_path / "inv2.yaml", **{"mobile-1": {"python": _unstartable(tmp_path)}})
    exp = write_experiment(tmp_path / "exp2.yaml", tiny_bundle.root, CLOUD)
    assert main(["run", str(exp), "--inventory", str(bad_inv), "--results", str(tmp_path / "r"), "-q"]) == 3


@pytest.mark.parametrize("presses", [1, 3])
def test_ctrl_c_stops_agents_and_saves_rows(tiny_bundle, tmp_path, presses):
    many = [{"name": "all-cloud", "label": f"c{i}"} for i in range(200)]  # far longer than the test waits
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, many, count=60, warmup=0)
    inv = write_inventory(tmp_path / "inv.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(inv),
                             "--results", str(tmp_path / "results"), "-q"], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "results").glob("*/*/samples.parts/part-*")):
        time.sleep(0.1)
    for _ in range(presses):  # impatient presses 150 ms apart land in the middle of the teardown
        proc.send_signal(signal.SIGINT)
        time.sleep(0.15)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    run_dir = only_run(tmp_path / "results")
    df = pd.read_parquet(run_dir / "samples.parquet")
    m = json.loads((run_dir / "manifest.json").read_text())
    assert len(df) >= 16 and m["rows"] == len(df) and df["seq"].is_unique  # every measured row on disk
    assert m["status"] == "interrupted" and m["ended_at"]
    if presses > 1:
        assert any("Ctrl-C pressed" in t and "not obeyed" in t for t in m["teardown_problems"])
    assert_gone(agent_pids(run_dir))


def test_bundle_tampered_after_build_is_refused_before_any_agent_starts(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, copy)
    with open(copy / "cloud.onnx", "ab") as f:
        f.write(b"x")
    exp = write_experiment(tmp_path / "exp.yaml", copy, CLOUD)
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "r"), "-q"]) == 2
    assert not list((tmp_path / "r").glob("*/*"))
    Bundle.load(copy)  # still parses: the error is the hash, not the format


def test_controller_killed_flushed_rows_survive_and_agents_exit_by_themselves(tiny_bundle, tmp_path):
    many = [{"name": "all-cloud", "label": f"c{i}"} for i in range(200)]
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, many, count=60, warmup=0)
    inv = write_inventory(tmp_path / "inv.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(inv),
                             "--results", str(tmp_path / "results"), "-q"], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180  # a few seconds usually; once over 60 s on a loaded CI VM
    parts = "*/*/samples.parts/part-*.parquet"  # complete parts only: a .tmp is one still being written
    while time.monotonic() < deadline and len(list((tmp_path / "results").glob(parts))) < 3:
        time.sleep(0.05)
    run_dir = only_run(tmp_path / "results")
    pids = agent_pids(run_dir)
    assert len(pids) == 3
    cmdline = open(f"/proc/{pids[0]}/cmdline", "rb").read().split(b"\0")
    endpoint = cmdline[cmdline.index(b"--controller") + 1].decode()
    proc.kill()  # no cleanup code runs: the controller is simply gone
    proc.wait(10)
    import zmq

    squat = zmq.Context.instance().socket(zmq.ROUTER)  # and a stranger takes its port at once
    squat.setsockopt(zmq.LINGER, 0)
    squat.bind(endpoint)
    heard = 0
    # heartbeat_s=0.2 x liveness=10: each agent gives up on the controller after about 2 s, even though the
    # squatter's failed handshakes leave its control socket with no peer (a blocking send hung agents forever)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if squat.poll(50):
            squat.recv_multipart()
            heard += 1
        try:
            assert_gone(pids)
            break
        except AssertionError:
            pass
    squat.close()
    assert_gone(pids)
    assert heard == 0  # CurveZMQ: the agents check the controller's key, and this is not it
    df, complete = load_samples(run_dir)
    assert not complete and len(df) >= 3 * 16 and df["seq"].is_unique
    for device in ("mobile-1", "edge-1", "cloud-1"):  # within a heartbeat period of the drop, not the liveness window
        assert "the controller's connection dropped" in (run_dir / "logs" / f"{device}.log").read_text()
    report = subprocess.run([sys.executable, "-m", "testbed", "report", str(run_dir)], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0 and "INCOMPLETE" in report.stdout and "run status: lost" in report.stdout
    assert "marked lost: the controller (pid" in report.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "lost" and m["rows"] == len(df) and "ended without finishing" in m["error"]


@pytest.mark.parametrize("security", ["curve", "none"])
def test_a_hostile_local_peer_on_the_controller_socket_changes_no_row(tiny_bundle, tmp_path, security):
    """Garbage, a stranger's Failure and forged Results sent to the controller's socket mid-run: counted, ignored."""
    import numpy as np
    import zmq

    from agents import protocol as p

    sent = {}

    def on_progress(pr):
        if pr.done == 5 and not sent:
            ctx = zmq.Context.instance()
            evil = ctx.socket(zmq.DEALER)
            evil.setsockopt(zmq.IDENTITY, b"evil")
            evil.setsockopt(zmq.LINGER, 0)
            evil.connect(ctrl.transport.endpoint)
            stage = p.Stage("cloud", "cloud-1", 0, 0, 0, 0, 1.0, 0, True, 12, 0.0, False, 0.0, 1, -1, -1)
            logits = np.array([[9.0, 0.0, 0.0]], np.float32)
            for seq in range(5, 60):
                evil.send_multipart(p.encode(p.Result("cloud-1", seq, seq, logits, [stage])))
            evil.send_multipart([b"\x93garbage"])
            evil.send_multipart(p.encode(p.Failure("evil", "compute", "stop the run")))
            if security == "curve":  # and Work that would make the mobile answer every in-flight sample itself
                push = ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(ctrl.session.agents["mobile-1"].hello.data_endpoint)
                ids = np.array([[101, 7592, 102]], np.int64)
                for seq in range(5, 60):
                    try:  # without the run's keys the handshake never completes: nothing may even queue
                        push.send_multipart(p.encode(p.Work(seq, seq, {"input_ids": ids,
                                                                       "attention_mask": ids * 0 + 1},
                                                            {"mobile": 0.0})), zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                push.close()
            time.sleep(0.2)
            evil.close()
            sent["n"] = 57

    ctrl = _controller(tmp_path, tiny_bundle, on_progress, controller={"security": security})
    ctrl.run()
    df, complete = load_samples(ctrl.run_dir)
    table = tiny_bundle.exits("test").set_index("sample_id")
    assert complete and len(df) == 60 and sent
    assert (df.prediction.to_numpy() == table.loc[df.sample_id, "prediction_cloud"].to_numpy()).all()
    m = json.loads((ctrl.run_dir / "manifest.json").read_text())
    assert m["status"] == "complete"
    if security == "none":  # plain sockets: it got in, and every message was counted and ignored
        assert sum(m["rejected_messages"].values()) == 57
        assert m["rejected_messages"]["result from an identity this run did not start"] == 55
    else:  # CurveZMQ: a client without the run's keys never gets past the handshake
        assert m["rejected_messages"] == {} and (df.exit_tier == "cloud").all()  # no sample answered early
        assert all(a["facts"]["security"] == "curve" for a in m["agents"].values())
