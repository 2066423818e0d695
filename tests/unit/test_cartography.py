"""Cartography statistics on a hand-made training history."""

import numpy as np
import pytest

from testbed.build.cartography import CARTOGRAPHY_COLUMNS, dynamics_table


def test_confidence_variability_correctness_per_sample_and_exit():
    # 3 epochs, 2 samples, 2 exits
    gold = np.array([[[0.2, 0.9], [0.5, 0.6]],
                     [[0.4, 0.9], [0.5, 0.8]],
                     [[0.6, 0.9], [0.5, 1.0]]], np.float32)
    right = np.array([[[False, True], [False, True]],
                      [[False, True], [True, True]],
                      [[True, True], [True, True]]])
    df = dynamics_table(gold, right, np.array([10, 11]), np.array([0, 2]), [2, 4], ["mobile", "edge"])
    assert list(df.columns) == list(CARTOGRAPHY_COLUMNS)
    assert len(df) == 4
    r = df[(df.sample_id == 10) & (df.exit_layer == 2)].iloc[0]
    assert r.confidence == pytest.approx(0.4) and r.variability == pytest.approx(np.std([0.2, 0.4, 0.6]))
    assert r.correctness == pytest.approx(1 / 3) and r.tier == "mobile" and r.epochs == 3 and r.label == 0
    r = df[(df.sample_id == 10) & (df.exit_layer == 4)].iloc[0]
    assert r.confidence == pytest.approx(0.9) and r.variability == pytest.approx(0.0) and r.correctness == 1.0
    r = df[(df.sample_id == 11) & (df.exit_layer == 4)].iloc[0]
    assert r.confidence == pytest.approx(0.8) and r.variability == pytest.approx(np.std([0.6, 0.8, 1.0]))
    np.testing.assert_allclose(r.gold_prob_by_epoch, [0.6, 0.8, 1.0])
    r = df[(df.sample_id == 11) & (df.exit_layer == 2)].iloc[0]
    assert r.correctness == pytest.approx(2 / 3) and r.label == 2


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="epochs, samples, exits"):
        dynamics_table(np.zeros((2, 3)), np.zeros((2, 3), bool), np.arange(3), np.zeros(3), [1], ["mobile"])
    with pytest.raises(ValueError, match="exits axis"):
        dynamics_table(np.zeros((2, 3, 1)), np.zeros((2, 3, 1), bool), np.arange(3), np.zeros(3), [1, 2],
                       ["mobile", "edge"])
