"""Hop times derived again from the raw stamps, with offsets that drift between two measurements."""

import numpy as np
import pandas as pd
import pytest

from agents.protocol import Result, Stage
from testbed.analysis.clocks import OffsetLine, drift_corrected, offset_lines
from testbed.run.rows import Issued, build_row

MS = 1_000_000
S = 1000 * MS
T0 = 1_000_000 * MS
CTX = {"run_id": "r", "experiment": "e", "split": "test", "energy_sources": {}}


def _row() -> dict:
    """The mobile's clock 1 ms behind the controller's at the start, the edge's 5 s ahead (as test_rows)."""
    mob = Stage("mobile", "mobile-1", T0, T0 + MS, T0 + 5 * MS, T0 + 6 * MS,
                0.5, 1, False, 4000, float("nan"), False, float("nan"), 300, -1, -1)
    edge = Stage("edge", "edge-1", T0 + 5_009 * MS, T0 + 5_010 * MS, T0 + 5_014 * MS, T0 + 5_015 * MS,
                 0.9, 2, True, 12, float("nan"), False, float("nan"), 4200, -1, -1)
    res = Result("edge-1", 3, 7, np.array([[0.0, 0.1, 3.0]], np.float32), [mob, edge])
    issued = Issued(3, 7, 2, "measure", "early-exit", 500 * MS, T0, 64)
    return build_row(res, issued, 517 * MS, T0 + 17 * MS, {"mobile-1": -MS, "edge-1": 5_000 * MS},
                     {"mobile": 2, "edge": 4, "cloud": 6}, CTX)


def test_rows_keep_the_raw_agent_stamps_and_the_answer_time():
    row = _row()
    assert row["t_recv_agent_ns_mobile"] == T0 and row["t_send_agent_ns_mobile"] == T0 + 6 * MS
    assert row["t_recv_agent_ns_edge"] == T0 + 5_009 * MS and row["t_recv_agent_ns_cloud"] is None
    assert row["t_return_unix_ns"] == T0 + 17 * MS
    assert row["net_ms_controller_mobile"] == pytest.approx(1.0) and row["net_ms_mobile_edge"] == pytest.approx(2.0)


def test_offsets_that_did_not_move_give_back_the_rows_hop_times():
    df = pd.DataFrame([_row()])
    lines = {"mobile-1": OffsetLine(T0 - 100 * S, -MS, T0 + 100 * S, -MS),
             "edge-1": OffsetLine(T0 - 100 * S, 5_000 * MS, T0 + 100 * S, 5_000 * MS)}
    out = drift_corrected(df, lines)
    for col in ("net_ms_controller_mobile", "net_ms_mobile_edge", "net_ms_return"):
        assert out[col].iloc[0] == pytest.approx(df[col].iloc[0], abs=1e-9)


def test_a_drifting_clock_moves_the_hops_on_both_sides_of_it():
    df = pd.DataFrame([_row()])
    # the mobile's offset went from -1 ms to +1 ms over 200 s: about 0 at T0, where the sample ran
    lines = {"mobile-1": OffsetLine(T0 - 100 * S, -MS, T0 + 100 * S, MS),
             "edge-1": OffsetLine(T0 - 100 * S, 5_000 * MS, T0 + 100 * S, 5_000 * MS)}
    out = drift_corrected(df, lines)
    assert out["net_ms_controller_mobile"].iloc[0] == pytest.approx(0.0, abs=1e-3)  # was 1.0
    assert out["net_ms_mobile_edge"].iloc[0] == pytest.approx(3.0, abs=1e-3)  # was 2.0
    assert out["net_ms_return"].iloc[0] == pytest.approx(2.0, abs=1e-3)  # the edge did not drift
    assert df["net_ms_controller_mobile"].iloc[0] == pytest.approx(1.0)  # the input is left alone


def test_lines_come_from_devices_measured_twice_only():
    agents = {"a": {"clock_measured_unix_ns": 10, "clock_offset_ns": 1, "clock_measured_end_unix_ns": 20,
                    "clock_offset_end_ns": 3},
              "b": {"clock_offset_ns": 5}}
    lines = offset_lines(agents)
    assert list(lines) == ["a"]
    assert lines["a"].at(np.array([15.0]))[0] == pytest.approx(2.0)
    assert drift_corrected(pd.DataFrame([_row()]), {}) is not None
