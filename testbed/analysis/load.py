"""Load scenarios in the report: achieved against target rate, tail latency with a bound on it, queueing.

Pure: rows (and the experiment's run settings) in, a table out. Latency here is counted from the
time the scenario scheduled each sample (``latency_scheduled_ms``), as MLPerf counts it, so a
system that falls behind an open-loop arrival rate pays for the wait.

A percentile's 95% interval is distribution-free, from order statistics: with n samples the
q-quantile lies between the samples of ranks ``binom.ppf(0.025, n, q)`` and
``binom.ppf(0.975, n, q) + 1`` with at least 95% probability. When the upper rank is past n, the
run is too short to bound that percentile, and the table says how many samples would be.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from testbed.formats import schema

PERCENTILES = (0.5, 0.9, 0.99)


def percentile_interval(values: np.ndarray, q: float) -> tuple[float, float | None, float | None]:
    """The q-quantile of ``values`` and its 95% order-statistic interval (None, None when n is too small)."""
    x = np.sort(values[~np.isnan(values)])
    n = len(x)
    if n == 0:
        return math.nan, None, None
    point = float(np.quantile(x, q))
    lo, hi = int(sps.binom.ppf(0.025, n, q)), int(sps.binom.ppf(0.975, n, q)) + 1
    if lo < 1 or hi > n:
        return point, None, None
    return point, float(x[lo - 1]), float(x[hi - 1])


def samples_needed(q: float) -> int:
    """The fewest samples whose order statistics bound the q-quantile at 95% on both sides.

    The largest sample bounds it from above once q^n <= 0.025, the smallest from below once
    (1 - q)^n <= 0.025: the ranks of :func:`percentile_interval` then lie inside 1..n.
    """
    return max(math.ceil(math.log(0.025) / math.log(q)), math.ceil(math.log(0.025) / math.log(1 - q)))


def scenario_table(df: pd.DataFrame, run: dict[str, Any], sources: int) -> pd.DataFrame:
    """Per policy (measured samples): scenario, rate asked and achieved, latency percentiles with bounds, queueing.

    ``run``: the experiment's resolved ``run`` section; ``sources``: the first tier's devices (the
    server scenario's rate is per source).
    """
    m = df[df["phase"] == "measure"]
    if m.empty or "latency_scheduled_ms" not in m:
        return pd.DataFrame()
    scenario = run.get("scenario", "closed")
    rate = run.get("rate_per_s")
    target = float(rate) * sources if scenario == "server" and rate else math.nan
    tiers = schema.tiers_in(df.columns)
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        start = g["t_scheduled_unix_ns"].min()
        back = g["t_return_unix_ns"].dropna() if "t_return_unix_ns" in g else pd.Series(dtype=float)
        end = float(back.max()) if len(back) else math.nan
        span_s = (end - start) / 1e9 if not math.isnan(end) else math.nan
        row: dict[str, Any] = {"policy": policy, "scenario": scenario, "samples": len(g), "duration_s": span_s,
                               "target_per_s": target, "achieved_per_s": len(g) / span_s if span_s > 0 else math.nan}
        lat = g["latency_scheduled_ms"].to_numpy(float)
        for q in PERCENTILES:
            point, lo, hi = percentile_interval(lat, q)
            key = f"p{round(q * 100)}"
            row[f"{key}_ms"] = point
            row[f"{key}_bound"] = f"[{lo:.3g}, {hi:.3g}]" if lo is not None else f"n < {samples_needed(q)}"
        for t in tiers:
            col = f"queue_ms_{t}"
            row[f"queue_ms_{t}_mean"] = float(g[col].mean()) if col in g and g[col].notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
