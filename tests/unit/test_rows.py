import numpy as np
import pytest

from agents.protocol import DEFAULT_TIERS, Result, Stage
from testbed.formats.schema import for_tiers
from testbed.run.rows import Issued, build_row, clock_offset_ns

check_row = for_tiers(DEFAULT_TIERS).check_row

MS = 1_000_000
CTX = {"run_id": "r", "experiment": "e", "split": "test", "energy_sources": {"mobile-1": "rapl", "edge-1": "model"}}


def test_row_times_and_bytes_with_clock_offsets():
    # the edge agent's clock runs 5 s ahead of the controller's; the mobile's 1 ms behind
    off = {"mobile-1": -1 * MS, "edge-1": 5_000 * MS}
    t0 = 1_000_000 * MS
    mob = Stage("mobile", "mobile-1", t0 + 1 * MS - MS, t0 + 2 * MS - MS, t0 + 6 * MS - MS, t0 + 7 * MS - MS,
                0.5, 1, False, 4000, 0.02, False, 0.015, 300, -1, -1)
    edge = Stage("edge", "edge-1", t0 + 9 * MS + 5_000 * MS, t0 + 10 * MS + 5_000 * MS, t0 + 14 * MS + 5_000 * MS,
                 t0 + 15 * MS + 5_000 * MS, 0.9, 2, True, 12, 0.03, True, float("nan"), 4200, 4480, -1)
    res = Result("edge-1", 3, 7, np.array([[0.0, 0.1, 3.0]], np.float32), [mob, edge])
    issued = Issued(3, 7, 2, "measure", "early-exit", 500 * MS, t0, 64)
    row = build_row(res, issued, 500 * MS + 17 * MS, t0 + 17 * MS, off, {"mobile": 2, "edge": 4, "cloud": 6}, CTX)
    assert check_row(row) == []
    assert row["latency_ms"] == pytest.approx(17.0)
    assert row["net_ms_controller_mobile"] == pytest.approx(1.0)
    assert row["net_ms_mobile_edge"] == pytest.approx(2.0)
    assert row["net_ms_return"] == pytest.approx(2.0)
    assert row["net_ms_edge_cloud"] is None and row["compute_ms_cloud"] is None
    assert row["compute_ms_mobile"] == pytest.approx(4.0) and row["compute_ms_edge"] == pytest.approx(4.0)
    assert row["queue_ms"] == pytest.approx(2.0)
    assert (row["bytes_controller_mobile"], row["bytes_mobile_edge"], row["bytes_edge_cloud"],
            row["bytes_return"]) == (64, 4000, 0, 12)
    assert row["exit_tier"] == "edge" and row["exit_layer"] == 4 and row["tier_path"] == "mobile>edge"
    assert row["prediction"] == 2 and row["correct"] is True
    assert row["energy_j_mobile"] == 0.02 and row["energy_j_edge"] == 0.03 and row["energy_j_cloud"] is None
    assert row["energy_j"] == pytest.approx(0.05)
    assert row["energy_net_j_mobile"] == 0.015 and row["energy_net_j_edge"] is None and row["energy_net_j"] is None
    assert row["energy_source"] == "model+rapl" and row["energy_approx"] is True
    assert row["energy_approx_mobile"] is False and row["energy_approx_edge"] is True
    assert row["energy_approx_cloud"] is None
    # message sizes as received; the wire count only where the receiving agent measured one
    assert (row["bytes_msg_controller_mobile"], row["bytes_msg_mobile_edge"], row["bytes_msg_edge_cloud"]) == (
        300, 4200, None)
    assert row["bytes_wire_mobile_edge"] == 4480 and row["bytes_wire_edge_cloud"] is None
    assert row["energy_batch_mobile"] is None and row["energy_batch_edge"] is None


def test_row_energy_is_null_when_a_visited_tier_has_no_meter():
    stage = Stage("mobile", "mobile-1", 1, 2, 3, 4, 0.9, 0, True, 12, float("nan"), False, float("nan"), 100, -1, -1)
    res = Result("mobile-1", 1, 1, np.array([[1.0, 0.0]], np.float32), [stage])
    row = build_row(res, Issued(1, 1, 0, "measure", "all-mobile", 0, 0, 8), 10, 10, {},
                    {"mobile": 2, "edge": 4, "cloud": 6},
                    {"run_id": "r", "experiment": "e", "split": "test"})
    assert check_row(row) == []
    assert row["energy_j"] is None and row["energy_j_mobile"] is None and row["energy_source"] == "none"


def test_clock_offset_uses_min_rtt_sample():
    samples = [(0, 1_000_500, 2_000), (10_000, 1_010_100, 10_200), (20_000, 1_020_900, 23_000)]
    offset, rtt = clock_offset_ns(samples)
    assert (offset, rtt) == (1_000_000, 200)
    with pytest.raises(ValueError):
        clock_offset_ns([])


def test_clock_drift_from_the_offsets_before_and_after_the_samples():
    from testbed.run.records import clock_drift
    from testbed.run.session import AgentState

    a = AgentState("pi-1", "mobile", None)
    a.pings, a.pings_end = [(0, 0, 0)], [(100 * 10**9, 0, 0)]  # the rounds 100 s apart
    a.offset_ns, a.rtt_ns, a.offset_end_ns, a.rtt_end_ns = 1_000_000, 200_000, 6_000_000, 400_000
    d = clock_drift(a)
    assert d["clock_drift_ppm"] == pytest.approx(50.0)  # 5 ms in 100 s
    assert d["clock_drift_bound_ppm"] == pytest.approx(3.0)  # (0.2 + 0.4) / 2 ms in 100 s
    assert (d["clock_measured_unix_ns"], d["clock_measured_end_unix_ns"]) == (0, 100 * 10**9)  # for the offset line
    assert clock_drift(AgentState("pi-2", "mobile", None)) == {}  # no second round: nothing claimed
