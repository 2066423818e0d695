"""Verdicts: paired bootstrap intervals against hand-computed normal intervals, and the decision rule."""

import math

import numpy as np
import pandas as pd
import pytest

from testbed.analysis.verdict import Interval, decide, judge, measured_reductions, paired_interval, samples_needed
from testbed.core.costmodel import Claim, preset


def test_a_policy_against_itself_has_a_zero_width_interval():
    x = np.array([1, 0, 1, 1, 0], float)
    iv = paired_interval("drop", x, x)
    assert (iv.point, iv.low, iv.high) == (0.0, 0.0, 0.0)
    costs = np.full(5, 0.6)
    assert paired_interval("reduction", costs * 0.5, costs) == Interval(0.5, 0.5, 0.5)


def test_the_drop_interval_matches_the_normal_interval_of_the_paired_differences():
    rng = np.random.default_rng(1)
    n = 3000
    base = (rng.random(n) < 0.80).astype(float)
    pol = np.where(rng.random(n) < 0.9, base, 1 - base)  # a policy that flips 10% of the answers
    d = (base - pol) * 100
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)  # by hand: the paired normal interval
    iv = paired_interval("drop", pol, base)
    assert iv.point == pytest.approx(d.mean())
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.1)
    assert iv.low < iv.point < iv.high


def test_the_reduction_interval_matches_the_delta_method():
    rng = np.random.default_rng(2)
    n = 3000
    base = np.full(n, 1.2)
    pol = np.where(rng.random(n) < 0.6, 0.3, 1.2)  # 60% stop early at a quarter of the cost
    r = 1 - pol.mean() / base.mean()
    # delta method by hand: var(1 - P/B) ~ var(p - (mp/mb) b) / (n mb^2); b is constant here
    half = 1.96 * pol.std(ddof=1) / base.mean() / math.sqrt(n)
    iv = paired_interval("reduction", pol, base)
    assert iv.point == pytest.approx(r)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.1)


@pytest.mark.parametrize("drop, red, outcome", [
    (Interval(0.1, -0.2, 0.25), Interval(0.5, 0.45, 0.55), "meets"),
    (Interval(0.6, 0.35, 0.9), Interval(0.5, 0.45, 0.55), "does not meet"),  # the drop lies wholly above 0.3
    (Interval(0.0, -0.1, 0.1), Interval(0.3, 0.25, 0.35), "does not meet"),  # the reduction lies wholly below
    (Interval(0.2, -0.1, 0.5), Interval(0.5, 0.45, 0.55), "cannot tell"),
])
def test_the_decision_rule(drop, red, outcome):
    got, needed = decide(Claim("P", 0.43, 0.3), 1000, drop, red)
    assert got == outcome
    assert (needed is None) == (outcome != "cannot tell")


def test_samples_needed_by_hand():
    # half-width 0.3 at n = 1000, point 0.1 below a 0.3 budget: the half-width must shrink to 0.2
    iv = Interval(0.1, -0.2, 0.4)
    assert samples_needed(1000, iv, 0.3) == pytest.approx(1000 * (0.3 / 0.2) ** 2)
    assert math.isinf(samples_needed(1000, Interval(0.3, 0.0, 0.6), 0.3))
    _, needed = decide(Claim("P", 0.43, 0.3), 1000, iv, Interval(0.6, 0.5, 0.7))
    assert needed == pytest.approx(2250)


def _rows(policy, tiers, correct):
    return [{"policy": policy, "phase": "measure", "sample_id": i, "exit_tier": t, "correct": c,
             "latency_ms": 5.0 if t == "mobile" else 20.0, "energy_j": None,
             "bytes_controller_mobile": 8, "bytes_mobile_cloud": 0 if t == "mobile" else 100, "bytes_return": 4}
            for i, (t, c) in enumerate(zip(tiers, correct, strict=True))]


def test_judge_pairs_by_sample_and_scores_in_the_papers_units():
    n = 400
    rng = np.random.default_rng(3)
    right = rng.random(n) < 0.8
    tiers = np.where(np.arange(n) % 4 != 0, "mobile", "cloud")  # three in four stop on the device
    df = pd.DataFrame(_rows("all-cloud", ["cloud"] * n, right) + _rows("ee", tiers, right)
                      + [{**_rows("ee", ["mobile"], [True])[0], "phase": "warmup"}])
    layers = {"mobile": 2, "cloud": 4}
    v = judge(df, "ee", Claim("DIMEE", 0.43, 0.3), preset("dimee"), layers, "thresholds hand-set")
    assert v is not None and v.n == n and v.baseline == "all-cloud"
    full, early = 0.2 + 0.3 + 0.4, 0.2  # dimee: lambda 0.1 per layer, o 0.3 per offload
    assert v.cost_reduction.point == pytest.approx(1 - (0.25 * full + 0.75 * early) / full)
    assert v.drop_pt == Interval(0.0, 0.0, 0.0)  # same answers: no drop, no spread
    assert v.outcome == "meets" and "MEETS" in v.line() and "n = 400" in v.line() and "hand-set" in v.line()
    red = measured_reductions(df, "ee", "all-cloud")
    assert red["latency_ms"].point == pytest.approx(1 - 8.75 / 20) and "energy_j" not in red
    assert red["offload_bytes"].point == pytest.approx(0.75)
    assert judge(df[df.policy != "all-cloud"], "ee", Claim("x", 0.1, 1), preset("dimee"), layers) is None


def test_a_policy_is_scored_with_the_constants_it_learned_from():
    from testbed import policies
    from testbed.core.config import PolicySpec

    cm = policies.paper_cost(PolicySpec(name="splitee", o=0.1, lam=0.05, label="splitee-o0.1"), 6)
    assert cm.lam == {"mobile": 0.05, "edge": 0.05, "cloud": 0.0}  # the cloud's layers stay free
    assert cm.o == {"mobile-edge": 0.0, "edge-cloud": 0.1, "mobile-cloud": 0.1}  # what it learned from, as given
    default = policies.paper_cost(PolicySpec(name="splitee"), 6)  # no o given: the paper's ratio on 6 layers
    assert default.o["edge-cloud"] == pytest.approx(0.15) and default.extra["offload_ratio"] == pytest.approx(0.25)
    assert policies.paper_cost(PolicySpec(name="early-exit", thresholds="auto"), 12) == preset("dimee")
    assert policies.paper_cost(PolicySpec(name="random", shares={"cloud": 1}), 6) is None
