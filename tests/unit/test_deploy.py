"""Deploy logic on scripted SSH fakes (any unprepared command fails the test) and on this machine's own shell."""

import json
import shlex
from pathlib import Path

import pytest

from testbed.core.config import DeviceSpec
from testbed.core.errors import DeployError
from testbed.devices import deploy
from testbed.devices.owned import GONE, REMOVED, Ownership
from testbed.devices.ssh import CmdResult, LocalRemote, SshTarget


class ScriptedRemote:
    """A Remote that answers only the commands it was told about, in order; anything else fails."""

    def __init__(self, script):
        self.target = SshTarget("pi-1", "10.0.0.2", 22, "pi", None, None)
        self.script = list(script)  # (predicate(line), CmdResult)
        self.ran: list[str] = []
        self.put_files: list[tuple[Path, str]] = []
        self.dirs: set[str] = {"/home", "/home/pi"}

    def run(self, cmd, *, check=True, timeout=60.0, stdin=None):
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.ran.append(line)
        assert self.script, f"unprepared command: {line[:120]}"
        pred, res = self.script.pop(0)
        assert pred(line, stdin), f"unexpected command: {line[:160]}"
        if check and res.rc != 0:
            raise DeployError(f"status {res.rc}: {res.err}")
        return res

    def makedirs(self, d):
        made = []
        parts = d.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/" + "/".join(parts[:i])
            if p not in self.dirs:
                self.dirs.add(p)
                made.append(p)
        return made

    def put(self, local, remote):
        self.put_files.append((local, remote))

    def get(self, remote, local):
        raise AssertionError("unprepared get")

    def exchange(self, argv, rounds):
        return [(1_000, 1_500, 2_000)] * rounds  # remote clock 0.5 us... at the midpoint: offset 0

    def watch(self, argv):
        raise AssertionError("unprepared watch")

    def close(self):
        pass


def helper(script):
    return lambda line, stdin: script in line


def ok(obj) -> CmdResult:
    return CmdResult(0, json.dumps(obj) + "\n", "")


PI = DeviceSpec(id="pi-1", tier="mobile", host="10.0.0.2", launcher="ssh", user="pi", python="/usr/bin/python3",
                workdir="/home/pi/tb")


def facts(**kw):
    base = {"python": "3.11.2", "python_ok": True, "modules": {"onnxruntime": "1.17"}, "missing": [],
            "workdir": "/home/pi/tb", "workdir_writable": True, "disk_free_bytes": 10**10, "setsid": "/usr/bin/setsid",
            "tc": "/sbin/tc", "netem": True, "meters": ["pmic"], "kernel": "6.1", "time_ns": 0}
    return base | kw


def test_preflight_names_everything_missing_at_once():
    problems = deploy.preflight_problems(PI, facts(python_ok=False, python="3.7.3",
                                                   missing=["onnxruntime (ModuleNotFoundError: x)", "zmq (...)"],
                                                   disk_free_bytes=10**6, netem=False, clock_offset_ms=250.0),
                                         need_bytes=50 * 10**6, max_clock_offset_ms=100, backend="netem")
    text = "\n".join(problems)
    assert len(problems) == 5
    assert "Python 3.7.3" in text and "devices[id=pi-1].python" in text
    assert "lacks onnxruntime" in text and "pip install" in text
    assert "MB free" in text and "+250.0 ms" in text and "sch_netem" in text
    assert deploy.preflight_problems(PI, facts(clock_offset_ms=1.0), 10**6, 100, "userspace") == []


def test_a_rapl_meter_that_the_agents_user_cannot_read_is_named():
    server = PI.model_copy(update={"id": "srv-1", "meter": PI.meter.model_copy(update={"kind": "rapl"})})
    [problem] = deploy.preflight_problems(server, facts(meters=["rapl-unreadable"]))
    assert "energy_uj is not readable" in problem and "root-only since Linux 5.10" in problem
    assert deploy.preflight_problems(server, facts(meters=["rapl"])) == []


def test_fix_lines_use_a_venv_and_pins_known_to_work_for_that_python():
    assert deploy.install_line("3.8.10") == ('python3.8 -m venv ~/testbed-venv && ~/testbed-venv/bin/pip install '
                                             '"numpy==1.24.4" "onnxruntime==1.19.2" pyzmq msgpack psutil')
    assert '"numpy==2.0.2" "onnxruntime==1.19.2"' in deploy.install_line("3.9.2")
    assert "pip install numpy onnxruntime pyzmq" in deploy.install_line("3.11.2")
    assert "NVIDIA's onnxruntime-gpu wheel" in deploy.install_line("3.8.10", "jetson")
    [problem] = deploy.preflight_problems(PI, facts(modules={"numpy": "2.0.1", "onnxruntime": "1.16.3"}))
    assert "onnxruntime 1.16.3 with numpy 2.0.1" in problem and "fails at import under numpy 2" in problem
    assert deploy.preflight_problems(PI, facts(modules={"numpy": "1.26.4", "onnxruntime": "1.16.3"})) == []


def test_preflight_names_execution_providers_the_board_lacks_with_its_install_line():
    jetson = PI.model_copy(update={"id": "orin-1", "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    cpu_only = facts(onnxruntime_providers=["CPUExecutionProvider"], gpu="jetson")
    [problem] = deploy.preflight_problems(jetson, cpu_only)
    assert "asks for ['CUDAExecutionProvider']" in problem
    assert "NVIDIA's onnxruntime-gpu wheel for its JetPack" in problem
    gpu_ort = facts(onnxruntime_providers=["CUDAExecutionProvider", "CPUExecutionProvider"], gpu="jetson")
    assert deploy.preflight_problems(jetson, gpu_ort) == []
    assert deploy.preflight_problems(PI, cpu_only) == []  # computing on the CPU on purpose runs; the report flags it


def test_push_skips_files_whose_sha256_matches_and_records_what_it_copies(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "m.onnx"
    a.write_text("print(1)")
    b.write_bytes(b"\0" * 100)
    files = {"agents/a.py": (a, "sha-a"), "bundles/x/m.onnx": (b, "sha-b")}
    remote = ScriptedRemote([(helper(deploy.HASHES_PY), ok({"agents/a.py": "sha-a", "bundles/x/m.onnx": "old"}))])
    owned = Ownership(tmp_path / "run")
    rep = deploy.push(remote, PI, "/home/pi/tb", files, owned)
    assert rep.skipped == ["agents/a.py"] and rep.pushed == ["bundles/x/m.onnx"] and rep.bytes_pushed == 100
    assert remote.put_files == [(b, "/home/pi/tb/bundles/x/m.onnx")]
    kinds = [(e["kind"], e["path"]) for e in owned.entries]
    assert kinds == [("dir", "/home/pi/tb"), ("dir", "/home/pi/tb/bundles"), ("dir", "/home/pi/tb/bundles/x"),
                     ("file", "/home/pi/tb/bundles/x/m.onnx")]
    assert owned.entries[-1]["sha256"] == "sha-b" and owned.entries[-1]["where"]["host"] == "10.0.0.2"


@pytest.mark.parametrize("rel", ["../x.onnx", "bundles/../../x", "/etc/cron.d/x"])
def test_push_writes_nothing_outside_the_workdir(tmp_path, rel):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\0")
    remote = ScriptedRemote([])
    with pytest.raises(DeployError, match="refusing to write .* outside /home/pi/tb"):
        deploy.push(remote, PI, "/home/pi/tb", {"agents/a.py": (f, "s"), rel: (f, "s")}, None)
    assert remote.put_files == []


def test_push_through_a_real_shell_copies_then_skips(tmp_path):
    """The real helpers (hash script, atomic copy) against this machine's own shell: second push skips all."""
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for name, data in (("agents/x.py", b"x = 1\n"), ("bundles/b/m.onnx", b"\1" * 4096)):
        p = src / name.replace("/", "_")
        p.write_bytes(data)
        files[name] = (p, deploy.sha256_file(p))
    dev = PI.model_copy(update={"python": None})
    import sys

    dev = dev.model_copy(update={"python": sys.executable})
    wd = str(tmp_path / "device")
    first = deploy.push(LocalRemote("pi-1"), dev, wd, files, Ownership(tmp_path / "r1"))
    assert sorted(first.pushed) == sorted(files) and first.skipped == []
    assert (tmp_path / "device" / "bundles" / "b" / "m.onnx").read_bytes() == b"\1" * 4096
    assert not list((tmp_path / "device").rglob("*.part"))
    second = deploy.push(LocalRemote("pi-1"), dev, wd, files, Ownership(tmp_path / "r2"))
    assert second.pushed == [] and sorted(second.skipped) == sorted(files)
    assert Ownership(tmp_path / "r2").entries == []  # nothing created, nothing owned


def test_kernel_steps_stop_at_the_first_failure_and_name_it():
    remote = ScriptedRemote([(helper(deploy.STEPS_PY), ok({"steps": [
        {"argv": ["tc", "qdisc", "replace", "dev", "wlan0", "root", "handle", "1:", "htb"], "rc": 0, "err": ""},
        {"argv": ["tc", "qdisc", "replace", "dev", "wlan0", "parent", "1:1", "netem"], "rc": 2,
         "err": "Error: Specified qdisc kind is unknown."}], "show": ""}))])
    with pytest.raises(DeployError, match="pi-1.*parent 1:1 netem.*status 2.*qdisc kind is unknown"):
        deploy.run_steps(remote, "python3", [["tc"]], None)


def test_undo_removes_only_what_is_still_ours():
    where = {"host": "10.0.0.2"}
    qd = {"kind": "qdisc", "where": where, "dev": "wlan0", "qdisc": "htb", "handle": "1:"}
    r = ScriptedRemote([
        (lambda line, _: "grep -qF 'qdisc htb 1: root'" in line and "tc qdisc del dev wlan0 root" in line,
         CmdResult(0, "removed\n", "")),
        (lambda line, _: "grep" in line, CmdResult(0, "gone\n", "")),
        (lambda line, _: line.startswith("sha256sum /w/a.py"), CmdResult(0, "ffff  /w/a.py\n", "")),
        (lambda line, _: line.startswith("sha256sum /w/a.py"), CmdResult(0, "abcd  /w/a.py\n", "")),
        (lambda line, _: line == "rm -f /w/a.py", CmdResult(0, "", "")),
        (helper("os.killpg"), ok({"pid": 7, "alive": True, "ours": False, "starttime": "99"})),
    ])
    assert deploy.undo_remote(qd, r) == REMOVED
    assert deploy.undo_remote(qd, r) == GONE  # a second clean: the qdisc is not there (or not ours) any more
    f = {"kind": "file", "where": where, "path": "/w/a.py", "sha256": "abcd"}
    assert deploy.undo_remote(f, r) == GONE  # changed since: someone else's file now
    assert deploy.undo_remote(f, r) == REMOVED
    assert deploy.undo_remote({"kind": "process", "where": where, "pid": 7, "starttime": "12"}, r) == GONE
    assert r.script == []


def test_clock_offset_takes_the_round_with_the_smallest_round_trip():
    class R(ScriptedRemote):
        def exchange(self, argv, rounds):
            # (sent, remote clock, received) in ns: the 2nd round is tight, its midpoint says +5 ms
            return [(0, 90_000_000, 100_000_000), (200_000_000, 206_000_000, 202_000_000),
                    (300_000_000, 300_000_000, 340_000_000)]

    off, rtt = deploy.clock_offset(R([]), "python3")
    assert off == pytest.approx(5.0) and rtt == pytest.approx(2.0)


def test_the_link_probe_really_streams_and_reads_the_steady_part(tmp_path):
    """The probe's helper scripts on this machine (127.0.0.1, unshaped): every byte arrives, rates are positive."""
    import sys

    from testbed.devices.deploy import probe_link
    from testbed.devices.ssh import LocalRemote

    got = probe_link(LocalRemote("sender"), sys.executable, LocalRemote("receiver"), sys.executable, "127.0.0.1",
                     4_000_000)
    assert got["bytes"] == 4_000_000
    assert got["throughput_mbit"] > 0 and got["throughput_whole_mbit"] > 0 and got["tcp_connect_ms"] >= 0
    # scaled to what a rate limiter counts: payload plus 66 B of headers per segment of the MSS the kernel used
    assert got["mss_bytes"] > 0
    assert got["link_mbit"] == pytest.approx(got["throughput_mbit"] * (got["mss_bytes"] + 66) / got["mss_bytes"],
                                             rel=1e-3)
    assert got["link_capacity_mbit"] >= got["link_mbit"] * 0.999  # the fastest 30% is at least the mean
    for end in ("sender_steal_pct", "receiver_steal_pct"):  # None: the stream ended within one clock tick
        assert got[end] is None or 0 <= got[end] <= 100, got


def test_stream_rates_read_the_capacity_past_a_stall():
    """17 marks 5% of 10 MB apart at 8 Mbit/s (1 MB/s), with one 0.3 s stall: the mean drops, the capacity does not."""
    from testbed.devices.deploy import stream_rates

    step, marks, t = 500_000, [], 0
    for k in range(17):
        marks.append((step * (k + 2), t))
        t += int(0.5e9) + (int(0.3e9) if k == 12 else 0)  # the stall: between marks 12 and 13
    mean, best = stream_rates(marks)
    assert best == pytest.approx(8.0)
    assert mean == pytest.approx(16 * step * 8 / 8.3 / 1e6) and mean < best
    assert stream_rates(marks[:1]) == (None, None)
    assert stream_rates(marks[:5]) == (pytest.approx(8.0), None)  # too few marks for a 30% window


def test_the_probe_helpers_read_cpu_steal_from_proc_stat():
    """steal_pct: the hypervisor's share of all CPU time between two (steal, total) readings."""
    from testbed.devices.helpers import prelude

    ns = vars(prelude)
    assert ns["steal_pct"]((100, 1000), (130, 1200)) == 15.0
    assert ns["steal_pct"]((100, 1000), (100, 1000)) is None and ns["steal_pct"](None, (1, 2)) is None
    steal, total = ns["cpu_ticks"]()  # this machine's /proc/stat
    assert 0 <= steal <= total


def test_deploy_sends_the_whole_agent_package_a_device_runs(tiny_bundle):
    """Every module of agents/ goes to the device (it has no testbed), beside its tier's bundle files."""
    import agents

    files = deploy.deploy_files(tiny_bundle, "mobile")
    package = {f"agents/{p.name}" for p in Path(agents.__file__).parent.glob("*.py")}
    assert package <= set(files) and "agents/protocol.py" in package and "agents/__main__.py" in package
    assert f"bundles/{tiny_bundle.root.name}/mobile.onnx" in files
    assert not any(rel.startswith("testbed") for rel in files)
