import numpy as np
import pandas as pd
import pytest

from testbed.analysis import stats


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


def test_energy_by_tier_is_per_measured_sample_and_skips_unvisited_tiers():
    from testbed.analysis.stats import energy_by_tier

    df = pd.DataFrame({
        "policy": ["p"] * 4, "phase": ["warmup", "measure", "measure", "measure"],
        "device_mobile": ["m"] * 4, "energy_j_mobile": [9.0, 0.001, 0.002, 0.003],
        "energy_net_j_mobile": [9.0, 0.0005, 0.001, 0.0015],
        "device_edge": [None, "e", None, "e"], "energy_j_edge": [None, 0.010, None, 0.020],
        "energy_net_j_edge": [None, None, None, None],
        "device_cloud": [None] * 4, "energy_j_cloud": [None] * 4, "energy_net_j_cloud": [None] * 4})
    r = energy_by_tier(df).iloc[0]
    assert r["samples"] == 3
    assert r["energy_mj_mobile"] == pytest.approx(2.0) and r["energy_net_mj_mobile"] == pytest.approx(1.0)
    assert r["energy_mj_edge"] == pytest.approx(10.0)  # 30 mJ over 3 samples; one did not visit the edge
    assert np.isnan(r["energy_net_mj_edge"]) and np.isnan(r["energy_mj_cloud"])
    assert r["visited_edge"] == pytest.approx(2 / 3)


def test_bytes_by_hop_compares_wire_to_tensors_where_counted():
    from testbed.analysis.stats import bytes_by_hop

    df = pd.DataFrame({
        "policy": ["p"] * 3, "phase": ["measure"] * 3,
        "bytes_mobile_edge": [1000, 1000, 0], "bytes_msg_mobile_edge": [1100, 1100, None],
        "bytes_wire_mobile_edge": [1200, 1300, None],
        "bytes_edge_cloud": [500, 0, 0], "bytes_msg_edge_cloud": [560, None, None],
        "bytes_wire_edge_cloud": [None, None, None]})
    out = bytes_by_hop(df).set_index("hop")
    assert list(out.index) == ["mobile_edge", "edge_cloud"]
    me = out.loc["mobile_edge"]
    assert me["samples"] == 2 and me["payload_bytes_p50"] == 1000 and me["msg_bytes_p50"] == 1100
    assert me["wire_bytes_p50"] == 1250 and me["wire_overhead_pct"] == pytest.approx(25.0)
    assert np.isnan(out.loc["edge_cloud", "wire_overhead_pct"])  # not counted on that hop


def test_latency_split_adds_up_to_the_mean_latency():
    df = pd.DataFrame({"policy": ["p"] * 3, "phase": ["measure"] * 3, "latency_ms": [10.0, 20.0, 12.0],
                       "queue_ms": [1.0, 5.0, 0.0], "compute_ms_mobile": [4.0, 4.0, 4.0],
                       "compute_ms_cloud": [None, 6.0, 5.0], "bytes_controller_mobile": [8] * 3,
                       "bytes_mobile_cloud": [0, 10, 10], "bytes_return": [4] * 3,
                       "net_ms_controller_mobile": [1.0] * 3, "net_ms_mobile_cloud": [None, 2.0, 1.0],
                       "net_ms_return": [1.0] * 3})
    r = stats.latency_split(df).iloc[0]
    assert r["compute_ms"] == pytest.approx((4 + 10 + 9) / 3) and r["network_ms"] == pytest.approx((2 + 4 + 3) / 3)
    assert r["queue_ms"] == pytest.approx(2.0)
    assert r["compute_ms"] + r["network_ms"] + r["queue_ms"] + r["other_ms"] == pytest.approx(r["latency_ms"])
