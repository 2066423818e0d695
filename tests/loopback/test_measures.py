"""The entropy confidence measure: computed on the agents, equal to the replay of the stored table."""

import math

import numpy as np
import pandas as pd
import pytest

from agents.runtime import confidence, top1, top1_entropy
from testbed import policies
from testbed.analysis import replay
from testbed.cli import main
from testbed.core.config import PolicySpec

from conftest import write_experiment, write_inventory
from loopback.helpers import only_run

T3 = ("mobile", "edge", "cloud")  # the default tiers

pytestmark = pytest.mark.loopback

POLICIES = [{"name": "early-exit", "thresholds": {"mobile": 0.3, "edge": 0.3}, "measure": "entropy"},
            {"name": "early-exit", "thresholds": {"mobile": 0.3, "edge": 0.3}, "label": "ee-max"},
            {"name": "splitee-s", "alpha": 0.3, "measure": "entropy"}]


def test_entropy_confidence_by_hand():
    assert top1_entropy(np.zeros(4))[0] == pytest.approx(0.0)
    c, pred = top1_entropy(np.array([0.0, 50.0, 0.0]))
    assert c == pytest.approx(1.0, abs=1e-12) and pred == 1
    p = np.array([0.5, 0.25, 0.25])
    want = 1 - (-(p * np.log(p)).sum()) / math.log(3)
    assert top1_entropy(np.log(p))[0] == pytest.approx(want)
    assert confidence(np.log(p), "max") == top1(np.log(p))
    assert confidence(np.log(p), "entropy")[0] == pytest.approx(want)
    assert any("measure" in x for x in policies.check(PolicySpec(name="splitee", measure="entropi"), T3))
    assert any("takes no measure" in x for x in policies.check(PolicySpec(name="random", shares={"cloud": 1},
                                                                          measure="max"), T3))


def test_entropy_policies_live_equal_their_replay(tiny_bundle, tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, POLICIES, count=40, warmup=2, name="measures")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    live = pd.read_parquet(only_run(tmp_path / "results") / "samples.parquet")
    rows, _ = replay.replay(tiny_bundle, [PolicySpec.model_validate(p) for p in POLICIES], "test", 40, 0, 2)
    table = tiny_bundle.exits("test").set_index("sample_id")
    for key, g in live.groupby("policy", sort=False):
        r = rows[rows.policy == key]
        assert g.exit_tier.tolist() == r.exit_tier.tolist(), key
    ee = live[live.policy == "early-exit"]
    # the agents reported the entropy confidence, which is what the bundle's table holds for that measure
    want = [table.at[s, f"confidence_entropy_{t}"] for s, t in zip(ee.sample_id, ee.exit_tier, strict=True)]
    np.testing.assert_allclose(ee.confidence.to_numpy(), want, atol=1e-6)
    # and the two measures route differently on these samples
    assert ee.exit_tier.tolist() != live[live.policy == "ee-max"].exit_tier.tolist()
