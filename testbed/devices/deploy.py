"""Deploy agents over SSH: preflight, push what changed, start detached, stop, fetch the log.

On the device, under its ``workdir``::

    agents/*.py                      the agent package (nothing from testbed/)
    bundles/<bundle>/<file>.onnx     the partitions of the device's tier (and their variants)
    runs/<run_id>/<id>.log|.exit     the agent's log and exit status

Files whose sha256 already matches on the device are skipped; the others go over SFTP to
``<file>.part`` and are renamed into place. The agent runs in its own session (``setsid``)
so it outlives the SSH channel, with its pid and start time in the ownership record.
Every remote helper is a short Python program run with the device's own interpreter, so
a device needs nothing but Python, the agent's wheels and a POSIX shell.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.runtime import sha256_file
from testbed.core.config import DeviceSpec
from testbed.core.errors import AgentStartError, DeployError
from testbed.devices import helpers
from testbed.devices.launch import AGENTS_PARENT, AgentArgs, agent_argv
from testbed.devices.owned import GONE, REMOVED, Ownership
from testbed.devices.ssh import Remote, SshTarget
from testbed.formats.bundle import Bundle, inside

AGENT_MODULES = ("numpy", "onnxruntime", "zmq", "msgpack", "psutil")
MIN_PYTHON = (3, 8)  # JetPack 5; the agents run on it (tests/loopback/test_python38.py)
DISK_MARGIN_BYTES = 64 * 1024 * 1024

# The device-side helpers (testbed/devices/helpers/*.py), as the text ``python -c`` runs there.
SHAPING_PY = helpers.source("shaping")
PREFLIGHT_PY = helpers.source("preflight")
HASHES_PY = helpers.source("hashes")
PROCCTL_PY = helpers.source("procctl")
WATCH_PY = helpers.source("watch")
STEPS_PY = helpers.source("steps")
SINK_PY = helpers.source("sink")
SEND_PY = helpers.source("send")
CLOCK_PY = helpers.source("clock")


def run_py(remote: Remote, python: str, script: str, *args: str, stdin: bytes | None = None,
        timeout: float = 60.0) -> dict[str, Any]:
    """Run a helper with the device's Python; parse its JSON answer."""
    res = remote.run([python, "-c", script, *args], stdin=stdin, timeout=timeout)
    try:
        return json.loads(res.out.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise DeployError(f"device {remote.target.device}: a helper printed no JSON: {res.out[-300:]!r} "
                          f"{res.err[-300:]!r}") from e


def target_of(device: DeviceSpec) -> SshTarget:
    """The SSH target of an inventory device."""
    return SshTarget(device.id, device.host, device.port, device.user, device.key_file, device.known_hosts)



def clock_offset(remote: Remote, python: str, rounds: int = 8) -> tuple[float, float]:
    """(offset ms, rtt ms) of the device's wall clock against this one, NTP-style.

    One remote process answers each line with its clock; the round with the smallest round
    trip gives the offset to its midpoint (process start and SSH session setup are not in it).
    """
    samples = remote.exchange([python, "-u", "-c", CLOCK_PY], rounds)
    t0, remote_ns, t1 = min(samples, key=lambda s: s[2] - s[0])
    return (remote_ns - (t0 + t1) / 2) / 1e6, (t1 - t0) / 1e6


def preflight(remote: Remote, device: DeviceSpec) -> dict[str, Any]:
    """Facts of the device (versions, disk, clock offset, governor, thermal, tc/netem, meters)."""
    facts = run_py(remote, device.python or "python3", PREFLIGHT_PY, device.workdir or "~/testbed",
                json.dumps(list(MIN_PYTHON)), json.dumps(list(AGENT_MODULES)))
    facts["clock_offset_ms"], facts["clock_rtt_ms"] = clock_offset(remote, device.python or "python3")
    return facts


def shaping_facts(remote: Remote, python: str) -> dict[str, Any]:
    """What the kernel at ``remote`` can shape with: ``kernel``, ``tc`` (its path or None), ``netem``, ``htb``."""
    return run_py(remote, python, SHAPING_PY)


#: numpy and onnxruntime pins known to work together per Python (cp38/cp39 aarch64 wheels end at onnxruntime 1.19.2)
PINS = {(3, 8): '"numpy==1.24.4" "onnxruntime==1.19.2"', (3, 9): '"numpy==2.0.2" "onnxruntime==1.19.2"'}


def install_line(python: str, gpu: str | None = None) -> str:
    """The commands that give a board's Python the agent's modules.

    A venv (Raspberry Pi OS Bookworm refuses pip outside one, PEP 668) and the pins known to
    work for that Python.
    """
    try:
        major, minor = (int(x) for x in python.split(".")[:2])
        pins = PINS.get((major, minor), "numpy onnxruntime")
    except ValueError:
        pins = "numpy onnxruntime"
    line = (f"python{python.rsplit('.', 1)[0] if python.count('.') == 2 else '3'} -m venv ~/testbed-venv && "
            f"~/testbed-venv/bin/pip install {pins} pyzmq msgpack psutil")
    if gpu == "jetson":
        line += ("; for the GPU, replace onnxruntime with NVIDIA's onnxruntime-gpu wheel for this JetPack "
                 "(PyPI's aarch64 onnxruntime is CPU-only)")
    return line


def _version_problems(d: str, facts: dict[str, Any]) -> list[str]:
    """Module versions known not to work together (onnxruntime before 1.19 fails at import under numpy 2)."""
    mods = facts.get("modules") or {}

    def major_minor(v: str) -> tuple[int, int]:
        parts = (v.split(".") + ["0", "0"])[:2]
        return (int(parts[0]), int(parts[1])) if all(p.isdigit() for p in parts) else (0, 0)

    np_v, ort_v = str(mods.get("numpy", "")), str(mods.get("onnxruntime", ""))
    if np_v and ort_v and major_minor(np_v) >= (2, 0) and (0, 0) < major_minor(ort_v) < (1, 19):
        return [f"device {d}: onnxruntime {ort_v} with numpy {np_v}: onnxruntime before 1.19 fails at import "
                f"under numpy 2; install on the device: {install_line(str(facts.get('python', '')))}"]
    return []


def _provider_problems(device: DeviceSpec, facts: dict[str, Any]) -> list[str]:
    """Asked-for execution providers the device's onnxruntime lacks, with the install line for its board."""
    have = facts.get("onnxruntime_providers")
    if have is None or facts.get("missing"):
        return []
    d, gpu = device.id, facts.get("gpu")
    lacking = [w for w in device.providers if w not in have]
    fix = ("install NVIDIA's onnxruntime-gpu wheel for its JetPack (PyPI's aarch64 onnxruntime is CPU-only)"
           if gpu == "jetson" else "install onnxruntime-gpu in its Python")
    if lacking:
        return [f"device {d}: devices[id={d}].providers asks for {lacking}, its onnxruntime offers {have}; {fix}, "
                "or drop them from the inventory"]
    return []  # a GPU board computing on its CPU on purpose runs; the report flags it


def preflight_problems(device: DeviceSpec, facts: dict[str, Any], need_bytes: int = 0,
                       max_clock_offset_ms: float | None = None, backend: str | None = None) -> list[str]:
    """What a run needs and the device lacks, each with what to do."""
    d, problems = device.id, []
    py = device.python or "python3"
    if not facts.get("python_ok"):
        problems.append(f"device {d}: {py} is Python {facts.get('python')}; the agent needs "
                        f"{'.'.join(map(str, MIN_PYTHON))}+ (set devices[id={d}].python to a newer interpreter)")
    if facts.get("missing"):
        problems.append(f"device {d}: {py} lacks {', '.join(facts['missing'])}; install on the device: "
                        f"{install_line(str(facts.get('python', '')), facts.get('gpu'))}, then set "
                        f"devices[id={d}].python: ~/testbed-venv/bin/python")
    problems += _version_problems(d, facts)
    if not facts.get("workdir_writable"):
        problems.append(f"device {d}: workdir {facts.get('workdir')} is not writable ({facts.get('workdir_error')}); "
                        f"fix devices[id={d}].workdir")
    free = facts.get("disk_free_bytes")
    if free is not None and free < need_bytes + DISK_MARGIN_BYTES:
        problems.append(f"device {d}: {free / 1e6:.0f} MB free in {facts.get('workdir')}, the deploy needs "
                        f"{(need_bytes + DISK_MARGIN_BYTES) / 1e6:.0f} MB; free some space")
    if not facts.get("setsid"):
        problems.append(f"device {d}: no setsid (util-linux) to detach the agent; install util-linux")
    if max_clock_offset_ms is not None and abs(facts.get("clock_offset_ms", 0.0)) > max_clock_offset_ms:
        problems.append(f"device {d}: clock is {facts['clock_offset_ms']:+.1f} ms off the controller's "
                        f"(limit deploy.max_clock_offset_ms={max_clock_offset_ms}); sync it (chrony/ntp)")
    problems += _provider_problems(device, facts)
    if device.meter.kind == "rapl" and "rapl-unreadable" in (facts.get("meters") or []):
        problems.append(f"device {d}: meter kind rapl, but /sys/class/powercap/intel-rapl:*/energy_uj is not readable "
                        "by its user (root-only since Linux 5.10); run the agent as root, or grant read access "
                        "(sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj, again after each boot, or a "
                        "udev rule)")
    if backend == "netem" and not facts.get("netem"):
        problems.append(f"device {d}: kernel {facts.get('kernel')} has no sch_netem; use shaping.backend: userspace "
                        "or load the module (modprobe sch_netem)")
    if backend in ("netem", "userspace") and not facts.get("tc"):
        problems.append(f"device {d}: no tc (iproute2) to shape its links; install iproute2")
    return problems


def agent_files() -> dict[str, Path]:
    """The agent package: relative path on the device -> local file."""
    return {f"agents/{p.name}": p for p in sorted((AGENTS_PARENT / "agents").glob("*.py"))}


@dataclass
class PushReport:
    """What a deploy copied and what it found already in place."""

    pushed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_pushed: int = 0
    seconds: float = 0.0


def push(remote: Remote, device: DeviceSpec, workdir: str, files: dict[str, tuple[Path, str]],
         owned: Ownership | None) -> PushReport:
    """Copy ``files`` (relative path -> (local file, sha256)) unless the device has the same sha256."""
    escaping = [rel for rel in files if not _inside(rel)]
    if escaping:
        raise DeployError(f"{device.id}: refusing to write {escaping[:3]} outside {workdir}: a pushed file's path must "
                          "be relative to the workdir, without '..'")
    t0 = time.perf_counter()
    report = PushReport()
    where = remote.target.to_dict()
    have = run_py(remote, device.python or "python3", HASHES_PY, workdir, stdin=json.dumps(sorted(files)).encode())
    for rel in sorted(files):
        local, sha = files[rel]
        if have.get(rel) == sha:
            report.skipped.append(rel)
            continue
        dest = f"{workdir}/{rel}"
        for made in remote.makedirs(dest.rsplit("/", 1)[0]):
            if owned is not None:
                owned.add("dir", where, path=made)
        remote.put(local, dest)
        if owned is not None:
            owned.add("file", where, path=dest, sha256=sha)
        report.pushed.append(rel)
        report.bytes_pushed += local.stat().st_size
    report.seconds = time.perf_counter() - t0
    return report


def deploy_files(bundle: Bundle, tier: str) -> dict[str, tuple[Path, str]]:
    """Everything a device of ``tier`` needs: the agent package and its tier's bundle files."""
    out = {rel: (path, sha256_file(path)) for rel, path in agent_files().items()}
    for file, sha in bundle.device_files(tier).items():
        out[f"bundles/{bundle_dir_name(bundle)}/{file}"] = (bundle.root / file, sha)
    return out


def bundle_dir_name(bundle: Bundle) -> str:
    """The bundle's directory name on a device (under WORKDIR/bundles): its own directory's real name."""
    return bundle.root.resolve().name


def _inside(rel: str) -> bool:
    try:
        inside(rel)
    except ValueError:
        return False
    return True


class RemoteAgent:
    """An agent started over SSH.

    A watcher (one long-lived SSH command) returns when the agent's process is gone, so
    ``returncode`` costs no round trip and the device no polling: the controller's loop
    asks it on every turn.
    """

    def __init__(self, remote: Remote, device: DeviceSpec, workdir: str, run_rel: str, pid: int, starttime: str,
                 local_log: Path, bundle_name: str):
        self.remote = remote
        self.device_id = device.id
        self.python = device.python or "python3"
        self.workdir = workdir
        self.log_remote = f"{workdir}/{run_rel}/{device.id}.log"
        self.exit_remote = f"{workdir}/{run_rel}/{device.id}.exit"
        self._pid = pid
        self.starttime = starttime
        self.log_path = local_log
        self.bundle_name = bundle_name
        self._code: int | None = None
        self._watch = remote.watch([self.python, "-c", WATCH_PY, str(pid), starttime, self.exit_remote])

    @property
    def pid(self) -> int:
        """Process id on the device (the agent's session leader)."""
        return self._pid

    def partition_path(self, file: str) -> str:
        """Relative to the agent's workdir, where deploy put it."""
        return f"bundles/{self.bundle_name}/{file}"

    def returncode(self) -> int | None:
        """None while the agent runs on the device; its exit status after (-9: killed, -1: unknown)."""
        if self._code is None and self._watch.finished():
            text = self._watch.output().strip()
            self._code = int(text) if text.lstrip("-").isdigit() else -1
        return self._code

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM the agent's process group, SIGKILL after ``timeout_s``; returns its exit status."""
        if self.returncode() is None:
            try:
                run_py(self.remote, self.python, PROCCTL_PY, "term", str(self._pid), self.starttime, str(timeout_s),
                    timeout=timeout_s + 15)
            except DeployError:
                return None
            deadline = time.monotonic() + 5.0
            while self.returncode() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        self._watch.close()
        return self._code

    def fetch_log(self) -> None:
        """Copy the agent's log from the device into the run directory."""
        self.remote.get(self.log_remote, self.log_path)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the log on the device (or of the fetched copy)."""
        try:
            return self.remote.run(["tail", "-n", str(lines), self.log_remote], check=False, timeout=15).out.rstrip()
        except DeployError:
            try:
                return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
            except OSError:
                return ""


def start_agent(remote: Remote, device: DeviceSpec, args: AgentArgs, workdir: str, run_id: str,
                owned: Ownership | None, local_log: Path, bundle_name: str) -> RemoteAgent:
    """Start the agent detached on the device; its pid, start time and run dir go into the record."""
    py = device.python or "python3"
    run_rel = f"runs/{run_id}"
    rundir = f"{workdir}/{run_rel}"
    where = remote.target.to_dict()
    for made in remote.makedirs(rundir):
        if owned is not None:
            owned.add("rundir" if made == rundir else "dir", where, path=made)
    log, exitf = f"{rundir}/{device.id}.log", f"{rundir}/{device.id}.exit"
    bind = device.data_host or device.host
    argv = agent_argv(device, args, py, workdir, bind) + ["--models", f"{workdir}/bundles/{bundle_name}"]
    if args.keys:  # 0600 before a byte is written; the agent deletes it once read
        remote.put_secret(args.keys, f"{rundir}/keys.json")
        argv += ["--keys", f"{rundir}/keys.json"]
    inner = shlex.join(argv) + f"; echo $? > {shlex.quote(exitf)}"
    q = shlex.quote
    cmd = (f"cd {q(workdir)} && pid=$( env PYTHONPATH={q(workdir)} OMP_NUM_THREADS={device.threads} "
           f"setsid sh -c {q(inner)} > {q(log)} 2>&1 < /dev/null & echo $! ) && "
           f"{q(py)} -c {q(PROCCTL_PY)} status \"$pid\" -")
    res = remote.run(cmd, timeout=30)
    try:
        st = json.loads(res.out.strip().splitlines()[-1])
        pid = int(st["pid"])
    except (ValueError, IndexError, KeyError) as e:
        raise AgentStartError(f"device {device.id}: starting the agent printed no pid ({res.out!r})") from e
    starttime = st.get("starttime") or "-"
    if owned is not None:
        owned.add("process", where, pid=pid, starttime=starttime, python=py, log=log)
    if not st["alive"]:
        tail = remote.run(["tail", "-n", "20", log], check=False).out
        raise AgentStartError(f"device {device.id}: the agent exited at once on {remote.target.where}; "
                              f"its log:\n{tail}")
    return RemoteAgent(remote, device, workdir, run_rel, pid, starttime, local_log, bundle_name)


@dataclass
class DeployRecord:
    """Per device, for the manifest: how it was reached and what was copied."""

    device: str
    host: str
    method: str
    workdir: str
    facts: dict[str, Any]
    push: PushReport
    host_key_recorded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"device": self.device, "host": self.host, "method": self.method, "workdir": self.workdir,
                "pushed": self.push.pushed, "skipped": self.push.skipped, "bytes_pushed": self.push.bytes_pushed,
                "push_s": round(self.push.seconds, 3), "host_key_recorded": self.host_key_recorded,
                "python": self.facts.get("python"), "modules": self.facts.get("modules"),
                "kernel": self.facts.get("kernel"), "clock_offset_ms": self.facts.get("clock_offset_ms"),
                "netem": self.facts.get("netem"), "governor": self.facts.get("governor"),
                "temp_c_max": self.facts.get("temp_c_max"), "meters": self.facts.get("meters")}


def deploy_device(remote: Remote, device: DeviceSpec, bundle: Bundle, owned: Ownership | None,
                  max_clock_offset_ms: float | None = None, backend: str | None = None) -> DeployRecord:
    """Preflight (refusing with every missing thing at once), then push the device's files."""
    facts = preflight(remote, device)
    files = deploy_files(bundle, device.tier)
    need = sum(path.stat().st_size for path, _ in files.values())
    problems = preflight_problems(device, facts, need, max_clock_offset_ms, backend)
    if problems:
        raise DeployError("preflight failed:\n  " + "\n  ".join(problems))
    report = push(remote, device, facts["workdir"], files, owned)
    return DeployRecord(device.id, device.host, "ssh+sftp", facts["workdir"], facts, report)


def run_steps(remote: Remote, python: str, steps: list[list[str]], show: list[list[str]] | None) -> dict[str, Any]:
    """Run ``steps`` on the device in one SSH command, stopping at the first failure; raise naming it.

    ``show``: commands whose output (concatenated) comes back as ``show``: the state read back.
    """
    got = run_py(remote, python, STEPS_PY, stdin=json.dumps([steps, show]).encode())
    for step in got["steps"]:
        if step["rc"] != 0:
            raise DeployError(f"device {remote.target.device}: `{' '.join(step['argv'])}` exited with status "
                              f"{step['rc']}: {step['err']}")
    return got


# Bytes a full TCP segment carries on an Ethernet link besides its payload: IPv4 20, TCP 20 with the
# timestamp option 12, Ethernet header 14. htb and netem rates count these; the probe reads payload.
L2_OVERHEAD_BYTES = 66


def probe_link(sender: Remote, sender_python: str, receiver: Remote, receiver_python: str, receiver_addr: str,
               nbytes: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Measure one direction of a link: TCP connect time and bulk throughput at the receiver."""
    sink = receiver.watch([receiver_python, "-c", SINK_PY, receiver_addr, str(timeout_s), str(nbytes)])
    try:
        deadline = time.monotonic() + timeout_s
        while "\n" not in sink.output_so_far() and time.monotonic() < deadline and not sink.finished():
            time.sleep(0.02)
        first = sink.output_so_far().split("\n", 1)[0].strip()
        if not first.isdigit():
            raise DeployError(f"device {receiver.target.device}: the probe sink did not start ({first!r})")
        sent = run_py(sender, sender_python, SEND_PY, receiver_addr, first, str(nbytes), timeout=timeout_s + 10)
        while not sink.finished() and time.monotonic() < deadline:
            time.sleep(0.02)
        got = json.loads(sink.output_so_far().strip().splitlines()[-1])
    finally:
        sink.close()
    span_s = max(1e-9, (got["last_ns"] - got["first_ns"]) / 1e9)
    whole = got["bytes"] * 8 / span_s / 1e6
    mean, best = stream_rates([tuple(m) for m in got.get("marks") or []])
    mean = mean or whole
    out = {"bytes": got["bytes"], "throughput_mbit": round(mean, 3), "throughput_whole_mbit": round(whole, 3),
           "tcp_connect_ms": round(sent["connect_ms"], 3),
           # CPU time a hypervisor took from each end while the stream ran (VMs; 0 on bare metal, None: unknown):
           # a shaper's timers fire late on a vCPU that is not running, and the link runs slower
           "sender_steal_pct": sent.get("steal_pct"), "receiver_steal_pct": got.get("steal_pct")}
    mss = int(got.get("mss") or 0)
    scale = (mss + L2_OVERHEAD_BYTES) / mss if mss > 0 else 1.0
    if mss > 0:  # what a rate limiter counts: every segment's payload plus its headers on the link
        out["mss_bytes"] = mss
        out["link_mbit"] = round(mean * scale, 3)
    if best is not None:
        out["link_capacity_mbit"] = round(best * scale, 3)
    return out


CAPACITY_WINDOW = 6  # marks are 5% of the stream apart: the capacity is the fastest 30% stretch


def stream_rates(marks: list[tuple[int, int]], window: int = CAPACITY_WINDOW) -> tuple[float | None, float | None]:
    """(mean, best) Mbit/s of a stream from its receiver's marks ``(bytes so far, monotonic ns)``.

    ``mean``: from the first mark to the last (the steady part: past the rate limiter's initial
    burst and TCP's start, before the last reads of a receiver whose CPU cap paused it).
    ``best``: the fastest stretch of ``window`` consecutive mark intervals, the link's capacity. A
    shaper never passes more than its rate (bar a burst of a packet or two, nothing over 30% of the
    stream), while a busy or throttled end, or a host that steals the VM's CPU, only ever slows a
    stream down; so the best stretch reads the link, the mean reads what the ends got through it.
    None where the marks do not allow it.
    """
    def rate(a: tuple[int, int], b: tuple[int, int]) -> float | None:
        return (b[0] - a[0]) * 8 / ((b[1] - a[1]) / 1e9) / 1e6 if b[1] > a[1] else None

    if len(marks) < 2:
        return None, None
    mean = rate(marks[0], marks[-1])
    spans = [rate(marks[i], marks[i + window]) for i in range(len(marks) - window)]
    best = max((r for r in spans if r is not None), default=None)
    return mean, best


def undo_remote(entry: dict[str, Any], remote: Remote) -> str:
    """Undo one ownership entry on a device; ``removed``, or ``gone`` when it is not there or not ours."""
    kind = entry["kind"]
    py = entry.get("python") or "python3"
    if kind == "process":
        st = run_py(remote, py, PROCCTL_PY, "term", str(entry["pid"]), entry.get("starttime") or "-", "5")
        return REMOVED if st["ours"] else GONE
    if kind == "file":
        have = remote.run(["sha256sum", entry["path"]], check=False).out.split()
        if not have or have[0] != entry["sha256"]:
            return GONE  # absent, or someone else's file now
        remote.run(["rm", "-f", entry["path"]])
        return REMOVED
    if kind == "rundir":  # runs/<run_id>: made by this run alone, holding its agent's log and exit status
        if remote.run(["test", "-d", entry["path"]], check=False).rc != 0:
            return GONE
        remote.run(["rm", "-rf", "--", entry["path"]])
        return REMOVED
    if kind == "dir":  # removed only when empty: it may hold what other runs deployed
        return REMOVED if remote.run(["rmdir", "--", entry["path"]], check=False).rc == 0 else GONE
    if kind == "qdisc":
        q = shlex.quote
        mine = f"qdisc {entry['qdisc']} {entry['handle']} root"
        res = remote.run(f"tc qdisc show dev {q(entry['dev'])} root 2>/dev/null | grep -qF {q(mine)} && "
                         f"tc qdisc del dev {q(entry['dev'])} root && echo removed || echo gone")
        return REMOVED if res.out.strip().endswith("removed") else GONE  # gone: no interface, or not our qdisc
    raise DeployError(f"unknown ownership entry kind {kind!r}")

