"""early-exit: auto chooses its thresholds on validation, within the claim's accuracy budget, and says so."""

import numpy as np
import pandas as pd
import pytest

from testbed import policies
from testbed.analysis.report import policy_settings
from testbed.core.config import PolicySpec
from testbed.core.costmodel import preset
from testbed.policies.context import PolicyContext
from testbed.policies.fitting import routes

T3 = ("mobile", "edge", "cloud")
LAYERS = {"mobile": 2, "edge": 2, "cloud": 2}


def val_table(n=1500, seed=0):
    """Confident exits are mostly right; the cloud is right more often than the earlier tiers."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    df = {"sample_id": np.arange(n), "label": label}
    for t, skill in (("mobile", 0.55), ("edge", 0.7), ("cloud", 0.85)):
        conf = rng.uniform(0.5, 1.0, n)
        right = rng.random(n) < np.clip(skill + (conf - 0.75), 0, 1)
        df[f"confidence_{t}"] = conf
        df[f"confidence_entropy_{t}"] = conf ** 2
        df[f"prediction_{t}"] = np.where(right, label, 1 - label)
    return pd.DataFrame(df)


def test_auto_picks_the_cheapest_thresholds_within_the_budget_on_validation():
    val = val_table()
    ctx = PolicyContext(T3, layers=LAYERS, exit_layers={"mobile": 2, "edge": 4, "cloud": 6}, val_exits=val)
    pol = policies.make(PolicySpec(name="early-exit", thresholds="auto"), ctx)
    rec = policies.record(pol)
    th, fit = rec["thresholds"], rec["fit"]
    assert fit["val_drop_pt"] <= 0.3 and fit["val_samples"] == len(val)
    # the thresholds really route validation as recorded (the agents' rule)
    conf = val[[f"confidence_{t}" for t in T3]].to_numpy()
    exit_at = policies.decide(th, conf, T3)
    acc = float(np.mean([val[f"prediction_{T3[t]}"][i] == val["label"][i] for i, t in enumerate(exit_at)]))
    assert acc == pytest.approx(fit["val_accuracy"])
    # and nothing on the grid is cheaper within the budget
    full = float((val["prediction_cloud"] == val["label"]).mean())
    dimee = preset("dimee").for_depth(6)  # the paper's ratios on this 6-layer model
    ok = [r.cost for r in routes(val, dimee, LAYERS) if (full - r.accuracy) * 100 <= 0.3 + 1e-9]
    assert fit["val_cost"] == pytest.approx(min(ok))
    assert fit["val_cost"] < dimee.route_cost(LAYERS, "cloud")  # it found something cheaper than all-cloud
    assert rec["chosen"].startswith("auto on val (n=1500)") and policy_settings({}, rec) == rec["chosen"]


def test_auto_uses_the_policys_own_measure_and_hand_set_says_so():
    val = val_table()
    ctx = PolicyContext(T3, layers=LAYERS, exit_layers={"mobile": 2, "edge": 4, "cloud": 6}, val_exits=val)
    ent = policies.record(policies.make(PolicySpec(name="early-exit", thresholds="auto", measure="entropy"), ctx))
    mx = policies.record(policies.make(PolicySpec(name="early-exit", thresholds="auto"), ctx))
    assert ent["thresholds"] != mx["thresholds"]  # entropy confidences are the squares here: other cut points
    hand = {"name": "early-exit", "thresholds": {"mobile": 0.9, "edge": 0.8}}
    assert policy_settings(hand, {}) == "hand-set: thresholds={'mobile': 0.9, 'edge': 0.8}"
    assert policy_settings({"name": "splitee"}, {}) == "defaults"
    with pytest.raises(ValueError, match="needs the bundle's val_exits"):
        policies.make(PolicySpec(name="early-exit", thresholds="auto"), PolicyContext(T3))
    assert policies.check(PolicySpec(name="early-exit", thresholds="auto"), T3) == []


def test_cartography_auto_picks_the_cost_weight_whose_thresholds_are_cheapest_within_the_budget():
    from testbed.policies.cartography import MU_GRID, best_thresholds, choose_mu

    val = val_table(seed=4)
    dimec = preset("dimec-dc").for_depth(6)
    mu, search = choose_mu(val, dimec, LAYERS, 0.5)
    assert [t["mu"] for t in search["tried"]] == list(MU_GRID)
    ok = [t for t in search["tried"] if t["val_drop_pt"] <= 0.5 + 1e-9]
    assert ok and mu == min(ok, key=lambda t: (t["val_cost"], t["mu"]))["mu"]
    fit = best_thresholds(val, dimec, LAYERS, mu)  # its thresholds come from the reward mechanism at that weight
    full = search["val_accuracy_last_tier"]
    assert (full - fit["accuracy"]) * 100 <= 0.5 + 1e-9
    heavier = [t for t in search["tried"] if t["mu"] > mu]
    assert all(t["val_drop_pt"] > 0.5 or t["val_cost"] >= fit["cost"] for t in heavier)
