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
    out = []
    for rep in range(2):  # the first pass warms the sessions up
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "partitions/minilm-sentiment")
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    bundle.verify()
    with tempfile.TemporaryDirectory() as tmp:
        rows = harness_rows(bundle, args.samples, Path(tmp))
    ids = rows["sample_id"].tolist()
    raw = raw_compute_ms(bundle, ids)
    payload = int(rows["bytes_mobile_edge"].median())
    rtt = bare_zmq_rtt_ms(payload, args.samples)

    lat = rows["latency_ms"].to_numpy()
    measured_compute = rows[["compute_ms_mobile", "compute_ms_edge", "compute_ms_cloud"]].sum(axis=1).to_numpy()
    hop_cost = (lat - raw) / 4
    hop_cost_own = (lat - measured_compute) / 4
    med = float(np.median(hop_cost))
    print(f"samples: {len(ids)} (all-cloud, 4 hops each); bundle {bundle.root.name}; payload median {payload} B")
    print(f"raw onnxruntime, 3 partitions in one process: median {np.median(raw):.3f} ms/sample")
    print(f"harness end to end:                           median {np.median(lat):.3f} ms/sample "
          f"(p95 {np.percentile(lat, 95):.3f})")
    print(f"harness compute as the agents measured it:    median {np.median(measured_compute):.3f} ms/sample")
    print(f"bare pyzmq PUSH/PULL round trip ({payload} B):   median {np.median(rtt):.3f} ms "
          f"(p99 {np.percentile(rtt, 99):.3f})")
    for hop in ("controller_mobile", "mobile_edge", "edge_cloud", "return"):
        print(f"  net_ms_{hop:<18} median {rows[f'net_ms_{hop}'].median():.3f} ms (stage stamps)")
    print(f"harness hop cost = (latency - raw compute) / 4:       median {med:.3f} ms")
    print(f"harness hop cost = (latency - agents' compute) / 4:   median {np.median(hop_cost_own):.3f} ms")
    print(f"added per hop over a bare one-way zmq hop:            median {med - np.median(rtt) / 2:.3f} ms")
    print(f"harness_vs_zmq_ratio={med / float(np.median(rtt)):.3f}")


if __name__ == "__main__":
    main()
