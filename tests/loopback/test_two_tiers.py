"""A two-tier run (a device and the cloud, SplitEE's own setting): the tiers come from the bundle.

Real agents on 127.0.0.1 run a tiny bundle of two tiers, ``mobile`` and ``cloud``; the
device-to-cloud hop is shaped, measured, costed and replayed like any other hop.
"""

import json

import pandas as pd
import pytest

from testbed.analysis import replay
from testbed.cli import main
from testbed.core.config import PolicySpec
from testbed.formats.results import load_manifest, load_samples

from conftest import write_experiment, write_inventory
from loopback.helpers import only_run
from tinybundle import make_tiny_bundle

pytestmark = pytest.mark.loopback

T2 = ("mobile", "cloud")
POLICIES = [{"name": "all-mobile"}, {"name": "all-cloud"}, {"name": "early-exit", "thresholds": {"mobile": 0.6}},
            {"name": "splitee", "alpha": 0.6}, {"name": "random", "shares": {"mobile": 0.5, "cloud": 0.5}}]


@pytest.fixture(scope="module")
def two_tier_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two")
    bundle = make_tiny_bundle(tmp / "tiny2", n_test=40, tiers=T2)
    exp = write_experiment(tmp / "exp.yaml", bundle.root, POLICIES, count=40, warmup=2, name="two",
                           devices={"mobile": "mobile-1", "cloud": "cloud-1"},
                           shaping={"backend": "userspace", "links": {"mobile-cloud": {"delay_ms": 8}}})
    inv = write_inventory(tmp / "inv.yaml")
    assert main(["validate", str(exp), "--inventory", str(inv)]) == 0
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp / "results"), "-q"]) == 0
    run_dir = only_run(tmp / "results")
    return bundle, run_dir, pd.read_parquet(run_dir / "samples.parquet")


def test_the_results_have_the_runs_two_tiers_and_their_one_offload_hop(two_tier_run):
    _, run_dir, df = two_tier_run
    assert "bytes_mobile_cloud" in df and "net_ms_mobile_cloud" in df and "bytes_wire_mobile_cloud" in df
    assert not [c for c in df.columns if "edge" in c]
    assert set(df["tier_path"]) <= {"mobile", "mobile>cloud"}
    assert set(df[df.policy == "all-cloud"]["tier_path"]) == {"mobile>cloud"}
    assert set(df[df.policy == "all-mobile"]["exit_tier"]) == {"mobile"}
    manifest = load_manifest(run_dir)
    assert manifest.tiers == list(T2) and manifest.status == "complete"
    assert load_samples(run_dir)[0].columns.tolist() == df.columns.tolist()


def test_the_device_to_cloud_hop_is_shaped_and_measured(two_tier_run):
    _, run_dir, df = two_tier_run
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")]
    assert cloud["net_ms_mobile_cloud"].min() >= 7.9  # the agent holds each offload 8 ms: none arrives sooner
    assert cloud["net_ms_controller_mobile"].median() < cloud["net_ms_mobile_cloud"].min()
    assert (cloud["bytes_mobile_cloud"] > 0).all()
    shaping = json.loads((run_dir / "manifest.json").read_text())["shaping"]
    assert shaping["links"]["mobile-cloud"]["delay_ms"] == 8.0


def test_splitee_picks_among_every_layer_of_the_device_and_live_equals_replay(two_tier_run):
    bundle, run_dir, df = two_tier_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rec = manifest["policies"]["splitee"]
    assert rec["arms"] == ["L1", "L2"] and rec["arms_are"] == "layers"  # every layer, the last one included
    sp = df[(df.policy == "splitee")]
    assert set(sp["policy_choice"]) == {"L1", "L2"}  # each arm played at least once
    # a split after layer 1: the device ran one layer, the cloud the other; the last arm keeps it all on the device
    offloaded = sp[(sp.policy_choice == "L1") & (sp.exit_tier == "cloud")]
    assert (offloaded.layers_mobile == 1).all() and (offloaded.layers_cloud == 1).all()
    assert (sp[sp.policy_choice == "L2"].exit_tier == "mobile").all()
    last = sp[sp.policy_choice == "L2"]
    assert (last.exit_layer == 2).all() and (last.layers_mobile == 2).all()
    specs = [PolicySpec.model_validate(p) for p in POLICIES]
    rows, records = replay.replay(bundle, specs, "test", 40, 0, 2)
    assert records["splitee"]["pulls"] == rec["pulls"]  # the bandit learned the same thing from the same feedback
    for key in ("early-exit", "splitee", "random"):
        live = df[(df.policy == key)].sort_values("seq")
        again = rows[(rows.policy == key)]
        assert list(live["exit_tier"]) == list(again["exit_tier"]), key
        assert list(live["exit_layer"]) == list(again["exit_layer"]), key
        assert list(live["prediction"]) == list(again["prediction"]), key
    ee = df[(df.policy == "early-exit") & (df.phase == "measure")]
    assert set(ee["exit_tier"]) == set(T2)  # the threshold splits the samples between the two tiers


def test_the_report_and_the_cost_model_follow_the_runs_tiers(two_tier_run):
    _, run_dir, _ = two_tier_run
    cost = json.loads((run_dir / "manifest.json").read_text())["cost_model"]
    assert list(cost["layers"]) == list(T2) and "mobile-cloud" in cost["o"]
    assert main(["report", str(run_dir)]) == 0
    regret = pd.read_csv(run_dir / "report" / "splitee_regret.csv")  # SplitEE's regret on the page
    rows = pd.read_parquet(run_dir / "samples.parquet")
    live = rows[(rows.policy == "splitee") & (rows.phase == "measure")].sort_values("seq")
    assert list(regret["arm"]) == list(live["policy_choice"]) and regret["best_fixed_arm"].nunique() == 1
    assert (run_dir / "report" / "splitee_regret.png").stat().st_size > 5000
    layers = pd.read_csv(run_dir / "report" / "exit_layers.csv").set_index("policy")  # SplitEE exits inside a tier
    shares = live["exit_layer"].value_counts(normalize=True)
    assert all(layers.loc["splitee", f"L{k}"] == pytest.approx(v) for k, v in shares.items())


def test_a_bundle_of_two_tiers_refuses_an_experiment_naming_three(two_tier_run, tmp_path, capsys):
    bundle, _, _ = two_tier_run
    exp = write_experiment(tmp_path / "exp.yaml", bundle.root, [{"name": "all-edge"}], name="three")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["validate", str(exp), "--inventory", str(inv)]) != 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert "the bundle" in text and "has tiers ['mobile', 'cloud']" in text
    assert "devices.edge: not a tier of the bundle" in text
    assert "policies[0].name: the run has no 'edge' tier" in text
