"""The real deploy path on one machine: network namespaces, sshd, SSH/SFTP deploy, tc, and clean.

Needs root, iproute2 and openssh-server (`.ci/run` installs them); skips with the reason where absent.
The emulation here has its own prefix, subnet and state directory, so it never touches one a user brought up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from testbed.devices.emulate import missing_requirements

from conftest import ROOT, write_experiment

PREFIX, SUBNET = "tbt", "198.18.7"
MISSING = missing_requirements()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the emulation needs {', '.join(MISSING)}")
DEVICES = {"mobile": "mobile-emu", "edge": "edge-emu", "cloud": "cloud-emu"}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "240"}  # tables wide enough not to fold their cells
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def netns_pids(tier: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", f"{PREFIX}-{tier}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def agent_pids(tier: str) -> list[int]:
    pids = []
    for pid in netns_pids(tier):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agents" in cmd and b"-m" in cmd:
            pids.append(pid)
    return pids


def qdiscs(tier: str) -> str:
    return subprocess.run(["ip", "netns", "exec", f"{PREFIX}-{tier}", "tc", "qdisc", "show"], capture_output=True,
                          text=True).stdout


def assert_devices_bare() -> None:
    """No agent runs and no qdisc of a run is left on any emulated device."""
    for tier in DEVICES:
        assert agent_pids(tier) == [], tier
        assert "htb" not in qdiscs(tier), tier


def assert_probe_reads_the_rate(probe: dict, rate_mbit: float) -> None:
    """The probe ran through the shaper: never more than the rate, and not far under it.

    Not within a few percent: that is the shaping benchmark's claim. On a VM whose host steals CPU (a CI
    runner) htb's timers fire late and the link really runs slower, by up to a third at worst here; the
    probe records the steal of both ends.
    """
    assert rate_mbit * 0.5 <= probe["link_capacity_mbit"] <= rate_mbit * 1.05, probe
    assert probe["rate_error_pct"] == pytest.approx(100 * (probe["link_capacity_mbit"] - rate_mbit) / rate_mbit,
                                                    abs=0.01)
    assert 0 <= probe["sender_steal_pct"] <= 100 and 0 <= probe["receiver_steal_pct"] <= 100, probe


def _emulated(base: Path, prefix: str, subnet: str, *up_args: str):
    """``testbed emulate up`` with its own prefix and subnet; yields (base, inventory); down, and nothing left."""
    state, inv = base / "state", base / "inventory.yaml"
    common = ["--state-dir", str(state), "--prefix", prefix, "--subnet", subnet]
    up = cli("emulate", "up", *common, "--inventory", str(inv), *up_args)
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        yield base, inv
    finally:
        down = cli("emulate", "down", *common)
        assert down.returncode == 0, down.stderr
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{prefix}-" not in left, f"namespaces left behind: {left}"
        assert not any(Path("/sys/fs/cgroup").glob(f"**/testbed-{prefix}")), "cgroups left behind"


@pytest.fixture(scope="module")
def emulation(tmp_path_factory):
    yield from _emulated(tmp_path_factory.mktemp("emu"), PREFIX, SUBNET)


def start_run_until_rows(exp: Path, inv: Path, results: Path) -> subprocess.Popen[str]:
    """Start `testbed run` in the background; return once its first rows are on disk (or it ended)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", str(exp), "--inventory", str(inv),
                             "--results", str(results), "-q"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(results.glob("t/*/samples.parts/part-*.parquet")) \
            and proc.poll() is None:
        time.sleep(0.05)
    return proc


def experiment(path: Path, bundle: Path, **extra) -> Path:
    doc = {"devices": DEVICES, "shaping": {"backend": "userspace",
                                           "links": {"mobile-edge": {"delay_ms": 20, "rate_mbit": 10}}}}
    return write_experiment(path, bundle, [{"name": "all-cloud"}], **(doc | extra))


def test_unknown_host_keys_are_refused_until_trusted(emulation, tiny_bundle, tmp_path):
    base, inv = emulation
    data = yaml.safe_load(inv.read_text())
    kh = tmp_path / "known_hosts"
    data["defaults"]["known_hosts"] = str(kh)
    inv2 = tmp_path / "inventory.yaml"
    inv2.write_text(yaml.safe_dump(data))
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root)
    refused = cli("deploy", str(exp), "--inventory", str(inv2), "--results", str(tmp_path / "r"))
    assert refused.returncode == 8, refused.stderr
    text = " ".join(refused.stderr.split())
    assert "mobile-emu" in text and "not in" in text and "SHA256:" in text and "--trust-new-hosts" in text
    assert not kh.exists()
    trusted = cli("deploy", str(exp), "--inventory", str(inv2), "--results", str(tmp_path / "r"), "--trust-new-hosts")
    assert trusted.returncode == 0, trusted.stderr + trusted.stdout
    assert len(kh.read_text().splitlines()) == 3  # one line per device host, now known


def test_the_controller_refuses_addresses_that_would_leave_the_machine(emulation):
    """From the root namespace the emulation's addresses follow the default route: refused, nothing sent."""
    from testbed.core.config import load_inventory
    from testbed.core.errors import RouteError
    from testbed.devices.routes import check_routes

    inv = load_inventory(emulation[1])
    with pytest.raises(RouteError):
        check_routes(inv, {"mobile-emu": [inv.device("mobile-emu").host]})


def test_run_deploys_over_ssh_shapes_the_link_and_skips_unchanged_files_the_second_time(emulation, tiny_bundle,
                                                                                        tmp_path):
    base, inv = emulation
    # the rate steps down 10 -> 5 Mbit/s 0.3 s into the samples (tc class replace on both ends, read back)
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root, count=30, shaping={
        "backend": "userspace", "links": {"mobile-edge": {"delay_ms": 20, "rate_mbit": 10,
                                                          "schedule": [{"at_s": 0.3, "rate_mbit": 5}]}}})
    results = tmp_path / "results"
    manifests = []
    for _ in range(2):
        done = cli("run", str(exp), "--inventory", str(inv), "--results", str(results), "-q")
        assert done.returncode == 0, done.stderr[-3000:]
        run_dir = max(results.glob("t/*/manifest.json"), key=lambda p: p.stat().st_mtime).parent
        manifests.append((run_dir, json.loads((run_dir / "manifest.json").read_text())))
    (run1, m1), (run2, m2) = manifests
    d1, d2 = m1["deploy"]["devices"], m2["deploy"]["devices"]
    assert m1["deploy"]["method"] == "ssh" and set(d1) == set(DEVICES.values())
    assert all(d["pushed"] for d in d1.values() if not d["skipped"])  # first deploy of this bundle: copied
    assert any("bundles/tiny/mobile.onnx" in d["pushed"] + d["skipped"] for d in d1.values())
    assert all(d["pushed"] == [] for d in d2.values()), d2  # second run: every file already matches
    assert all(len(d["skipped"]) >= 8 for d in d2.values())
    assert all(route.startswith("to-") for route in m2["deploy"]["routes"].values())
    # the kernel rate is on both ends of mobile-edge, read back from tc
    kernel = m2["shaping"]["kernel"]["mobile-edge"]
    assert set(kernel) == {"mobile-emu", "edge-emu"}
    assert any("htb" in line and "1:" in line for line in kernel["mobile-emu"]["tc_show"])
    # measured, not assumed: the probe's throughput within 10% of 10 Mbit/s
    probe = m2["shaping"]["probes"]["mobile-edge"]["mobile->edge"]
    assert_probe_reads_the_rate(probe, 10.0)
    assert probe["link_mbit"] <= probe["link_capacity_mbit"] * 1.001  # the mean never beats the fastest stretch
    assert probe["throughput_mbit"] < probe["link_mbit"]  # payload only: the headers are the difference
    step, = m2["shaping"]["schedule_applied"]
    assert step["profile"]["rate_mbit"] == 5 and step["userspace"]["delay_ms"] == 20
    assert set(step["kernel"]) == {"mobile-emu", "edge-emu"}
    assert any("rate 5Mbit" in line for line in step["kernel"]["edge-emu"]["tc_show"]), step["kernel"]
    # the userspace delay is in the measured network time of the hop
    rows = pd.read_parquet(run2 / "samples.parquet")
    net = rows.loc[rows.phase == "measure", "net_ms_mobile_edge"].median()
    assert 20.0 <= net <= 23.0, net
    assert m2["shaping"]["backend"] == "userspace"
    # bytes on the wire, from the receiving host's own interface counter (psutil in its namespace): each message
    # in full, plus ZMTP framing and TCP/IP/Ethernet headers, and not much more
    edge = next(d for d in m2["inventory"]["resolved"]["devices"] if d["id"] == "edge-emu")
    assert m2["bytes_wire"]["mobile_edge"] == {"device": "edge-emu", "interface": edge["interfaces"]["mobile"]}
    for hop in ("mobile_edge", "edge_cloud"):
        meas = rows[rows.phase == "measure"]
        wire, msg, payload = meas[f"bytes_wire_{hop}"], meas[f"bytes_msg_{hop}"], meas[f"bytes_{hop}"]
        assert wire.notna().all() and (msg > payload).all(), hop
        assert (wire >= msg).all(), (hop, list(zip(wire, msg, strict=True)))
        overhead = (wire - msg).median()
        assert 0 < overhead <= 0.1 * msg.median() + 300, (hop, overhead, msg.median())
    # the agents' logs came back; nothing is left running or shaped on the devices
    assert all((run2 / "logs" / f"{d}.log").stat().st_size > 0 for d in DEVICES.values())
    assert_devices_bare()
    owned = json.loads((run2 / "owned.json").read_text())["entries"]
    assert {e["state"] for e in owned if e["kind"] in ("process", "qdisc")} == {"removed"}
    assert len([e for e in owned if e["kind"] == "qdisc"]) == 2  # the step changed them; it added none
    # clean removes the run's directories on the devices; a second clean has nothing to do
    assert cli("clean", str(run2)).returncode == 0
    assert not any(e["state"] == "live" for e in json.loads((run2 / "owned.json").read_text())["entries"])
    again = cli("clean", str(run2))
    assert again.returncode == 0 and "nothing to clean" in again.stdout


def test_killing_an_agent_on_its_host_ends_the_run_naming_it_and_clean_leaves_nothing(emulation, tiny_bundle,
                                                                                      tmp_path):
    base, inv = emulation
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root, count=60, warmup=0,
                     run={"concurrency": 1, "flush_rows": 4})
    results = tmp_path / "results"
    proc = start_run_until_rows(exp, inv, results)
    try:
        killed = agent_pids("edge")
        assert killed, "the edge agent never started"
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, err[-2000:]
    assert "edge-emu" in err
    run_dir = next(results.glob("t/*/manifest.json")).parent
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "failed" and "edge-emu" in m["error"]
    assert len(pd.read_parquet(run_dir / "samples.parquet")) > 0  # rows measured before the kill are kept
    done = cli("clean", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert_devices_bare()
    assert not any(e["state"] == "live" for e in json.loads((run_dir / "owned.json").read_text())["entries"])


def test_ctrl_c_mid_run_stops_the_agents_and_removes_the_qdiscs(emulation, tiny_bundle, tmp_path):
    base, inv = emulation
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root, count=60, warmup=0,
                     run={"concurrency": 1, "flush_rows": 4})
    results = tmp_path / "results"
    proc = start_run_until_rows(exp, inv, results)
    try:
        assert "htb" in qdiscs("mobile")  # shaped while it runs
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    run_dir = next(results.glob("t/*/manifest.json")).parent
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert_devices_bare()
    entries = json.loads((run_dir / "owned.json").read_text())["entries"]
    assert {e["state"] for e in entries if e["kind"] in ("process", "qdisc")} == {"removed"}


def test_the_controller_link_is_shaped_at_both_ends_and_probed(emulation, tiny_bundle, tmp_path):
    """controller-mobile at 20 Mbit/s and 5 ms: tc on the controller's own veth and on the mobile's, both read
    back and probed; the mobile agent holds the Work it receives and the answers it sends."""
    base, inv = emulation
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root, count=20, shaping={
        "backend": "userspace", "links": {"controller-mobile": {"delay_ms": 5, "rate_mbit": 20}}})
    doc = yaml.safe_load(exp.read_text()) | {"policies": [{"name": "all-mobile"}]}
    exp.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    done = cli("run", str(exp), "--inventory", str(inv), "--results", str(results), "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next(results.glob("t/*/manifest.json")).parent
    m = json.loads((run_dir / "manifest.json").read_text())
    kernel = m["shaping"]["kernel"]["controller-mobile"]
    assert set(kernel) == {"controller", "mobile-emu"}
    assert kernel["controller"]["interface"] == "to-mobile" and kernel["mobile-emu"]["interface"] == "to-ctl"
    assert all(any("rate 20Mbit" in line for line in k["tc_show"]) for k in kernel.values()), kernel
    probes = m["shaping"]["probes"]["controller-mobile"]
    assert set(probes) == {"controller->mobile", "mobile->controller"}
    for got in probes.values():
        assert_probe_reads_the_rate(got, 20.0)
    rows = pd.read_parquet(run_dir / "samples.parquet")
    meas = rows[rows.phase == "measure"]
    assert (meas.exit_tier == "mobile").all()
    # both columns cross clocks: the offset estimate is off by at most half its ping's round trip
    # the agent's own pid, not the `setsid sh` that started it over SSH (kept as launch_pid, for signals)
    assert all(rec["pid"] != rec["launch_pid"] for rec in m["agents"].values())
    slack_ms = m["agents"]["mobile-emu"]["clock_rtt_ns"] / 2e6 + 0.02
    # lower bounds only: how close to 5 ms the medians sit is the shaping benchmark's figure (a loaded VM wakes late)
    assert meas.net_ms_controller_mobile.min() >= 5.0 - slack_ms and meas.net_ms_return.min() >= 5.0 - slack_ms
    # the controller's qdisc is recorded as local, removed at the end; nothing is left on either end
    owned = json.loads((run_dir / "owned.json").read_text())["entries"]
    mine = [e for e in owned if e["kind"] == "qdisc"]
    assert sorted(e["device"] for e in mine) == ["controller", "mobile-emu"] and {e["state"] for e in mine} == {
        "removed"}
    assert next(e for e in mine if e["device"] == "controller")["where"] == {"local": True}
    assert "htb" not in qdiscs("ctl")
    assert_devices_bare()
    assert cli("clean", str(run_dir)).returncode == 0


def test_the_controller_edge_link_shapes_the_answers_and_preflight_checks_the_controllers_end(emulation,
                                                                                              tiny_bundle, tmp_path):
    """controller-edge at 10 Mbit/s and 8 ms (10: a 0.5-core edge keeps up with its probe on a loaded CI VM):
    only the answers travel it (the controller issues to the mobile);
    htb on both ends, both directions probed; the edge agent holds its Results, not the offloads it receives."""
    base, inv = emulation
    exp = experiment(tmp_path / "exp.yaml", tiny_bundle.root, count=20, shaping={
        "backend": "userspace", "links": {"controller-edge": {"delay_ms": 8, "rate_mbit": 10}}})
    doc = yaml.safe_load(exp.read_text()) | {"policies": [{"name": "all-edge"}]}
    exp.write_text(yaml.safe_dump(doc))
    pre = cli("preflight", str(exp), "--inventory", str(inv))
    assert pre.returncode == 0, pre.stderr + pre.stdout
    assert "controller (here)" in pre.stdout  # its own end is checked: tc and htb here
    results = tmp_path / "results"
    done = cli("run", str(exp), "--inventory", str(inv), "--results", str(results), "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next(results.glob("t/*/manifest.json")).parent
    m = json.loads((run_dir / "manifest.json").read_text())
    kernel = m["shaping"]["kernel"]["controller-edge"]
    assert kernel["controller"]["interface"] == "to-edge" and kernel["edge-emu"]["interface"] == "to-ctl"
    assert all(any("rate 10Mbit" in line for line in k["tc_show"]) for k in kernel.values()), kernel
    assert m["deploy"]["controller_kernel"]["htb"] is True
    probes = m["shaping"]["probes"]["controller-edge"]
    assert set(probes) == {"controller->edge", "edge->controller"}
    for got in probes.values():
        assert_probe_reads_the_rate(got, 10.0)
    meas = pd.read_parquet(run_dir / "samples.parquet").query("phase == 'measure'")
    assert (meas.exit_tier == "edge").all()
    assert meas.net_ms_return.min() >= 7.9
    # what arrives at the edge is not held: in the same run, faster than any held answer
    assert meas.net_ms_mobile_edge.median() < meas.net_ms_return.min()
    assert meas.net_ms_controller_mobile.median() < meas.net_ms_return.min()
    report = cli("report", str(run_dir), "--format", "text")
    assert "fidelity controller-edge (answers back): configured 8 ms, 10 Mbit/s" in report.stdout, report.stdout
    assert "htb" not in qdiscs("ctl")
    assert_devices_bare()


def test_adaptive_resnet_replans_when_the_mobile_edge_rate_drops(emulation, resnet_bundle, tmp_path):
    """mobile-edge 100 -> 0.2 Mbit/s (kernel htb on both ends) 0.5 s into each policy; mu 0.2, as the experiment.

    After the drop the adaptive policy drains, probes 8 samples through every tier, and plans under the
    new hop time: the hop's time rose by the offload's serialisation at 0.2 Mbit/s at least, every plan is
    the objective's minimum, and each measured sample ran the plan in force. The plan-once policy keeps
    sending through the slow link.
    """
    from testbed.policies.adaptive_resnet import AdaptiveResNetPolicy

    base, inv = emulation
    exp = write_experiment(tmp_path / "exp.yaml", resnet_bundle.root,
                           [{"name": "adaptive-resnet", "label": "adaptive", "mu": 0.2, "probe": 8},
                            {"name": "adaptive-resnet", "label": "plan-once", "mu": 0.2, "replan": False}],
                           count=60, warmup=8, name="t", devices=DEVICES,
                           run={"concurrency": 1, "interval_ms": 10, "schedule_clock": "policy", "flush_rows": 16},
                           shaping={"backend": "userspace", "links": {"mobile-edge": {
                               "rate_mbit": 100, "schedule": [{"at_s": 0.5, "rate_mbit": 0.2}]}}})
    done = cli("run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "results" / "t").iterdir())
    m = json.loads((run_dir / "manifest.json").read_text())
    df = pd.read_parquet(run_dir / "samples.parquet")
    plans = m["policies"]["adaptive"]["plans"]
    assert [p["trigger"] for p in plans] == ["warmup", "link mobile-edge step 0: rate_mbit 0.2"]
    variants = [v.model_dump() for v in resnet_bundle.spec.resnet_variants]
    for plan in plans:
        pol = AdaptiveResNetPolicy("x", variants, 0.2, resnet_bundle.tiers)
        pol.plan(plan["resources"])
        assert pol.record["chosen"]["objective"] == pytest.approx(plan["chosen"]["objective"])
    offload_bits = 8 * variants[0]["bytes_per_offload"]["mobile-edge"]
    hop = [p["resources"]["ms_per_offload"]["mobile-edge"] for p in plans]
    assert hop[1] >= hop[0] + offload_bits / 0.2e3 * 0.9, hop  # 0.2 Mbit/s = 200 bits per ms
    steps = [s for s in m["shaping"]["schedule_applied"] if s["step"] == 0]
    assert {s["policy"] for s in steps} == {"adaptive", "plan-once"}
    assert all(any("rate 200Kbit" in line for line in s["kernel"]["edge-emu"]["tc_show"]) for s in steps), steps
    g = df[(df.policy == "adaptive") & (df.phase == "measure")]
    for k, plan in enumerate(plans):
        lo, hi = ([0] + [p["unix_ns"] for p in plans[1:]] + [2**63])[k:k + 2]
        seg = g[(g.t_issue_unix_ns > lo) & (g.t_issue_unix_ns < hi)]
        assert (seg.policy_choice == f"{plan['chosen']['variant']}@{plan['chosen']['tier']}").all(), k
    once = df[(df.policy == "plan-once") & (df.phase == "measure")]
    assert len(m["policies"]["plan-once"]["plans"]) == 1 and len(once) == 60
    assert_devices_bare()


FLEET_PREFIX, FLEET_SUBNET = "tbf", "198.18.9"
MOBILES = ["mobile1-emu", "mobile2-emu", "mobile3-emu"]


@pytest.fixture(scope="module")
def fleet_emulation(tmp_path_factory):
    """Three mobile hosts, one edge and one cloud: each mobile linked to the controller and to the edge."""
    yield from _emulated(tmp_path_factory.mktemp("emu-fleet"), FLEET_PREFIX, FLEET_SUBNET, "--devices", "mobile=3")


def test_three_mobile_hosts_feed_one_edge_over_their_own_links(fleet_emulation, tiny_bundle, tmp_path):
    """The loopback fleet experiment on real hosts: rows per device, each mobile's offloads over its own veth."""
    base, inv = fleet_emulation
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root,
                           [{"name": "all-cloud"}, {"name": "splitee", "alpha": 0.6}], count=30, warmup=0,
                           name="t", devices={"mobile": MOBILES, "edge": "edge-emu", "cloud": "cloud-emu"},
                           run={"concurrency": 6, "flush_rows": 16},
                           shaping={"backend": "userspace", "links": {"mobile-edge": {"delay_ms": 3,
                                                                                      "rate_mbit": 20}}})
    done = cli("run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "results" / "t").iterdir())
    df = pd.read_parquet(run_dir / "samples.parquet")
    m = json.loads((run_dir / "manifest.json").read_text())
    assert len(df) == 60 and df["seq"].is_unique and m["status"] == "complete"
    assert list(df.sort_values("seq")["device_mobile"]) == [MOBILES[s % 3] for s in range(60)]
    cloud = df[df.policy == "all-cloud"]
    assert set(cloud["device_edge"]) == {"edge-emu"} and (cloud["net_ms_mobile_edge"] >= 3.0).all()
    assert m["deploy"]["method"] == "ssh" and set(m["deploy"]["devices"]) == {*MOBILES, "edge-emu", "cloud-emu"}
    assert set(m["policies"]["splitee"]["per_source"]) == set(MOBILES)
    # the rate on each device pair's own link, both ends: each mobile's to-edge, the edge's to-mobile<i>
    kernel = m["shaping"]["kernel"]["mobile-edge"]
    assert set(kernel) == {*MOBILES, "edge-emu", "edge-emu/to-mobile2", "edge-emu/to-mobile3"}
    assert {kernel[k]["interface"] for k in kernel if k.startswith("edge")} == {"to-mobile1", "to-mobile2",
                                                                               "to-mobile3"}
    assert all(any("rate 20Mbit" in line for line in rec["tc_show"]) for rec in kernel.values()), kernel
    # every pair probed in both directions, each through its own shaper
    probes = m["shaping"]["probes"]["mobile-edge"]
    assert set(probes) == {f"{a}->{b}" for d in MOBILES for a, b in ((d, "edge-emu"), ("edge-emu", d))}
    for probe in probes.values():
        assert_probe_reads_the_rate(probe, 20.0)
    # each mobile sent its offloads out of its own namespace's link to the edge (its tx counter moved)
    for i, dev in enumerate(MOBILES, 1):
        out = subprocess.run(["ip", "-n", f"{FLEET_PREFIX}-mobile{i}", "-s", "link", "show", "to-edge"],
                             capture_output=True, text=True).stdout
        tx_bytes = int(out.split("TX:")[1].split("\n")[1].split()[0])
        assert tx_bytes > 10 * 1024, (dev, out)
    assert not any(b"agents" in Path(f"/proc/{p}/cmdline").read_bytes() for i in (1, 2, 3)
                   for p in _fleet_pids(f"mobile{i}"))  # the agents are gone from every mobile host


def _fleet_pids(node: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", f"{FLEET_PREFIX}-{node}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if Path(f"/proc/{p}").exists()]
