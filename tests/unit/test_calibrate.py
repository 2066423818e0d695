"""Calibration on synthetic rows with known per-layer and per-byte costs."""

import numpy as np
import pandas as pd
import pytest

from testbed.analysis.calibrate import fit, repredict

LAYERS = {"mobile": 2, "edge": 2, "cloud": 2}


def _rows(n=60):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        tier = ["mobile", "edge", "cloud"][i % 3]
        seq = int(rng.integers(10, 60))
        b = seq * 1544
        row = {"policy": "p" if i % 2 else "q", "phase": "measure", "exit_tier": tier,
               "compute_ms_mobile": 4.0, "compute_ms_edge": None, "compute_ms_cloud": None,
               "energy_j_mobile": 0.02, "energy_j_edge": None, "energy_j_cloud": None,
               "net_ms_mobile_edge": None, "net_ms_edge_cloud": None,
               "bytes_mobile_edge": 0, "bytes_edge_cloud": 0,
               "net_ms_controller_mobile": 0.2, "net_ms_return": 0.3}
        total = 4.0 + 0.5  # compute + controller hops
        if tier != "mobile":
            row |= {"compute_ms_edge": 6.0, "energy_j_edge": 0.03, "bytes_mobile_edge": b,
                    "net_ms_mobile_edge": 0.1 + b * 2e-6}
            total += 6.0 + row["net_ms_mobile_edge"]
        if tier == "cloud":
            row |= {"compute_ms_cloud": 8.0, "energy_j_cloud": 0.04, "bytes_edge_cloud": b,
                    "net_ms_edge_cloud": 0.2 + b * 1e-6}
            total += 8.0 + row["net_ms_edge_cloud"]
        row["latency_ms"] = total + 1.0  # 1 ms the model does not know about (queueing, decode)
        row["energy_j"] = sum(row[f"energy_j_{t}"] or 0 for t in ("mobile", "edge", "cloud"))
        rows.append(row)
    return pd.DataFrame(rows)


def test_fit_recovers_per_layer_and_per_byte_costs():
    f = fit(_rows(), LAYERS)
    ms = f["presets"]["calibrated-ms"]
    assert ms.lam == pytest.approx({"mobile": 2.0, "edge": 3.0, "cloud": 4.0})
    assert f["per_byte"]["mobile-edge"]["ms_per_byte"] == pytest.approx(2e-6)
    assert f["per_byte"]["mobile-edge"]["ms_fixed"] == pytest.approx(0.1)
    assert f["per_byte"]["edge-cloud"]["ms_per_byte"] == pytest.approx(1e-6)
    assert f["base_ms"] == pytest.approx(1.5) == f["base_ms_p50"]  # controller hops 0.5 + the unknown 1.0
    p50 = f["presets"]["calibrated-ms-p50"]
    assert p50.lam == pytest.approx(ms.lam)  # constant compute: mean and median agree
    m = _rows()
    used = m[m.bytes_mobile_edge > 0].net_ms_mobile_edge
    assert ms.o["mobile-edge"] == pytest.approx(used.mean()) and p50.o["mobile-edge"] == pytest.approx(used.median())
    j = f["presets"]["calibrated-j"]
    assert j.lam == pytest.approx({"mobile": 0.01, "edge": 0.015, "cloud": 0.02}) and set(j.o.values()) == {0.0}


def test_repredict_energy_is_exact_and_latency_close_when_the_model_holds():
    df = _rows()
    pred = repredict(df, LAYERS, fit(df, LAYERS))
    assert set(pred.policy) == {"p", "q"}
    assert np.abs(pred.energy_error).max() < 1e-9
    # offload time depends on the payload; each model uses its own statistic per offload: small errors only
    assert np.abs(pred.latency_mean_error).max() < 0.05 and np.abs(pred.latency_p50_error).max() < 0.05


def test_the_mean_model_predicts_means_where_a_median_model_would_miss_a_long_tail():
    df = _rows(90)
    slow = df.index % 5 == 0  # one sample in five, of both policies, waits 40 ms more on the mobile tier
    df.loc[slow, "compute_ms_mobile"] += 40.0
    df.loc[slow, "latency_ms"] += 40.0
    f = fit(df, LAYERS)
    assert f["presets"]["calibrated-ms"].lam["mobile"] > f["presets"]["calibrated-ms-p50"].lam["mobile"]
    pred = repredict(df, LAYERS, f)
    assert np.abs(pred.latency_mean_error).max() < 0.05  # the tail is in the mean model's lambda
    assert np.abs(pred.latency_p50_error).max() < 0.05  # and not in the median model's
    # what calibration did before: medians fitted, means predicted; the tail is missed by more than 10%
    p50 = f["presets"]["calibrated-ms-p50"]
    m = df[df.phase == "measure"]
    as_mean = p50.costs(m.exit_tier.to_numpy(), LAYERS).mean() + f["base_ms_p50"]
    assert as_mean / m.latency_ms.mean() - 1 < -0.10
