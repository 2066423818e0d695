"""The load table: rates asked and achieved, percentiles with distribution-free bounds, queueing per tier."""

import numpy as np
import pandas as pd
import pytest

from testbed.analysis.load import percentile_interval, samples_needed, scenario_table


def test_a_percentile_is_bounded_only_with_enough_samples():
    x = np.arange(1, 101, dtype=float)  # 1..100
    point, lo, hi = percentile_interval(x, 0.5)
    assert point == pytest.approx(50.5) and lo is not None and hi is not None and lo < 50.5 < hi
    assert percentile_interval(x, 0.99)[1:] == (None, None)  # 100 samples cannot bound a p99
    # the largest sample bounds the q-quantile from above at 97.5% once q^n <= 0.025: n >= ln 0.025 / ln q
    for q in (0.5, 0.9, 0.99):
        assert samples_needed(q) == int(np.ceil(np.log(0.025) / np.log(q)))
    big = np.random.default_rng(0).exponential(10.0, 20_000)
    p99, lo, hi = percentile_interval(big, 0.99)
    assert lo < 10.0 * np.log(100) < hi  # the true p99 of an exponential(10) inside its bound


def test_the_table_counts_from_the_scheduled_time_and_divides_by_the_span():
    n = 1000
    t0 = 10**18
    df = pd.DataFrame({
        "policy": "p", "phase": "measure", "t_scheduled_unix_ns": t0 + np.arange(n) * 10_000_000,  # 100/s asked
        "latency_scheduled_ms": np.linspace(1, 100, n), "bytes_controller_mobile": 8, "bytes_mobile_cloud": 8,
        "queue_ms_mobile": 1.0, "queue_ms_cloud": 3.0})
    df["t_return_unix_ns"] = df["t_scheduled_unix_ns"] + (df["latency_scheduled_ms"] * 1e6).astype(np.int64)
    t = scenario_table(df, {"scenario": "server", "rate_per_s": 50.0}, sources=2).iloc[0]
    assert t["target_per_s"] == 100.0  # 50/s from each of two sources
    span = (t0 + 999 * 10_000_000 + 100_000_000 - t0) / 1e9
    assert t["achieved_per_s"] == pytest.approx(n / span)
    assert t["p50_ms"] == pytest.approx(np.quantile(np.linspace(1, 100, n), 0.5))
    assert t["p99_bound"].startswith("[") and t["queue_ms_cloud_mean"] == 3.0 and t["queue_ms_mobile_mean"] == 1.0
    small = scenario_table(df.head(100), {"scenario": "closed"}, 1).iloc[0]
    assert small["p99_bound"] == "n < 368" and np.isnan(small["target_per_s"])
