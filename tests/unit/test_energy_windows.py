"""Batch energy windows: shares sum to the window, rows wait for every window they visited."""

import math

import numpy as np
import pytest

from agents.protocol import DEFAULT_TIERS, EnergyWindow, Result, Stage
from testbed.formats.schema import for_tiers
from testbed.run.energy import EnergyLedger, shares, window_record
from testbed.run.rows import Issued, build_row

check_row = for_tiers(DEFAULT_TIERS).check_row

NAN = float("nan")
CTX = {"run_id": "r", "experiment": "e", "split": "test", "energy_sources": {"mobile-1": "rapl", "edge-1": "rapl"}}


def _row(seq: int, tiers: list[tuple[str, int]]) -> dict:
    """A row whose stages are on ``tiers`` [(tier, batch)]; batch -1 means a window of its own (0.5 J)."""
    stages = []
    for i, (tier, batch) in enumerate(tiers):
        own = batch < 0
        stages.append(Stage(tier, f"{tier}-1", 10 * i, 10 * i + 1, 10 * i + 5, 10 * i + 6, 0.5, 1,
                            i == len(tiers) - 1, 100, 0.5 if own else NAN, False, 0.25 if own else NAN, 120, -1,
                            batch))
    res = Result(stages[-1].device, seq, seq, np.array([[0.0, 1.0]], np.float32), stages)
    return build_row(res, Issued(seq, seq, 1, "measure", "p", 0, 0, 64), 100, 100, {},
                     {"mobile": 2, "edge": 4, "cloud": 6}, CTX)


def test_shares_follow_compute_time_and_sum_to_the_window():
    w = EnergyWindow("mobile-1", 3, 0, 100, 1.0, 0.4, False, [7, 8, 9], [1, 2, 7])
    s = shares(w)
    assert [s[k].energy_j for k in (7, 8, 9)] == pytest.approx([0.1, 0.2, 0.7])
    assert sum(x.energy_j for x in s.values()) == 1.0  # exact: the last share takes the remainder
    assert sum(x.energy_net_j for x in s.values()) == 0.4
    # thirds do not add up in floating point unless the remainder is kept
    w = EnergyWindow("m", 0, 0, 1, 0.1, NAN, True, [1, 2, 3], [1, 1, 1])
    s = shares(w)
    assert sum(x.energy_j for x in s.values()) == 0.1
    assert all(x.energy_net_j is None and x.approx for x in s.values())
    # zero compute time everywhere: equal parts, never a division by zero
    assert [x.energy_j for x in shares(EnergyWindow("m", 0, 0, 1, 0.3, 0.0, False, [1, 2], [0, 0])).values()] \
        == pytest.approx([0.15, 0.15])
    with pytest.raises(ValueError, match="2 samples but 1 compute"):
        shares(EnergyWindow("m", 0, 0, 1, 0.3, 0.0, False, [1, 2], [5]))


def test_ledger_holds_rows_until_every_batch_window_they_visited_arrived():
    led = EnergyLedger()
    # a row of its own windows passes straight through
    own = led.add_row(_row(0, [("mobile", -1)]))
    assert len(own) == 1 and own[0]["energy_j"] == 0.5
    # seq 1 visits mobile (batch 0) and edge (batch 4); seq 2 only mobile (batch 0)
    assert led.add_row(_row(1, [("mobile", 0), ("edge", 4)])) == []
    assert led.add_window(EnergyWindow("mobile-1", 0, 0, 10, 0.9, 0.3, False, [1, 2], [2, 1])) == []  # row 2 not in
    done = led.add_row(_row(2, [("mobile", 0)]))
    assert [r["seq"] for r in done] == [2]
    assert done[0]["energy_j_mobile"] == pytest.approx(0.3) and done[0]["energy_j"] == pytest.approx(0.3)
    assert done[0]["energy_batch_mobile"] == 0 and check_row(done[0]) == []
    assert led.pending == 1
    done = led.add_window(EnergyWindow("edge-1", 4, 0, 10, 2.0, 1.0, True, [1], [5]))
    assert [r["seq"] for r in done] == [1]
    r = done[0]
    assert (r["energy_j_mobile"], r["energy_j_edge"]) == (pytest.approx(0.6), 2.0)
    assert r["energy_j"] == pytest.approx(2.6) and r["energy_net_j"] == pytest.approx(1.2)
    assert r["energy_approx_edge"] is True and r["energy_approx"] is True and r["energy_approx_mobile"] is False
    assert check_row(r) == [] and led.pending == 0


def test_drain_writes_rows_whose_window_never_came_with_null_energy():
    led = EnergyLedger()
    led.add_row(_row(5, [("mobile", 1)]))
    left = led.drain()
    assert [r["seq"] for r in left] == [5]
    assert left[0]["energy_j"] is None and left[0]["energy_j_mobile"] is None and check_row(left[0]) == []
    assert led.pending == 0


def test_window_record_puts_stamps_on_the_controller_clock():
    w = EnergyWindow("edge-1", 2, 5_000_000_000, 5_020_000_000, 1.5, NAN, False, [4, 5], [6_000_000, 4_000_000])
    rec = window_record(w, offset_ns=1_000_000_000)
    assert rec["start_unix_ns"] == 4_000_000_000 and rec["duration_ms"] == pytest.approx(20.0)
    assert rec["energy_net_j"] is None and rec["samples"] == 2 and rec["compute_ms_sum"] == pytest.approx(10.0)
    assert not math.isnan(rec["energy_j"])
