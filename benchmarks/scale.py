"""One controller, many agents: samples per second, controller CPU per sample, memory; a bare pyzmq pipeline beside.

Runs, in one process, with the tiny bundle the tests use (three one-layer tiers: the harness is
what is measured, not the model), every agent a local process on this machine:

1. fleets of 3, 4, 16 and 32 agents: (n - 2) mobiles, one edge, one cloud; the ``offline``
   scenario (every sample issued at once, at most 16 per mobile outstanding), policy all-mobile
   (each sample one hop there and back, spread over the mobiles in turn) and, for 3 agents,
   all-cloud too (three hops). Per fleet: samples/s (measured rows over the span from the
   first issue to the last answer), the controller's CPU seconds per sample (its own process,
   which runs no agent), its peak RSS and the agents' summed CPU. Every row is written: the
   count on disk is checked against the plan.
2. the same shape with bare pyzmq and no harness: one process sends the same sample payload to
   (n - 2) echo processes over PUSH/PULL with the same number outstanding and counts answers.
3. a 100,000-sample run (3 agents, one split cycled with ``samples.repeat``): the controller's
   RSS at 10,000 and at 100,000 rows.

Where a goal is not met it says which part is the limit, from the measured CPU: the controller
(its CPU seconds over the span near one core), the agents, or neither (the kernel and the
scheduler on a 2-core machine). Last line:
``samples_per_s_32=... samples_per_s_3=... vs_bare=... rss_growth_pct=...`` (vs_bare: the
32-agent harness rate over the bare rate of the same shape).

Usage: python benchmarks/scale.py [--samples 15000] [--long 100000] [--fleets 3,4,16,32]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from testbed.core.config import load_experiment, load_inventory  # noqa: E402
from testbed.formats.results import load_samples  # noqa: E402
from testbed.run.controller import Controller  # noqa: E402

from tinybundle import make_tiny_bundle  # noqa: E402

GOALS = {"samples_per_s_32": 2000.0, "samples_per_s_3": 3500.0, "rss_growth_pct": 10.0}

ECHO = """
import sys, zmq
ctx = zmq.Context(); pull = ctx.socket(zmq.PULL); port = pull.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
push = ctx.socket(zmq.PUSH); push.connect(sys.argv[1])
while True:
    frames = pull.recv_multipart()
    if frames[0] == b"stop":
        break
    push.send_multipart(frames)
"""


def write_inputs(work: Path, bundle: Path, agents: int, policy: str, count: int, repeat: int) -> tuple[Path, Path]:
    """An experiment and inventory for a fleet of ``agents``: agents - 2 mobiles, one edge, one cloud."""
    mobiles = [f"mobile-{i}" for i in range(1, agents - 1)]
    ids = [*mobiles, "edge-1", "cloud-1"]
    inv = {"devices": [{"id": d, "tier": d.split("-")[0], "host": "127.0.0.1", "launcher": "local", "threads": 1,
                        "meter": {"kind": "none"}} for d in ids]}
    exp = {"name": f"scale-{agents}-{policy}", "bundle": str(bundle),
           "devices": {"mobile": mobiles, "edge": "edge-1", "cloud": "cloud-1"},
           "samples": {"split": "test", "count": count, "warmup": 0, "repeat": repeat},
           "policies": [{"name": policy}], "energy": {"idle_s": 0},
           "run": {"scenario": "offline", "max_in_flight": 16 * len(mobiles), "flush_rows": 1024},
           "timeouts": {"hello_s": 120, "configure_s": 120, "heartbeat_s": 0.5, "liveness": 20, "sample_s": 120}}
    e, i = work / f"{exp['name']}.yaml", work / f"inv-{agents}.yaml"
    e.write_text(yaml.safe_dump(exp, sort_keys=False))
    i.write_text(yaml.safe_dump(inv, sort_keys=False))
    return e, i


def run_fleet(work: Path, bundle: Any, agents: int, policy: str, total: int,
              rss_at: tuple[int, ...] = ()) -> dict[str, Any]:
    """One run: rate, controller CPU per sample, peak RSS, agents' CPU; RSS at the given row counts."""
    count = len(bundle.samples("test"))
    repeat = max(1, -(-total // count))
    exp_path, inv_path = write_inputs(work, bundle.root, agents, policy, count, repeat)
    me = psutil.Process()
    rss: dict[int, int] = {}

    def on_progress(pr: Any) -> None:
        if pr.done in rss_at:
            rss[pr.done] = me.memory_info().rss
        if pr.done in (1, pr.total):  # the sampling span: CPU of the controller and of the agents over it
            marks[pr.done] = (time.perf_counter(), time.process_time(), _agents_cpu(me))

    marks: dict[int, tuple[float, float, dict[int, float]]] = {}
    ctrl = Controller(load_experiment(exp_path), exp_path, load_inventory(inv_path), inv_path, bundle,
                      work / "results", on_progress=on_progress)
    outcome = ctrl.run()
    (w0, c0, a0), (w1, c1, a1) = marks[1], marks[max(marks)]
    wall, cpu = w1 - w0, c1 - c0
    per_agent = [a1[pid] - a0.get(pid, 0.0) for pid in a1]
    df, _ = load_samples(outcome.run_dir)
    span_s = (df["t_return_unix_ns"].max() - df["t_scheduled_unix_ns"].min()) / 1e9
    return {"agents": agents, "policy": policy, "rows": len(df), "planned": count * repeat,
            "samples_per_s": len(df) / span_s, "span_s": span_s, "wall_s": wall,  # wall: first to last answer
            "controller_cpu_ms_per_sample": cpu / len(df) * 1e3, "controller_cpu_share": cpu / wall,
            "controller_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "agents_cpu_s": sum(per_agent), "busiest_agent_share": max(per_agent) / wall if per_agent else 0.0,
            "rss": rss}


def _agents_cpu(me: psutil.Process) -> dict[int, float]:
    """CPU seconds each agent (a child of this process) has used so far, by pid."""
    out = {}
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            out[child.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def bare(workers: int, total: int, window: int, payload: bytes) -> float:
    """Messages per second through ``workers`` echo processes, ``window`` outstanding, no harness."""
    import zmq

    ctx = zmq.Context.instance()
    back = ctx.socket(zmq.PULL)
    port = back.bind_to_random_port("tcp://127.0.0.1")
    procs, outs = [], []
    for _ in range(workers):  # each echo process binds a port of its own choosing and says which
        proc = subprocess.Popen([sys.executable, "-c", ECHO, f"tcp://127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None
        procs.append(proc)
        s = ctx.socket(zmq.PUSH)
        s.connect(f"tcp://127.0.0.1:{int(proc.stdout.readline())}")
        outs.append(s)
    time.sleep(1.0)
    sent = got = 0
    t0 = time.perf_counter()
    while got < total:
        while sent < total and sent - got < window:
            outs[sent % workers].send_multipart([b"%d" % sent, payload])
            sent += 1
        back.recv_multipart()
        got += 1
    rate = total / (time.perf_counter() - t0)
    for s in outs:
        s.send_multipart([b"stop"])
        s.close(linger=1000)
    for pr in procs:
        pr.wait(10)
    back.close()
    return rate


def limit(r: dict[str, Any]) -> str:
    """Which part bounds the rate, from the measured CPU shares."""
    cores = os.cpu_count() or 1
    if r["controller_cpu_share"] > 0.85:
        return f"controller ({r['controller_cpu_share']:.0%} of one core over the run)"
    agents_share = (r["agents_cpu_s"] or 0) / r["wall_s"]
    if r["busiest_agent_share"] > 0.85:
        return f"an agent (the busiest used {r['busiest_agent_share']:.0%} of a core)"
    if agents_share + r["controller_cpu_share"] > 0.85 * cores:
        return f"the machine's {cores} cores (agents {agents_share:.2f} cores, controller " \
               f"{r['controller_cpu_share']:.2f})"
    return f"neither CPU bound (controller {r['controller_cpu_share']:.0%}, agents {agents_share:.2f} cores): " \
           "the kernel's sockets and scheduling"


def main() -> int:
    """Every fleet, the bare pipelines, the long run; a line each, then the summary line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=15000, help="samples per fleet run (default 15000)")
    ap.add_argument("--long", type=int, default=100_000, help="samples of the memory run (default 100000)")
    ap.add_argument("--fleets", default="3,4,16,32", help="agent counts, comma separated (each at least 3)")
    args = ap.parse_args()
    fleets = [int(x) for x in args.fleets.split(",")]
    with tempfile.TemporaryDirectory(prefix="testbed-scale-") as tmp:
        work = Path(tmp)
        bundle = make_tiny_bundle(work / "tiny", n_test=500)
        payload = bytes(bundle.samples("test").tensors(0)["input_ids"].nbytes * 2)
        rates: dict[int, float] = {}
        bare_rates: dict[int, float] = {}
        for n in fleets:
            for policy in ("all-mobile", "all-cloud") if n == 3 else ("all-mobile",):
                r = run_fleet(work, bundle, n, policy, args.samples)
                assert r["rows"] == r["planned"], f"{r['rows']} rows on disk of {r['planned']} planned"
                if policy == "all-mobile":
                    rates[n] = r["samples_per_s"]
                print(f"agents={n:<3} {policy:<10} rows={r['rows']} samples_per_s={r['samples_per_s']:.0f} "
                      f"controller_cpu_ms_per_sample={r['controller_cpu_ms_per_sample']:.3f} "
                      f"controller_cpu={r['controller_cpu_share']:.0%} agents_cpu_s={r['agents_cpu_s']:.1f} "
                      f"peak_rss_mb={r['controller_peak_rss_mb']:.0f}; limit: {limit(r)}", flush=True)
            bare_rates[n] = bare(n - 2, args.samples, 16 * (n - 2), payload)
            print(f"agents={n:<3} bare pyzmq (same shape, no harness) messages_per_s={bare_rates[n]:.0f}", flush=True)
        long = run_fleet(work, bundle, 3, "all-mobile", args.long, rss_at=(10_000, args.long))
        early, late = long["rss"].get(10_000), long["rss"].get(args.long)
        growth = (late - early) / early * 100 if early and late else float("nan")
        print(f"long run: {long['rows']} rows at {long['samples_per_s']:.0f}/s; controller RSS "
              f"{(early or 0) / 2**20:.0f} MB at 10,000 rows, {(late or 0) / 2**20:.0f} MB at {args.long:,}",
              flush=True)
    big, three = max(fleets), 3 if 3 in rates else min(fleets)
    line = {"samples_per_s_32": rates.get(32, rates[big]), "samples_per_s_3": rates.get(3, rates[three]),
            "vs_bare": rates[big] / bare_rates[big], "rss_growth_pct": growth}
    for key, goal in GOALS.items():
        ok = line[key] <= goal if key == "rss_growth_pct" else line[key] >= goal
        print(f"goal {key} {'>=' if key != 'rss_growth_pct' else '<='} {goal:g}: {'met' if ok else 'NOT met'} "
              f"({line[key]:.1f})")
    print(f"samples_per_s_32={line['samples_per_s_32']:.0f} samples_per_s_3={line['samples_per_s_3']:.0f} "
          f"vs_bare={line['vs_bare']:.2f} rss_growth_pct={line['rss_growth_pct']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
