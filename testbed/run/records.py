"""What the manifest records of a run, built in one place: inputs, machine, shaping, agents, energy, wire bytes."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from agents import protocol as p
from testbed import __version__
from testbed.core import costmodel
from testbed.core.config import EnergySpec, Experiment, Inventory, LinkProfile
from testbed.core.hops import Hop
from testbed.devices.owned import proc_starttime
from testbed.formats.bundle import Bundle
from testbed.formats.manifest import BundleRecord, ControllerRecord, FileRecord, RunManifest
from testbed.formats.schema import SCHEMA_VERSION
from testbed.run.session import AgentState


def git_state(repo: Path) -> dict[str, Any]:
    """The commit the controller's code is at, and whether tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        return {"sha": sha or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def versions() -> dict[str, str]:
    """Versions of Python, the testbed, the protocol and the libraries a run's numbers depend on."""
    out = {"python": platform.python_version(), "testbed": __version__, "protocol": str(p.PROTOCOL_VERSION)}
    for dist in ("numpy", "onnxruntime", "pyzmq", "msgpack", "pandas", "pyarrow", "pydantic", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    import zmq

    out["libzmq"] = zmq.zmq_version()
    return out


def initial_manifest(run_id: str, exp: Experiment, exp_path: Path, inv: Inventory, inv_path: Path, bundle: Bundle,
                     hashes: dict[str, str]) -> RunManifest:
    """The manifest as the run starts: its inputs verbatim and resolved, the bundle, the machine, the cost model."""
    exp_text = exp_path.read_text()
    s = bundle.spec
    return RunManifest(
        schema_version=SCHEMA_VERSION, run_id=run_id, tiers=list(bundle.tiers),
        started_at=datetime.now(UTC).isoformat(), command=sys.argv,
        experiment=FileRecord(path=str(exp_path), yaml=exp_text, sha256=hashlib.sha256(exp_text.encode()).hexdigest(),
                              resolved=exp.model_dump()),
        inventory=FileRecord(path=str(inv_path), yaml=inv_path.read_text(), resolved=inv.model_dump()),
        bundle=BundleRecord(path=str(bundle.root), name=s.name, sha256=hashes,
                            exits={t.tier: t.exit.model_dump() for t in s.tiers},
                            model=s.model.model_dump(exclude_none=True),
                            build=yaml.safe_dump(s.build.model_dump())),
        git=git_state(Path(__file__).resolve().parent.parent.parent),
        controller=ControllerRecord(host=platform.node(), platform=platform.platform(), versions=versions(),
                                    pid=os.getpid(), pid_starttime=proc_starttime(os.getpid())),
        cost_model=costmodel.from_spec(exp.cost).record()
        | {"layers": bundle.layers_run})


def shaping_record(backend: str, links: dict[str, LinkProfile], readback: dict[str, Any] | None) -> dict[str, Any]:
    """How the links were shaped: the backend, the profiles, who applies what, the kernel's read-back."""
    if backend == "none":
        return {"backend": "none", "note": "links are not shaped"}
    rec: dict[str, Any] = {"backend": backend, "links": {k: v.model_dump() for k, v in links.items()}}
    if backend == "userspace":
        rec["applied_by"] = ("delay and jitter: the sending agent of each hop holds its offloads (uniform jitter, "
                             "in order), in the direction samples travel"
                             + ("; rate: htb on both ends' interfaces (kernel)" if readback else ""))
    else:
        rec["applied_by"] = "netem (under an htb rate class where rate_mbit is set) on both ends' interfaces"
    if readback:
        rec["kernel"] = readback
    return rec


def energy_record(agents: list[AgentState], e: EnergySpec) -> dict[str, Any]:
    """Each device's meter and idle power, and how energy windows were cut."""
    meters, idle = {}, {}
    for a in agents:
        assert a.hello is not None and a.ready is not None
        meters[a.device_id] = a.hello.facts.get("meter", {"source": "none"})
        idle[a.device_id] = None if math.isnan(a.ready.idle_w) else a.ready.idle_w
    batching = e.batch_samples > 1 or e.min_window_s > 0
    window = ("each tier's compute window per sample (onnxruntime run); idle time between samples is not "
              "attributed") if not batching else (
        f"batch windows of at least {e.batch_samples} samples and {e.min_window_s} s per device, from just "
        "before the first sample's compute to the end of the last one's, or to the flush at the end of each "
        "phase (the gaps between samples included); each sample gets a share in proportion to its compute "
        "time (energy_batch_<tier>; raw windows in energy_windows.parquet)")
    return {"meters": meters, "idle_baseline_s": e.idle_s, "idle_w": idle,
            "batch_samples": e.batch_samples, "min_window_s": e.min_window_s, "window": window}


def agent_records(agents: list[AgentState]) -> dict[str, Any]:
    """What each agent said of itself, its load time, and its clock offset with the bound on it.

    ``pid`` is the agent's own process (from its Hello); ``launch_pid`` what the launcher started and
    signals (over SSH a ``setsid sh`` whose process group holds the agent; locally the agent itself).
    """
    out = {}
    for a in agents:
        assert a.hello is not None and a.ready is not None
        out[a.device_id] = {"tier": a.tier, "pid": a.hello.facts.get("pid", a.handle.pid),
                            "launch_pid": a.handle.pid, "agent_version": a.hello.agent_version,
                            "protocol_version": a.hello.protocol_version, "data_endpoint": a.hello.data_endpoint,
                            "facts": a.hello.facts, "load_ms": a.ready.load_ms, "providers": a.ready.providers,
                            "idle_w": None if math.isnan(a.ready.idle_w) else a.ready.idle_w,
                            "clock_offset_ns": a.offset_ns, "clock_rtt_ns": a.rtt_ns, "clock_pings": len(a.pings)}
    return out


def clock_drift(a: AgentState) -> dict[str, Any]:
    """The offset measured again after the samples, and the drift between the two (ppm of elapsed time)."""
    if a.offset_end_ns is None or not a.pings or not a.pings_end:
        return {}
    elapsed_ns = a.pings_end[0][0] - a.pings[0][0]
    drift = (a.offset_end_ns - a.offset_ns) / elapsed_ns * 1e6 if elapsed_ns > 0 else None
    return {"clock_offset_end_ns": a.offset_end_ns, "clock_rtt_end_ns": a.rtt_end_ns,
            "clock_drift_ppm": None if drift is None else round(drift, 3),
            "clock_measured_unix_ns": a.pings[0][0], "clock_measured_end_unix_ns": a.pings_end[0][0],
            "clock_drift_bound_ppm": round((a.rtt_ns + (a.rtt_end_ns or 0)) / 2 / elapsed_ns * 1e6, 3)
            if elapsed_ns > 0 else None, "clock_elapsed_s": round(elapsed_ns / 1e9, 3)}


def wire_ifaces(inv: Inventory, devices: dict[str, list[str]], tiers: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per receiving tier: the interface its hop from the previous tier arrives through, or why none is counted.

    ``devices``: tier -> its device ids; ``tiers``: the run's, in order. Only a dedicated link counts
    (one the hop's data alone uses, from one sender); else bytes_wire stays null.
    """
    out: dict[str, dict[str, str]] = {}
    for prev, tier in zip(tiers, tiers[1:], strict=False):
        dev = inv.device(devices[tier][0])
        iface = dev.interfaces.get(prev)
        hop = Hop(prev, tier).column
        if len(devices[tier]) > 1 or len(devices[prev]) > 1:
            out[tier] = {"hop": hop, "why_not": f"several devices on {prev} or {tier}: an interface counter would mix "
                         "their samples"}
        elif not iface:
            out[tier] = {"hop": hop, "why_not": f"{dev.id} has no interfaces.{prev} in the inventory "
                         "(its link to the previous tier is not known to be its own)"}
        elif iface == dev.interface_to("controller"):
            out[tier] = {"hop": hop, "why_not": f"{dev.id}'s interface {iface} also carries its control traffic"}
        else:
            out[tier] = {"hop": hop, "device": dev.id, "interface": iface}
    return out


def policy_record(policy: Any) -> dict[str, Any]:
    """The manifest's record of a policy; with one state per first-tier device, the first's and each one's."""
    from testbed import policies

    if isinstance(policy, dict):
        per = {d: policies.record(p) for d, p in policy.items()}
        return {**next(iter(per.values())), "state": "per-source", "per_source": per}
    return policies.record(policy)
