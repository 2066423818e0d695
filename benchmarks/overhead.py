"""What the harness adds on top of compute and a bare ZeroMQ hop, all measured in one run.

1. raw: the three partitions of the bundle chained in one process with onnxruntime, per sample
   (same samples, one thread per session, as the agents run them).
2. harness: the full three-tier run (controller + three agent processes, all-cloud policy, so
   every sample makes 4 hops: controller->mobile->edge->cloud->controller).
3. bare zmq: a PUSH/PULL round trip between two processes on 127.0.0.1 carrying a payload of
   the median offload size (the hidden tensor), the socket types the harness uses.

harness hop cost = (end-to-end latency - raw compute of that sample) / 4, median over samples.
added per hop   = harness hop cost - one bare one-way hop (half the bare round trip).
The last line is harness_vs_zmq_ratio = median harness hop cost / median bare round trip;
the target is <= 1.5.

Usage: python benchmarks/overhead.py [--bundle partitions/minilm-sentiment] [--samples 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.runtime import Partition  # noqa: E402
from testbed.bundle import Bundle  # noqa: E402
from testbed.config import load_experiment, load_inventory  # noqa: E402
from testbed.controller import Controller  # noqa: E402

ECHO = """
import sys, zmq
ctx = zmq.Context()
pull = ctx.socket(zmq.PULL); pull.bind(sys.argv[1])
push = ctx.socket(zmq.PUSH); push.connect(sys.argv[2])
while True:
    msg = pull.recv(copy=False)
    if len(msg) == 0:
        break
    push.send(msg, copy=False)
"""


def raw_compute_ms(bundle: Bundle, ids: list[int]) -> np.ndarray:
    parts = {t.tier: Partition.load(bundle.root / t.file, t.sha256, threads=1) for t in bundle.spec.tiers}
    samples = bundle.samples("test")
    out: list[float] = []
    for _ in range(2):  # the first pass warms the sessions up
        times = []
        for i in ids:
            feed = samples.tensors(i)
            t0 = time.perf_counter_ns()
            for tier in ("mobile", "edge", "cloud"):
                res = parts[tier].run(feed)
                if "hidden_out" in res:
                    feed = {"hidden": res["hidden_out"], "attention_mask": feed["attention_mask"]}
            times.append((time.perf_counter_ns() - t0) / 1e6)
        out = times
    return np.array(out)


def harness_rows(bundle: Bundle, n: int, tmp: Path) -> pd.DataFrame:
    exp = {"name": "overhead", "bundle": str(bundle.root),
           "devices": {"mobile": "mobile-1", "edge": "edge-1", "cloud": "cloud-1"},
           "samples": {"split": "test", "count": n, "warmup": 20}, "policies": [{"name": "all-cloud"}],
           "run": {"concurrency": 1, "flush_rows": 256}}
    (tmp / "exp.yaml").write_text(yaml.safe_dump(exp))
    inv = {"devices": [{"id": f"{t}-1", "tier": t, "threads": 1} for t in ("mobile", "edge", "cloud")]}
    (tmp / "inv.yaml").write_text(yaml.safe_dump(inv))
    ctrl = Controller(load_experiment(tmp / "exp.yaml"), tmp / "exp.yaml", load_inventory(tmp / "inv.yaml"),
                      tmp / "inv.yaml", bundle, tmp / "results")
    outcome = ctrl.run()
    df = pd.read_parquet(outcome.run_dir / "samples.parquet")
    return df[df.phase == "measure"]


def bare_zmq_rtt_ms(payload: int, n: int) -> np.ndarray:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    back = pull.bind_to_random_port("tcp://127.0.0.1")
    with tempfile.TemporaryDirectory():
        probe = ctx.socket(zmq.PULL)
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.close(0)
        echo = subprocess.Popen([sys.executable, "-c", ECHO, f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{back}"])
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        data = os.urandom(payload)
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter_ns()
            push.send(data, copy=False)
            pull.recv(copy=False)
            if i >= 50:
                times.append((time.perf_counter_ns() - t0) / 1e6)
        push.send(b"")
        echo.wait(10)
        push.close(0)
        pull.close(0)
    ctx.term()
    return np.array(times)


def one_round(bundle: Bundle, n: int) -> dict[str, float]:
    """raw compute, then the harness, then raw compute again, then a bare round trip; medians."""
    ids = list(range(n))
    before = raw_compute_ms(bundle, ids)
    with tempfile.TemporaryDirectory() as tmp:
        rows = harness_rows(bundle, n, Path(tmp)).sort_values("sample_id")
    after = raw_compute_ms(bundle, ids)
    raw = np.minimum(before, after)[rows["sample_id"].to_numpy()]  # min: the least disturbed compute time
    payload = int(rows["bytes_mobile_edge"].median())
    rtt = bare_zmq_rtt_ms(payload, n)
    lat = rows["latency_ms"].to_numpy()
    own = rows[["compute_ms_mobile", "compute_ms_edge", "compute_ms_cloud"]].sum(axis=1).to_numpy()
    out = {"payload_bytes": payload, "raw_ms": float(np.median(raw)), "latency_ms": float(np.median(lat)),
           "latency_p95_ms": float(np.percentile(lat, 95)), "agent_compute_ms": float(np.median(own)),
           "rtt_ms": float(np.median(rtt)), "rtt_p99_ms": float(np.percentile(rtt, 99)),
           "hop_ms": float(np.median((lat - raw) / 4)), "hop_own_ms": float(np.median((lat - own) / 4))}
    for hop in ("controller_mobile", "mobile_edge", "edge_cloud", "return"):
        out[f"net_{hop}_ms"] = float(rows[f"net_ms_{hop}"].median())
    out["ratio"] = out["hop_ms"] / out["rtt_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "partitions/minilm-sentiment")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3, help="independent rounds; the ratio is their median")
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    bundle.verify()
    n = min(args.samples, len(bundle.samples("test")))
    print(f"bundle {bundle.root.name}: {n} samples x {args.rounds} rounds; all-cloud, 4 hops per sample; "
          f"{os.cpu_count()} CPUs")
    rounds = []
    for r in range(args.rounds):
        res = one_round(bundle, n)
        rounds.append(res)
        print(f"round {r + 1}: raw {res['raw_ms']:.3f} ms | harness {res['latency_ms']:.3f} ms "
              f"(p95 {res['latency_p95_ms']:.3f}) | agents' compute {res['agent_compute_ms']:.3f} ms | "
              f"bare rtt {res['rtt_ms']:.3f} ms ({res['payload_bytes']} B) | hop {res['hop_ms']:.3f} ms | "
              f"ratio {res['ratio']:.3f}")
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    ratios = [r["ratio"] for r in rounds]
    print(f"raw onnxruntime, 3 partitions in one process: median {med['raw_ms']:.3f} ms/sample")
    print(f"full three-tier run, end to end:              median {med['latency_ms']:.3f} ms/sample")
    print(f"  of which onnxruntime inside the agents:     median {med['agent_compute_ms']:.3f} ms/sample")
    print(f"bare pyzmq PUSH/PULL round trip:              median {med['rtt_ms']:.3f} ms "
          f"({med['payload_bytes']:.0f} B payload)")
    for hop in ("controller_mobile", "mobile_edge", "edge_cloud", "return"):
        print(f"  net_ms_{hop:<18} median {med[f'net_{hop}_ms']:.3f} ms (send stamp to receive stamp)")
    print(f"harness hop cost, (latency - raw compute) / 4:       {med['hop_ms']:.3f} ms")
    print(f"harness hop cost, (latency - agents' compute) / 4:   {med['hop_own_ms']:.3f} ms "
          "(leaves out compute slowdown of separate processes)")
    print(f"added per hop (harness - raw compute - bare zmq one-way hop): {med['hop_ms'] - med['rtt_ms'] / 2:.3f} ms")
    print(f"ratio per round: {', '.join(f'{x:.3f}' for x in ratios)} (target <= 1.5)")
    print(f"harness_vs_zmq_ratio={float(np.median(ratios)):.3f}")


if __name__ == "__main__":
    main()
