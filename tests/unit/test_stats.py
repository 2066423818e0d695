import numpy as np
import pandas as pd
import pytest

from testbed import stats


def frame():
    rows = []
    for i in range(40):
        rows.append({"policy": "all-cloud", "phase": "measure", "exit_tier": "cloud", "correct": i % 4 != 0,
                     "latency_ms": 20.0, "bytes_mobile_edge": 100, "bytes_edge_cloud": 100,
                     "bytes_controller_mobile": 8, "bytes_return": 12, "energy_j": 0.04})
        tier = "mobile" if i < 30 else "cloud"
        rows.append({"policy": "early-exit", "phase": "measure", "exit_tier": tier, "correct": i % 2 == 0,
                     "latency_ms": 5.0 if tier == "mobile" else 20.0, "bytes_mobile_edge": 0 if tier == "mobile"
                     else 100, "bytes_edge_cloud": 0 if tier == "mobile" else 100, "bytes_controller_mobile": 8,
                     "bytes_return": 12, "energy_j": 0.01 if tier == "mobile" else 0.04})
    rows.append({**rows[0], "phase": "warmup", "latency_ms": 999.0})
    return pd.DataFrame(rows)


def test_summary_against_all_cloud_leaves_out_warmup():
    s = stats.summarise(frame()).set_index(["policy", "tier"])
    assert s.loc[("all-cloud", "all"), "samples"] == 40
    assert s.loc[("all-cloud", "all"), "latency_ms_p99"] == pytest.approx(20.0)
    assert s.loc[("all-cloud", "all"), "accuracy"] == pytest.approx(0.75)
    assert s.loc[("early-exit", "all"), "accuracy_delta_pt"] == pytest.approx(-25.0)
    assert s.loc[("early-exit", "all"), "latency_ratio"] == pytest.approx((30 * 5 + 10 * 20) / 40 / 20)
    assert s.loc[("early-exit", "mobile"), "share"] == pytest.approx(0.75)
    assert s.loc[("early-exit", "mobile"), "offload_bytes_per_sample"] == 0
    assert s.loc[("early-exit", "cloud"), "offload_bytes_per_sample"] == 200
    assert s.loc[("early-exit", "all"), "energy_j_per_sample"] == pytest.approx((30 * 0.01 + 10 * 0.04) / 40)


def test_quality_checks_flag_drift_and_small_samples():
    df = frame()
    df.loc[(df.policy == "all-cloud") & (df.index > 40), "latency_ms"] = 40.0
    advice = stats.quality_checks(df)
    assert any("all-cloud" in a and "halves" in a for a in advice)
    small = df[df.index < 10]
    assert any("only" in a for a in stats.quality_checks(small))
    assert not np.isnan(stats.summarise(df)["latency_ms_p50"]).any()
