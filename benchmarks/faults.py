"""Faults against live loopback runs: per fault the rows measured, on disk, lost and falsified.

Each fault runs the same experiment (three policies: all-cloud, random over the tiers, all-cloud
again; the default bundle; agents on this machine, CurveZMQ as runs have it) through the CLI,
as a lab would, and then recovers the way the docs say (``testbed run --resume``):

- agent killed: kill -9 of the edge agent mid-run; the run fails; resumed;
- controller killed: kill -9 of ``testbed run`` mid-run; at once a squatter binds the dead
  controller's port and listens for the agents (they must not talk to it); the agents exit by
  themselves; ``--resume`` marks the run lost and goes on;
- double Ctrl-C: two SIGINTs 150 ms apart; resumed;
- disk full: the results on a tmpfs that a ballast file fills mid-run (needs root to mount);
  the rows that no longer fit go to a rescue file; the ballast removed, resumed;
- hostile peer: during a run, a local process sends forged Results to the controller's socket
  (as a stranger and under the cloud agent's own identity) and pushes Work that would make the
  mobile answer every sample to its data socket.

Per fault: **planned** samples; **measured** by the first attempt (on disk plus rescued; for a
killed controller the Results the agents' logs say they sent); **on disk** after recovery;
**lost** = planned samples with no row after recovery; **falsified** = rows whose answer is
not what the bundle's model gives for that sample at that exit (its exits table), whose exit
is not the one the policy allows, or that repeat a seq. Last line:
``lost_rows=N falsified_rows=M``; the goal is 0 and 0.

Usage: python benchmarks/faults.py [--bundle partitions/minilm-sentiment] [--count 40] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed.formats.bundle import Bundle  # noqa: E402
from testbed.formats.results import load_samples  # noqa: E402

TIERS = ("mobile", "edge", "cloud")
POLICIES = [{"name": "all-cloud", "label": "cloud-a"},
            {"name": "random", "shares": {"mobile": 0.4, "edge": 0.3, "cloud": 0.3}},
            {"name": "all-cloud", "label": "cloud-b"}]


def write_inputs(work: Path, bundle: Path, count: int, name: str, security: str = "curve") -> tuple[Path, Path]:
    """The experiment and inventory every fault runs."""
    exp = {"name": name, "bundle": str(bundle), "seed": 11,
           "devices": {t: f"{t}-1" for t in TIERS},
           "samples": {"split": "test", "count": count, "warmup": 0}, "policies": POLICIES,
           "run": {"concurrency": 4, "flush_rows": 8}, "energy": {"idle_s": 0},
           "timeouts": {"hello_s": 60, "configure_s": 60, "heartbeat_s": 0.2, "liveness": 10, "sample_s": 30,
                        "stop_s": 3}}
    inv = {"devices": [{"id": f"{t}-1", "tier": t, "host": "127.0.0.1", "launcher": "local", "threads": 1,
                        "meter": {"kind": "none"}} for t in TIERS], "controller": {"security": security}}
    (work / f"{name}.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    (work / "inventory.yaml").write_text(yaml.safe_dump(inv, sort_keys=False))
    return work / f"{name}.yaml", work / "inventory.yaml"


STDERR = Path(os.environ.get("FAULTS_STDERR", os.devnull))  # where the CLI's messages go (for diagnosis)


def testbed(*args: str | Path, wait: bool = True, timeout: float = 600) -> subprocess.Popen | int:
    """``python -m testbed ARGS``: its exit status, or the process when ``wait`` is False."""
    with open(STDERR, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "testbed", *map(str, args)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return proc.wait(timeout) if wait else proc


def wait_for(cond: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``cond`` every 20 ms for at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def parts(results: Path) -> int:
    """Complete row files flushed so far."""
    return len(list(results.glob("*/*/samples.parts/part-*.parquet")))


def run_dir(results: Path) -> Path:
    """The one run under ``results``."""
    found = [p.parent for p in results.glob("*/*/manifest.json")]
    assert len(found) == 1, found
    return found[0]


def manifest(rd: Path) -> dict[str, Any]:
    """The run's manifest as JSON."""
    return json.loads((rd / "manifest.json").read_text())


def answered(rd: Path) -> int:
    """Results the agents say they sent the controller (their logs' last ``N answered``)."""
    total = 0
    for log in (rd / "logs").glob("*.log"):
        counts = re.findall(r"(\d+) answered", log.read_text(errors="replace"))
        total += int(counts[-1]) if counts else 0
    return total


def audit(rd: Path, exits: Any, planned: int) -> dict[str, int]:
    """Rows on disk, planned samples without a row, and rows that are not the truth."""
    try:
        df, _ = load_samples(rd)
    except Exception:  # noqa: BLE001  (no row at all reached the disk)
        return {"on_disk": 0, "lost": planned, "falsified": 0}
    truth = exits.set_index("sample_id")
    expected = np.array([truth.at[s, f"prediction_{t}"] for s, t in zip(df.sample_id, df.exit_tier, strict=True)])
    wrong_answer = df.prediction.to_numpy() != expected
    allowed = np.where(df.policy.str.startswith("cloud"), df.exit_tier == "cloud", df.exit_tier == df.policy_choice)
    repeats = len(df) - df.seq.nunique()
    outside = int((~df.seq.isin(range(planned))).sum())
    falsified = int((wrong_answer | ~allowed).sum()) + repeats + outside
    return {"on_disk": len(df), "lost": planned - int(df.seq[df.seq < planned].nunique()), "falsified": falsified}


def agent_pids(rd: Path) -> dict[str, int]:
    """Device -> pid of its agent, from the manifest's owned processes."""
    return {p["device"]: p["pid"] for p in manifest(rd).get("owned", {}).get("processes", [])}


def gone(pids: list[int]) -> bool:
    """Whether none of these processes runs any longer (zombies count as gone)."""
    import psutil

    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


class Fault:
    """One fault's run directory and inputs, and what it measured."""

    def __init__(self, name: str, work: Path, bundle: Bundle, count: int, security: str = "curve"):
        self.name, self.bundle = name, bundle
        self.results = work / name
        self.exp, self.inv = write_inputs(work, bundle.root, count, name, security)
        self.planned = count * len(POLICIES)
        self.measured = 0
        self.note = ""

    def start(self) -> subprocess.Popen:
        """``testbed run`` in the background; returns once its first rows are on disk."""
        proc = testbed("run", self.exp, "--inventory", self.inv, "--results", self.results, "-q", wait=False)
        assert isinstance(proc, subprocess.Popen)
        if not wait_for(lambda: parts(self.results) >= 2, 300):
            proc.kill()
            raise RuntimeError(f"{self.name}: no rows on disk after 300 s")
        return proc

    def resume(self) -> int:
        """``testbed run --resume`` on the run; its exit status."""
        rc = testbed("run", "--resume", run_dir(self.results), "-q")
        assert isinstance(rc, int)
        return rc

    def first_attempt(self) -> None:
        """What the first attempt measured: on disk plus rescued to the temporary directory."""
        import pyarrow.parquet as pq

        from testbed.formats.results import rescued_files

        rd = run_dir(self.results)
        rescued = sum(pq.read_metadata(f).num_rows for f in rescued_files(rd)[0])
        self.measured = audit(rd, self.bundle.exits("test"), self.planned)["on_disk"] + rescued

    def result(self) -> dict[str, Any]:
        """The fault's line."""
        return {"fault": self.name, "planned": self.planned, "measured": self.measured,
                **audit(run_dir(self.results), self.bundle.exits("test"), self.planned), "note": self.note}


def agent_killed(f: Fault) -> None:
    """kill -9 of the edge agent mid-run; the run fails; resumed."""
    proc = f.start()
    os.kill(agent_pids(run_dir(f.results))["edge-1"], signal.SIGKILL)
    rc = proc.wait(120)
    f.first_attempt()
    f.note = f"run exit {rc}, status {manifest(run_dir(f.results))['status']}; resume exit {f.resume()}"


def controller_killed(f: Fault) -> None:
    """kill -9 of the controller mid-run; a squatter takes its port; the agents leave; resumed."""
    import zmq

    proc = f.start()
    rd = run_dir(f.results)
    pids = list(agent_pids(rd).values())
    cmdline = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
    endpoint = cmdline[cmdline.index(b"--controller") + 1].decode()
    proc.kill()
    proc.wait(10)
    squat = zmq.Context.instance().socket(zmq.ROUTER)
    squat.setsockopt(zmq.LINGER, 0)
    heard = 0
    try:
        squat.bind(endpoint)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if squat.poll(100):
                squat.recv_multipart()
                heard += 1
    except zmq.ZMQError as e:
        f.note = f"squatter could not bind {endpoint}: {e}; "
    finally:
        squat.close()
    left = wait_for(lambda: gone(pids), 30)
    f.measured = answered(rd)
    flushed = audit(rd, f.bundle.exits("test"), f.planned)["on_disk"]
    f.note += (f"squatter on {endpoint} heard {heard} messages; agents exited by themselves: {left}; "
               f"{f.measured - flushed} answered but unflushed at the kill; resume exit {f.resume()}")
    if heard:
        f.note += " (AGENTS TALKED TO A SQUATTER)"


def double_ctrl_c(f: Fault) -> None:
    """Two SIGINTs 150 ms apart mid-run; resumed."""
    proc = f.start()
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.15)
    rc = proc.wait(120)
    f.first_attempt()
    f.note = f"run exit {rc}, status {manifest(run_dir(f.results))['status']}; resume exit {f.resume()}"


def disk_full(f: Fault) -> None:
    """A tmpfs that a ballast file fills mid-run; the ballast removed; resumed."""
    f.results.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(f.results)],
                             capture_output=True, text=True)
    if mounted.returncode:
        raise RuntimeError(f"needs root to mount a tmpfs: {mounted.stderr.strip()}")
    try:
        proc = f.start()
        ballast = f.results / "ballast"
        with open(ballast, "wb") as out:
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass
        rc = proc.wait(120)
        f.first_attempt()
        from testbed.formats.results import rescued_files

        rows, man = rescued_files(run_dir(f.results))
        rescued = json.loads(man.read_text()) if man else {}
        ballast.unlink()
        f.note = (f"run exit {rc}, status {rescued.get('status', manifest(run_dir(f.results))['status'])}, "
                  f"{rescued.get('rows_rescued', 0)} rows and {'the' if man else 'no'} manifest rescued outside; "
                  f"resume exit {f.resume()}")
    finally:
        kept = f.results.parent / f"{f.name}-kept"
        if f.results.is_dir() and list(f.results.glob("*/*/manifest.json")):
            shutil.copytree(f.results, kept, ignore=shutil.ignore_patterns("ballast"))
        subprocess.run(["umount", "-l", str(f.results)], capture_output=True)
        f.results = kept  # the tmpfs is gone: its run directory was copied out first


def hostile_peer(f: Fault) -> None:
    """Forged Results (a stranger's and under the cloud agent's identity) and pushed Work, mid-run."""
    import zmq

    from agents import protocol as p
    from testbed.core.config import load_experiment, load_inventory
    from testbed.run.controller import Controller

    sent: dict[str, int] = {}

    def attack(ctrl: Controller) -> None:
        ctx = zmq.Context.instance()
        stage = p.Stage("cloud", "cloud-1", 0, 0, 0, 0, 1.0, 0, True, 12, 0.0, False, 0.0, 1, -1, -1)
        logits = np.array([[9.0, 0.0]], np.float32)
        for identity in (b"evil", b"cloud-1"):  # a stranger, then a squatter on a real agent's identity
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.IDENTITY, identity)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(ctrl.transport.endpoint)  # type: ignore[union-attr]
            for seq in range(f.planned):
                dealer.send_multipart(p.encode(p.Result("cloud-1", seq, seq, logits, [stage])))
            sent["results"] = sent.get("results", 0) + f.planned
            time.sleep(0.1)
            dealer.close()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(ctrl.session.agents["mobile-1"].hello.data_endpoint)  # type: ignore[union-attr]
        ids = np.array([[101, 7592, 102]], np.int64)
        for seq in range(f.planned):
            try:
                push.send_multipart(p.encode(p.Work(seq, seq, {"input_ids": ids, "attention_mask": ids * 0 + 1},
                                                    {"mobile": 0.0})), zmq.NOBLOCK)
            except zmq.Again:
                pass
        sent["work"] = f.planned
        push.close()

    def on_progress(pr: Any) -> None:
        if pr.done == 5 and not sent:
            attack(ctrl)

    ctrl = Controller(load_experiment(f.exp), f.exp, load_inventory(f.inv), f.inv, f.bundle, f.results,
                      on_progress=on_progress)
    outcome = ctrl.run()
    f.measured = outcome.rows
    rejected = manifest(outcome.run_dir)["rejected_messages"]
    f.note = (f"sent {sent.get('results', 0)} forged Results and {sent.get('work', 0)} Works; run {outcome.status}; "
              f"controller rejected {sum(rejected.values())} ({rejected or 'none got past CurveZMQ'})")


FAULTS: dict[str, Callable[[Fault], None]] = {
    "agent-killed": agent_killed, "controller-killed": controller_killed, "double-ctrl-c": double_ctrl_c,
    "disk-full": disk_full, "hostile-peer": hostile_peer}


def main() -> int:
    """Run every fault (or ``--only``), print a line per fault, then the totals."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "partitions" / "minilm-sentiment")
    ap.add_argument("--count", type=int, default=40, help="samples per policy (three policies)")
    ap.add_argument("--only", choices=sorted(FAULTS), action="append", help="run only these faults")
    ap.add_argument("--security", choices=("curve", "none"), default="curve",
                    help="controller.security of the runs (none shows what the checks catch without keys)")
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    lines, lost, falsified = [], 0, 0
    with tempfile.TemporaryDirectory(prefix="testbed-faults-") as tmp:
        for name in args.only or FAULTS:
            work = Path(os.environ.get("FAULTS_KEEP") or tmp) / name
            work.mkdir()
            f = Fault(name, work, bundle, args.count, args.security)
            try:
                FAULTS[name](f)
                r = f.result()
            except Exception as e:  # noqa: BLE001  (a fault that cannot be set up here is said, not hidden)
                print(f"{name:<18} NOT RUN: {type(e).__name__}: {e}", flush=True)
                continue
            lost, falsified = lost + r["lost"], falsified + r["falsified"]
            lines.append(r)
            print(f"{name:<18} planned={r['planned']} measured={r['measured']} on_disk={r['on_disk']} "
                  f"lost={r['lost']} falsified={r['falsified']}  ({r['note']})", flush=True)
    print(f"lost_rows={lost} falsified_rows={falsified}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
