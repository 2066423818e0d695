import numpy as np
import pytest

from testbed import policies
from testbed.core.config import PolicySpec
from testbed.policies.context import PolicyContext

T3 = ("mobile", "edge", "cloud")  # the default tiers

CONF = np.array([
    [0.95, 0.50, 0.6],  # confident on mobile
    [0.60, 0.85, 0.6],  # confident on edge
    [0.60, 0.70, 0.9],  # neither: cloud
    [0.90, 0.99, 0.9],  # exactly at the mobile threshold: exits (>=)
])


def test_early_exit_decides_per_confidence():
    pol = policies.make(PolicySpec(name="early-exit", thresholds={"mobile": 0.9, "edge": 0.8}), PolicyContext(T3))
    rule = pol.thresholds(0, np.random.default_rng(0))
    assert list(policies.decide(rule, CONF, T3)) == [0, 1, 2, 0]


@pytest.mark.parametrize("name,tier", [("all-mobile", 0), ("all-edge", 1), ("all-cloud", 2)])
def test_baselines_send_everything_to_one_tier(name, tier):
    rule = policies.make(PolicySpec(name=name), PolicyContext(T3)).thresholds(0, np.random.default_rng(0))
    assert set(policies.decide(rule, CONF, T3)) == {tier}


def test_policy_label_is_its_key():
    spec = PolicySpec(name="early-exit", thresholds={"mobile": 0.5, "edge": 0.5}, label="ee-0.5")
    pol = policies.make(spec, PolicyContext(T3))
    assert pol.name == "ee-0.5"


@pytest.mark.parametrize("spec,fragment", [
    (PolicySpec(name="ealy-exit"), "did you mean 'early-exit'"),
    (PolicySpec(name="early-exit"), "needs a threshold"),
    (PolicySpec(name="early-exit", thresholds={"mobile": 1.5, "edge": 0.5}), "1.5 is outside [0, 1]"),
    (PolicySpec(name="early-exit", thresholds={"mobile": 0.5}), "no threshold for edge"),
    (PolicySpec(name="early-exit", thresholds={"mobile": 0.5, "edge": 0.5, "cloud": 0.1}), "always finishes"),
    (PolicySpec(name="all-cloud", thresholds={"mobile": 0.5}), "takes no thresholds"),
])
def test_check_explains_bad_policies(spec, fragment):
    problems = policies.check(spec, T3)
    assert any(fragment in p for p in problems), problems


def test_check_accepts_good_policies():
    assert policies.check(PolicySpec(name="early-exit", thresholds={"mobile": 0.0, "edge": 1.0}), T3) == []
    assert policies.check(PolicySpec(name="all-edge"), T3) == []


def test_decide_edges_all_confident_none_confident_ties():
    rule = {"mobile": 0.8, "edge": 0.8}
    assert list(policies.decide(rule, np.full((5, 3), 0.99), T3)) == [0] * 5  # all confident: stop at once
    assert list(policies.decide(rule, np.full((5, 3), 0.10), T3)) == [2] * 5  # none: the cloud finishes
    edge = np.array([[0.8, 0.8, 0.8], [np.nextafter(0.8, 0), 0.8, 0.9], [0.79999, 0.79999, 0.1]])
    assert list(policies.decide(rule, edge, T3)) == [0, 1, 2]  # >= at the threshold; just below goes on
    assert list(policies.decide({"mobile": 0.0, "edge": 0.0}, np.zeros((2, 3)), T3)) == [0, 0]  # 0 always exits
    assert list(policies.decide({"mobile": float("inf"), "edge": 1.0}, np.ones((1, 3)), T3)) == [1]  # 1.0 reaches 1.0
