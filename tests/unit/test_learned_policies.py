"""Random, oracle, cartography and SplitEE on arrays with known answers; replay equals routing by hand."""

import numpy as np
import pandas as pd
import pytest

from testbed import policies
from testbed.core.config import PolicySpec
from testbed.core.costmodel import preset
from testbed.policies.cartography import best_thresholds
from testbed.policies.context import PolicyContext
from testbed.policies.splitee import SplitEEPolicy

T3 = ("mobile", "edge", "cloud")  # the default tiers

EXIT_LAYERS = {"mobile": 2, "edge": 4, "cloud": 6}
LAYERS = {"mobile": 2, "edge": 2, "cloud": 2}


def _table(conf, pred, label):
    conf, pred = np.asarray(conf, float), np.asarray(pred)
    d = {"sample_id": np.arange(len(label)), "label": np.asarray(label)}
    for j, t in enumerate(("mobile", "edge", "cloud")):
        d[f"confidence_{t}"], d[f"prediction_{t}"] = conf[:, j], pred[:, j]
    return pd.DataFrame(d)


def test_random_follows_its_shares_and_is_reproducible():
    ctx = PolicyContext(T3, seed=3, layers=LAYERS, exit_layers=EXIT_LAYERS)
    spec = PolicySpec(name="random", shares={"mobile": 0.5, "edge": 0.3, "cloud": 0.2})
    a, b = policies.make(spec, ctx), policies.make(spec, ctx)
    rng = np.random.default_rng(0)
    tiers = [a.choice(i) if a.thresholds(i, rng) else None for i in range(4000)]
    assert [b.thresholds(i, rng) for i in range(50)] == [a.thresholds(i, rng) for i in range(50)]
    shares = pd.Series(tiers).value_counts(normalize=True)
    assert shares["mobile"] == pytest.approx(0.5, abs=0.03) and shares["cloud"] == pytest.approx(0.2, abs=0.03)
    th = a.thresholds(7, rng)
    tier = a.choice(7)
    assert policies.decide(th, np.array([[0.0, 0.0, 0.0]]), T3)[0] == ("mobile", "edge", "cloud").index(tier)


def test_oracle_picks_the_cheapest_correct_tier():
    t = _table([[.5, .5, .5]] * 4, [[1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]], [1, 1, 1, 1])
    ctx = PolicyContext(T3, seed=0, layers=LAYERS, exit_layers=EXIT_LAYERS, exits=t)
    o = policies.make(PolicySpec(name="oracle"), ctx)
    assert [o.choice(i) for i in range(4)] == ["mobile", "edge", "cloud", "mobile"]  # none right: cheapest
    conf = t[[f"confidence_{x}" for x in ("mobile", "edge", "cloud")]].to_numpy()
    routes = [policies.decide(o.thresholds(i, None), conf[i:i + 1], T3)[0] for i in range(4)]
    assert routes == [0, 1, 2, 0]


def test_best_thresholds_trade_accuracy_for_cost():
    # mobile right and confident on the first half; edge never better; cloud right everywhere
    n = 100
    conf = np.array([[0.95, 0.5, 0.9]] * 50 + [[0.55, 0.5, 0.9]] * 50)
    pred = np.array([[1, 0, 1]] * 50 + [[0, 0, 1]] * 50)
    val = _table(conf, pred, [1] * n)
    fit = best_thresholds(val, preset("dimec-dc"), LAYERS, mu=0.1)
    assert 0.55 < fit["thresholds"]["mobile"] <= 0.95  # confident ones exit on mobile, the rest do not
    assert fit["accuracy"] == 1.0 and fit["shares"]["mobile"] == 0.5 and fit["shares"]["edge"] == 0.0
    cheap = best_thresholds(val, preset("dimec-dc"), LAYERS, mu=10.0)
    assert cheap["shares"]["mobile"] == 1.0  # cost weighs more than accuracy: everything stays on mobile


def test_splitee_converges_to_the_best_arm_on_a_synthetic_table():
    ctx = PolicyContext(T3, seed=0, layers=LAYERS, exit_layers=EXIT_LAYERS)
    rng = np.random.default_rng(1)
    # mobile is confident 90% of the time: exiting there costs 0.2; going to edge costs 0.4
    pol = SplitEEPolicy("splitee", ctx, alpha=0.8, c=1.0, lam=0.1, o=0.3, side_info=False)
    for sid in range(2000):
        th = pol.thresholds(sid, rng)
        cm = 0.95 if rng.random() < 0.9 else 0.4
        confs = np.array([[cm, 0.9, 0.97]])
        t = int(policies.decide(th, confs, T3)[0])
        pol.observe(sid, {x: float(confs[0, j]) for j, x in enumerate(("mobile", "edge", "cloud")) if j <= t})
    assert pol.best_arm == "mobile"
    assert pol.n[0] > 5 * pol.n[1]
    assert pol.choice(1999) in ("L2", "L4")
    # the reward follows the authors' code: exit C_i - lam*i, offload C_L - o - lam*i ...
    assert pol.reward(0, {"mobile": 0.9}) == pytest.approx(0.9 - 0.2)
    # ... but an offload from the mobile arm also ran the edge's layers (4 in all), as the report charges
    assert pol.reward(0, {"mobile": 0.5, "edge": 0.6, "cloud": 0.97}) == pytest.approx(0.97 - 0.3 - 0.4)
    two = SplitEEPolicy("s2", PolicyContext(("mobile", "cloud"), layers={"mobile": 2, "cloud": 4},
                                            exit_layers={"mobile": 2, "cloud": 6}), 0.8, 1.0, 0.1, 0.3, False)
    assert two.reward(0, {"mobile": 0.5, "cloud": 0.97}) == pytest.approx(0.97 - 0.3 - 0.2)  # the authors' exactly


def test_splitee_s_updates_shallower_arms_too():
    ctx = PolicyContext(T3, seed=0, layers=LAYERS, exit_layers=EXIT_LAYERS)
    pol = SplitEEPolicy("s", ctx, alpha=0.8, c=1.0, lam=0.1, o=0.3, side_info=True)
    pol.thresholds(0, None)  # arm 0 first
    pol.thresholds(1, None)  # then arm 1
    pol.observe(1, {"mobile": 0.5, "edge": 0.9})
    assert pol.n.tolist() == [1, 1]  # the edge arm and, from side information, the mobile arm
    # mobile would have offloaded; the deepest confidence seen (edge 0.9) stands in for C_L
    assert pol.sum[0] == pytest.approx(0.9 - 0.3 - 0.4)


@pytest.mark.parametrize(("spec", "fragment"), [
    (PolicySpec(name="random"), "needs the share"),
    (PolicySpec(name="random", shares={"mobile": 0.5, "edge": 0.2}), "add up to 0.7"),
    (PolicySpec(name="random", shares={"mobile": 1.5}), "outside [0, 1]"),
    (PolicySpec(name="splitee", alpha=1.5), ".alpha: 1.5 is outside [0, 1]"),
    (PolicySpec(name="splitee-s", o=-0.1), ".o: -0.1 is negative"),
    (PolicySpec(name="cartography", cost="nope"), "unknown cost preset"),
    (PolicySpec(name="splitee", mu=0.1), ".mu: splitee takes no mu (it takes alpha, arms, c, lam, measure, o)"),
    (PolicySpec(name="splitee", arms="layers"), ".arms: layers puts every layer on the device"),
    (PolicySpec(name="oracle", alpha=0.5), ".alpha: oracle takes no alpha; remove it"),
])
def test_bad_parameters_are_refused(spec, fragment):
    assert any(fragment in p for p in policies.check(spec, T3)), policies.check(spec, T3)


def test_adaptive_resnet_objective_by_hand():
    from testbed.policies.adaptive_resnet import AdaptiveResNetPolicy

    def v(name, macs, accs):
        return {"name": name, "macs": dict(zip(("mobile", "edge", "cloud"), macs, strict=True)),
                "bytes_per_offload": {"mobile-edge": 1000, "edge-cloud": 500},
                "exits": [{"val_accuracy": a} for a in accs]}

    variants = [v("full", (100, 100, 100), (0.5, 0.8, 0.95)), v("v1", (100, 100, 50), (0.5, 0.8, 0.94))]
    res = {"ms_per_mac": {"mobile": 0.01, "edge": 0.01, "cloud": 0.01},
           "ms_per_offload": {"mobile-edge": 1.0, "edge-cloud": 1.0}, "ms_per_byte": {}}
    pol = AdaptiveResNetPolicy("a", variants, w=0.0, tiers=T3)
    assert pol.predict_ms(variants[0], "cloud", res) == pytest.approx(3.0 + 2.0)
    assert pol.predict_ms(variants[1], "edge", res) == pytest.approx(2.0 + 1.0)
    pol.plan(res)
    assert (pol.variant["name"], pol.tier) == ("full", "cloud")  # accuracy only
    pol = AdaptiveResNetPolicy("a", variants, w=0.5, tiers=T3)
    pol.plan(res)  # 0.5*4.5/5 - 0.5*0.94 = -0.02 beats 0.5*1 - 0.5*0.95 = 0.025 and mobile 0.1 - 0.25 = -0.15
    assert (pol.variant["name"], pol.tier) == ("full", "mobile")
    pol = AdaptiveResNetPolicy("a", variants, w=0.1, tiers=T3)
    pol.plan(res)  # 0.1*4.5/5 - 0.9*0.94 = -0.756 beats full cloud -0.755
    assert (pol.variant["name"], pol.tier) == ("v1", "cloud") and pol.choice(0) == "v1@cloud"
    assert len(pol.record["options"]) == 6


def test_adaptive_resnet_measures_its_resources_from_warmup_rows():
    from testbed.policies.adaptive_resnet import AdaptiveResNetPolicy

    full = {"name": "full", "macs": {"mobile": 1000, "edge": 2000, "cloud": 4000},
            "bytes_per_offload": {"mobile-edge": 100, "edge-cloud": 50}, "exits": []}
    rows = [{"compute_ms_mobile": m, "compute_ms_edge": 2 * m, "compute_ms_cloud": None if m == 3 else 4 * m,
             "net_ms_controller_mobile": 0.1 * m, "net_ms_mobile_edge": 0.5, "net_ms_edge_cloud": None,
             "throttled_ms_edge": 90.0 if m == 3 else 0.0} for m in (1.0, 2.0, 3.0)]
    pol = AdaptiveResNetPolicy("a", [full], w=0.5, tiers=T3)
    res = pol.resources(rows)
    assert res["ms_per_mac"] == pytest.approx({"mobile": 2.0 / 1000, "edge": 4.0 / 2000, "cloud": 6.0 / 4000})
    # no offload measured: nothing charged; the issue hop is paid by every option
    assert res["ms_per_offload"] == pytest.approx({"controller-mobile": 0.2, "mobile-edge": 0.5, "edge-cloud": 0.0})
    # one stall of 90 ms in three samples: the edge is charged its mean, the tiers without a cap nothing
    assert res["ms_throttled"] == pytest.approx({"mobile": 0.0, "edge": 30.0, "cloud": 0.0})
    assert pol.predict_ms(full, "mobile", res) == pytest.approx(0.2 + 2.0)
    assert pol.predict_ms(full, "edge", res) == pytest.approx(0.2 + 2.0 + 0.5 + 4.0 + 30.0)
    with pytest.raises(TypeError, match="does not measure resources"):
        policies.make(PolicySpec(name="all-cloud"), PolicyContext(T3)).resources(rows)


def test_splitee_over_every_layer_converges_to_the_best_layer_of_a_synthetic_table():
    """Six layers on the device; layer 3 is confident 95% of the time, earlier ones rarely: with lam 0.1 and o 0.5,
    exiting at 3 (reward ~0.95 - 0.3) beats every other arm, the last one (0.97 - 0.6) included."""
    two = ("mobile", "cloud")
    ctx = PolicyContext(two, layers={"mobile": 3, "cloud": 3}, exit_layers={"mobile": 3, "cloud": 6}, layer_graphs=6)
    pol = SplitEEPolicy("s", ctx, alpha=0.8, c=1.0, lam=0.1, o=0.5, side_info=False, per_layer=True)
    assert pol.arms == ["L1", "L2", "L3", "L4", "L5", "L6"] and pol.layer_ranges() == {"mobile": (1, 6),
                                                                                    "cloud": (1, 6)}
    rng = np.random.default_rng(0)
    for sid in range(3000):
        th = pol.thresholds(sid, rng)
        arm = int(pol.choice(sid)[1:])
        assert pol.split(sid) == (0 if arm == 6 else arm) and list(th) == [f"L{arm}"]
        conf = {f"L{k}": (0.95 if rng.random() < 0.95 else 0.5) if k == 3 else (0.3 if k < 3 else 0.9)
                for k in range(1, 7)}
        conf["L6"] = 0.97
        seen = {k: v for k, v in conf.items() if int(k[1:]) <= arm}
        if arm < 6 and seen[f"L{arm}"] < 0.8:
            seen |= {k: v for k, v in conf.items() if int(k[1:]) > arm}  # offloaded: the cloud ran the rest
        pol.observe(sid, seen)
    assert pol.best_arm == "L3" and pol.n[2] > pol.n.sum() / 2
    # the reward by hand: exit at layer 3, and an offload from layer 1 charged 1 layer on the device and o
    assert pol.reward(2, {"L3": 0.95}) == pytest.approx(0.95 - 0.3)
    assert pol.reward(0, {"L1": 0.3, "L6": 0.97}) == pytest.approx(0.97 - 0.5 - 0.1)
    assert pol.reward(5, {"L6": 0.6}) == pytest.approx(0.6 - 0.6)  # the last arm always exits
