"""The report's tables of a run with schedule steps: segments between steps and the plans, hand-computed."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from testbed.analysis.shortage import plans_table, segment_table, steps

S = 10**9
T0 = 1_800_000_000 * S


def _rows(policy: str, n: int, t0: int, gap_s: float, correct: list[bool], latency: list[float],
          choice: str, offload: int) -> pd.DataFrame:
    return pd.DataFrame({
        "policy": policy, "phase": "measure", "t_issue_unix_ns": [t0 + int(i * gap_s * S) for i in range(n)],
        "correct": correct, "latency_ms": latency, "policy_choice": choice, "energy_j": [0.002] * n,
        "bytes_mobile_edge": [offload] * n, "bytes_edge_cloud": [0] * n})


def _manifest(cpu: list[dict], links: list[dict], plans: dict[str, list[dict]]) -> SimpleNamespace:
    return SimpleNamespace(tiers=["mobile", "edge", "cloud"], shaping={"schedule_applied": links}, cpu={"applied": cpu},
                           policies={k: {"plans": v} for k, v in plans.items()})


def test_segments_split_each_policy_at_its_own_steps_with_intervals():
    """Policy a: 4 samples before its cap (3 right), 4 after (1 right); b met its own step 10 s later."""
    a = pd.concat([_rows("a", 4, T0, 1, [True, True, True, False], [1, 2, 3, 4], "v2@edge", 4096),
                   _rows("a", 4, T0 + 5 * S, 1, [True, False, False, False], [1, 1, 1, 1], "full@mobile", 0)])
    b = _rows("b", 8, T0 + 20 * S, 1, [True] * 8, [2.0] * 8, "v2@edge", 4096)
    probe = pd.DataFrame({"policy": ["a"], "phase": ["probe"], "t_issue_unix_ns": [T0 + 4 * S + S // 2]})
    df = pd.concat([a, b, probe], ignore_index=True)
    cpu = [{"step": 0, "device": "edge-1", "kind": "cores", "value": 0.03, "unix_ns": T0 + 4 * S, "policy": "a"},
           {"step": 0, "device": "edge-1", "kind": "cores", "value": 0.03, "unix_ns": T0 + 24 * S, "policy": "b"},
           {"step": -1, "device": "edge-1", "kind": "cores", "value": 0.0, "unix_ns": T0 + 19 * S, "policy": "b"}]
    m = _manifest(cpu, [], {})
    assert [s["label"] for s in steps(m)] == ["cpu edge-1: cores 0.03", "cpu edge-1: cores 0.03"]  # no reset
    t = segment_table(df, m)
    assert list(zip(t.policy, t.segment, t["from"], strict=True)) == [
        ("a", 0, "start"), ("a", 1, "cpu edge-1: cores 0.03"), ("b", 0, "start"), ("b", 1, "cpu edge-1: cores 0.03")]
    first, second = t.iloc[0], t.iloc[1]
    assert first.n == 4 and first.accuracy == 0.75 and first.choice == "v2@edge" and first.probes == 0
    assert second.n == 4 and second.accuracy == 0.25 and second.probes == 1 and second.offload_bytes_mean == 0
    assert first.per_s == pytest.approx(1.0)  # 4 samples over the 4 s before the step
    # Wilson's interval for 3 of 4, and Student's t for the mean of 1, 2, 3, 4 (sd 1.29, t(3) 3.182)
    assert (first.accuracy_lo, first.accuracy_hi) == pytest.approx((0.3006, 0.9544), abs=1e-3)
    half = 3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert (first.latency_ms_mean_lo, first.latency_ms_mean_hi) == pytest.approx((2.5 - half, 2.5 + half))
    assert second.latency_ms_mean_lo == second.latency_ms_mean_hi == 1.0  # no spread: the point
    assert first.energy_mj_mean == pytest.approx(2.0) and first.offload_bytes_mean == 4096
    assert t.iloc[2].n == 4 and t.iloc[3].n == 4  # b's step is its own, 24 s in, not a's


def test_no_step_no_table_and_plans_say_when_they_switched():
    df = _rows("a", 3, T0, 1, [True] * 3, [1.0] * 3, "x", 0)
    assert segment_table(df, _manifest([], [], {})) is None
    chosen = {"variant": "v2", "tier": "edge", "latency_ms": 1.5, "val_accuracy": 0.98}
    plans = {"a": [{"trigger": "warmup", "at_s": 0.1, "chosen": chosen, "switched": False},
                   {"trigger": "cpu edge-1 step 0: cores 0.03", "at_s": 3.2,
                    "chosen": {**chosen, "variant": "full", "tier": "mobile"}, "switched": True}]}
    p = plans_table(_manifest([], [], plans))
    assert list(p.chosen) == ["v2@edge", "full@mobile"] and list(p.switched) == [False, True]
    assert plans_table(_manifest([], [], {})) is None


def test_the_timeline_figure_is_drawn_with_its_numbers_and_left_out_without_steps(tmp_path):
    from testbed.analysis.figures import shortage_timeline

    df = pd.concat([_rows("a", 4, T0, 1, [True] * 4, [1, 2, 3, 4], "v2@edge", 4096),
                    _rows("a", 4, T0 + 5 * S, 1, [True] * 4, [1, 1, 1, 1], "full@mobile", 0)], ignore_index=True)
    df.loc[4:, "policy_choice"] = "full@mobile"
    step = [{"unix_ns": T0 + 4 * S, "policy": None, "label": "cpu edge-1: cores 0.03"}]
    png = shortage_timeline(df, step, tmp_path)
    assert png is not None and png.stat().st_size > 5000
    points = pd.read_csv(tmp_path / "shortage_timeline.csv")
    assert list(points.t_s) == [0, 1, 2, 3, 5, 6, 7, 8] and set(points.policy_choice) == {"v2@edge", "full@mobile"}
    assert shortage_timeline(df, [], tmp_path) is None
