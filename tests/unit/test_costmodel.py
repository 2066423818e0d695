"""The cost model against hand-computed totals, presets' conventions, bad values."""

import numpy as np
import pytest

from testbed.core.costmodel import PRESETS, CostModel, preset, reduction

LAYERS = {"mobile": 2, "edge": 2, "cloud": 2}


def test_route_costs_by_hand():
    cm = CostModel("t", {"mobile": 0.3, "edge": 0.2, "cloud": 0.1}, {"mobile-edge": 0.5, "edge-cloud": 0.7})
    assert cm.route_cost(LAYERS, "mobile") == pytest.approx(0.6)
    assert cm.route_cost(LAYERS, "edge") == pytest.approx(0.6 + 0.5 + 0.4)
    assert cm.route_cost(LAYERS, "cloud") == pytest.approx(0.6 + 0.5 + 0.4 + 0.7 + 0.2)
    np.testing.assert_allclose(cm.costs(["mobile", "cloud", "mobile"], LAYERS), [0.6, 2.4, 0.6])


def test_splitee_preset_charges_no_cloud_processing():
    s = preset("splitee")
    # split at layer 4 (mobile 2 + edge 2), offloaded: lambda*4 + o, cloud layers free, mobile-edge hop free
    assert s.route_cost(LAYERS, "cloud") == pytest.approx(0.1 * 4 + 0.3)
    assert s.route_cost(LAYERS, "mobile") == pytest.approx(0.2)
    d = preset("dimee")
    assert d.route_cost(LAYERS, "cloud") == pytest.approx(0.1 * 6 + 0.3 + 0.3)
    assert set(PRESETS) >= {"dimee", "dimec-dc", "splitee"}
    assert s.with_values(o={"edge-cloud": 0.6}).route_cost(LAYERS, "cloud") == pytest.approx(1.0)
    assert s.record()["charge"] == ["mobile", "edge"]


def test_bad_values_and_reduction():
    with pytest.raises(ValueError, match="negative"):
        CostModel("t", {"mobile": -1, "edge": 0, "cloud": 0}, {"mobile-edge": 0, "edge-cloud": 0})
    partial = CostModel("t", {"mobile": 1}, {"mobile-edge": 0, "edge-cloud": 0})
    assert partial.missing(["mobile", "edge", "cloud"]) == ["lam.edge", "lam.cloud"]
    assert partial.missing(["mobile", "cloud"]) == ["lam.cloud", "o.mobile-cloud"]
    with pytest.raises(ValueError, match="no value for lam.edge, lam.cloud"):
        partial.route_cost({"mobile": 2, "edge": 2, "cloud": 2}, "mobile")
    with pytest.raises(KeyError, match="presets"):
        preset("nope")
    assert reduction(0.57, 1.0) == pytest.approx(0.43)
    assert np.isnan(reduction(1.0, 0.0))


def test_cost_sweep_recomputes_reductions_on_the_measured_routes():
    import pandas as pd

    from testbed.analysis.report import cost_sweep

    df = pd.DataFrame({"policy": ["all-cloud"] * 2 + ["ee"] * 2, "phase": "measure",
                       "exit_tier": ["cloud", "cloud", "mobile", "cloud"], "correct": [True, True, True, False]})
    rec = preset("dimee").record() | {"layers": LAYERS}
    sw = cost_sweep(df, rec, [0.0, 1.0], [0.5])
    ee = sw[sw.policy == "ee"].set_index(["swept", "value"])
    # o = 0: cloud 0.6, mobile 0.2 -> ee mean 0.4 -> 1/3 lower; o = 1: cloud 2.6 -> ee 1.4 -> 6/13 lower
    assert ee.loc[("o", 0.0), "cost_reduction"] == pytest.approx(1 / 3)
    assert ee.loc[("o", 1.0), "cost_reduction"] == pytest.approx(1 - 1.4 / 2.6)
    # lambda = 0.5 with o = 0.3: cloud 3.6, mobile 1.0 -> ee 2.3
    assert ee.loc[("lambda", 0.5), "cost_reduction"] == pytest.approx(1 - 2.3 / 3.6)
    assert ee.loc[("o", 0.0), "accuracy_drop_pt"] == pytest.approx(50.0)


def test_two_tiers_charge_the_one_offload_between_them():
    dimee = preset("dimee")
    layers = {"mobile": 2, "cloud": 4}
    assert dimee.route_cost(layers, "mobile") == pytest.approx(0.2)
    assert dimee.route_cost(layers, "cloud") == pytest.approx(0.2 + 0.3 + 0.4)
    splitee = preset("splitee")  # the device's layers and the offload; the cloud's layers are free
    assert splitee.route_cost(layers, "cloud") == pytest.approx(0.2 + 0.3)
    named = CostModel("n", {"device": 0.1, "server": 0.0}, {"device-server": 0.15})
    assert named.costs(["device", "server"], {"device": 3, "server": 3}).tolist() == pytest.approx([0.3, 0.45])


def test_a_preset_on_a_shallower_model_keeps_the_papers_offload_ratio():
    splitee = preset("splitee")
    assert splitee.paper_layers == 12 and splitee.offload_ratio() == pytest.approx(0.3 / (0.1 * 12))
    six = splitee.for_depth(6)
    assert six.lam == splitee.lam and six.o["edge-cloud"] == pytest.approx(0.15)  # a quarter of a 6-layer pass
    assert six.offload_ratio() == pytest.approx(0.125)  # against the paper's 12 layers: half, as it should be
    assert six.extra["paper_constants"]["o"]["edge-cloud"] == 0.3 and six.extra["scaled_to_layers"] == 6
    assert splitee.for_depth(12) is splitee
    assert CostModel.from_record(six.record()).o == six.o


def test_both_reporting_conventions_of_the_splitee_authors():
    layers = {"mobile": 2, "edge": 2, "cloud": 2}
    # splitee_s.py: lambda * i (+ o); splitee.py: 0.8 * lambda * (i - 1) + lambda (+ o); the cloud never charged
    assert preset("splitee").route_cost(layers, "edge") == pytest.approx(0.1 * 4)
    assert preset("splitee-py").route_cost(layers, "edge") == pytest.approx(0.8 * 0.1 * 3 + 0.1)
    assert preset("splitee-py").route_cost(layers, "cloud") == pytest.approx(0.8 * 0.1 * 3 + 0.1 + 0.3)
    assert preset("splitee-py").route_cost(layers, "mobile") == pytest.approx(0.8 * 0.1 * 1 + 0.1)
    assert CostModel.from_record(preset("splitee-py").record()).layer_factor == 0.8
