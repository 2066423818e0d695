"""What the energy-window and wire-byte bookkeeping costs per sample.

    python benchmarks/energy_bytes.py [--iface lo] [--rows 20000] [--batch 16]

Times, in this process:
  - one interface counter read per arriving sample (``agents.netio.ArrivalCounter``: psutil,
    ``/proc/net/dev`` of this network namespace), which a receiving agent does on its data path;
  - the controller's ledger (``testbed.run.energy.EnergyLedger``): build a row's shares from batch
    windows of ``--batch`` samples on two tiers, and complete the rows.
Target: each under 100 us per sample, against samples of several ms. Last lines
``counter_read_us=`` and ``ledger_us_per_row=``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from agents.netio import ArrivalCounter
from agents.protocol import EnergyWindow, Result, Stage
from testbed.run.energy import EnergyLedger
from testbed.run.rows import Issued, build_row

CTX = {"run_id": "b", "experiment": "b", "split": "test", "energy_sources": {"mobile-1": "rapl", "edge-1": "rapl"}}


def counter_cost(iface: str, n: int) -> float:
    """Median microseconds of one ArrivalCounter.arrival() on ``iface``."""
    c = ArrivalCounter(iface)
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        c.arrival()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e3


def ledger_cost(rows: int, batch: int) -> tuple[float, int]:
    """Microseconds per row to build it, share its two tiers' windows out and complete it; rows completed."""
    nan = math.nan
    logits = np.array([[0.0, 1.0]], np.float32)
    led = EnergyLedger()
    done = 0
    t0 = time.perf_counter_ns()
    for seq in range(rows):
        b = seq // batch
        stages = [Stage("mobile", "mobile-1", 0, 1, 5, 6, 0.5, 1, False, 100, nan, False, nan, 150, -1, b),
                  Stage("edge", "edge-1", 10, 11, 15, 16, 0.9, 1, True, 8, nan, False, nan, 180, 250, b)]
        res = Result("edge-1", seq, seq, logits, stages)
        row = build_row(res, Issued(seq, seq, 1, "measure", "p", 0, 0, 64), 100, 100, {},
                        {"mobile": 2, "edge": 4, "cloud": 6}, CTX)
        done += len(led.add_row(row))
        if seq % batch == batch - 1:
            seqs = list(range(seq - batch + 1, seq + 1))
            for dev in ("mobile-1", "edge-1"):
                done += len(led.add_window(EnergyWindow(dev, b, 0, 10, 0.5, 0.2, False, seqs, [4] * batch)))
    return (time.perf_counter_ns() - t0) / rows / 1e3, done


def main() -> None:
    """Print the costs and the target check."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iface", default="lo")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    read_us = counter_cost(args.iface, 5_000)
    per_row, done = ledger_cost(args.rows, args.batch)
    full = args.rows // args.batch * args.batch
    print(f"interface counter read ({args.iface}, psutil): median {read_us:.1f} us per arriving sample")
    print(f"ledger: {per_row:.1f} us per row (build + shares + completion), {done}/{full} rows completed, "
          f"batch {args.batch}")
    print(f"target: each under 100 us per sample: {'met' if read_us < 100 and per_row < 100 else 'MISSED'}")
    print(f"counter_read_us={read_us:.1f}")
    print(f"ledger_us_per_row={per_row:.1f}")


if __name__ == "__main__":
    main()
