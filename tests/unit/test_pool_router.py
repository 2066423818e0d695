"""DIMEC-DC's pools and router on hand-made dynamics: the pools decide the routes, and the graph is the regression."""

import numpy as np
import pandas as pd
import pytest

from agents.protocol import pool_route
from agents.runtime import Partition, sha256_file, softmax
from testbed import policies
from testbed.analysis.replay import _pool_route
from testbed.build.router import POOLS, fit_router, pool_columns, pooled, router_graph, training_pools
from testbed.core.config import PolicySpec
from testbed.policies.context import PolicyContext

T3 = ("mobile", "edge", "cloud")
LAYERS = {"mobile": 2, "edge": 2, "cloud": 2}


def _dynamics(pool_of: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """Training dynamics at exits 2 and 4 where each sample's (confidence, variability) sits in its pool's region."""
    rng = np.random.default_rng(seed)
    centre = {"easy": (0.95, 0.02), "medium": (0.6, 0.25), "hard": (0.15, 0.05)}
    rows = []
    for sid, pool in enumerate(pool_of):
        for layer in (2, 4):
            c, v = centre[pool]
            rows.append({"sample_id": sid, "exit_layer": layer, "confidence": c + rng.normal(0, 0.01),
                         "variability": v + rng.normal(0, 0.005), "epochs": 5})
    return pd.DataFrame(rows)


def _hidden(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states (n, 4 tokens, width 3) with a padded last token, and their mask."""
    rng = np.random.default_rng(seed)
    h = rng.normal(0, 1, (n, 4, 3)).astype(np.float32)
    mask = np.ones((n, 4), np.int64)
    mask[:, -1] = 0
    h[:, -1] = 100.0  # a padded token the mean must ignore
    return h, mask


def test_training_pools_recover_the_regions_and_name_them_by_confidence():
    truth = np.array(["easy"] * 30 + ["medium"] * 25 + ["hard"] * 20)
    pools, centroids = training_pools(_dynamics(truth), [2, 4], seed=0)
    assert (pools.sort_index().to_numpy() == truth).all()
    assert {p: c["size"] for p, c in centroids.items()} == {"easy": 30, "medium": 25, "hard": 20}
    conf = {p: c["confidence_L2"] for p, c in centroids.items()}
    assert conf["easy"] > conf["medium"] > conf["hard"]


def test_the_router_graph_is_the_fitted_regression_over_the_masked_mean(tmp_path):
    h, mask = _hidden(300, seed=1)
    x = pooled(h, mask)
    assert np.allclose(x, h[:, :3].mean(1))  # the padded token is left out
    pools = np.where(x[:, 0] > 0.3, "easy", np.where(x[:, 0] < -0.3, "hard", "medium"))
    w, b, acc = fit_router(x, pools, seed=0)
    assert acc > 0.9  # the pools are a function of the features: the regression learns them
    router_graph(w, b, tmp_path / "r.onnx")
    part = Partition.load(tmp_path / "r.onnx", sha256_file(tmp_path / "r.onnx"))
    got = part.run({"hidden": h[:5], "attention_mask": mask[:5]})["pool_logits"]
    assert np.allclose(got, x[:5] @ w.T + b, atol=1e-4)
    probs = softmax(got[0])
    assert sum(probs) == pytest.approx(1.0) and np.argmax(probs) == POOLS.index(pools[0])


def test_pool_route_takes_the_first_tier_whose_easier_pools_reach_its_threshold():
    pools = [["mobile", 0.6], ["edge", 0.7]]
    assert pool_route([0.7, 0.2, 0.1], pools) == "mobile"
    assert pool_route([0.4, 0.35, 0.25], pools) == "edge"  # 0.4 < 0.6; 0.75 >= 0.7
    assert pool_route([0.4, 0.2, 0.4], pools) == ""  # the last tier
    assert pool_route([0.9, 0.1, 0.0], [["mobile", float("inf")], ["edge", 0.5]]) == "edge"


class _First:
    """The first tier's graph for :func:`pool_columns`: hands the hidden state through."""

    def run(self, feed):
        return {"hidden_out": feed["hidden"]}


def _val_table(router: Partition, h: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """An exit table: the mobile right where the first feature is high, edge and cloud always right."""
    n = len(h)
    cols = pool_columns(_First(), router, ({"hidden": h[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(n)))
    right_mobile = pooled(h, mask)[:, 0] > 0
    d = {"sample_id": np.arange(n), "label": np.ones(n, int), "prediction_mobile": right_mobile.astype(int),
         "prediction_edge": np.ones(n, int), "prediction_cloud": np.ones(n, int)}
    for t in T3:
        d[f"confidence_{t}"] = np.full(n, 0.5)
    return pd.concat([pd.DataFrame(d), cols], axis=1)


def _routes_with_pools_from(truth: np.ndarray, h, mask, test_h, test_mask, tmp_path, name) -> list[str]:
    """Train pools and router from dynamics that put ``truth`` pools, fit cartography, route the test samples."""
    pools, _ = training_pools(_dynamics(truth), [2, 4], seed=0)
    w, b, _ = fit_router(pooled(h, mask), pools.sort_index().to_numpy(), seed=0)
    router_graph(w, b, tmp_path / f"{name}.onnx")
    router = Partition.load(tmp_path / f"{name}.onnx", sha256_file(tmp_path / f"{name}.onnx"))
    val = _val_table(router, h, mask)
    ctx = PolicyContext(T3, layers=LAYERS, exit_layers={"mobile": 2, "edge": 4, "cloud": 6}, val_exits=val,
                        router={"centroids": {}, "file": "r", "tier": "mobile", "layer": 2, "clustered_on": [2, 4],
                                "epochs": 5, "train_samples": len(h), "train_accuracy": 1.0, "method": "test"})
    pol = policies.make(PolicySpec(name="cartography", mu=0.3), ctx)
    test = _val_table(router, test_h, test_mask)
    cols = {c: test[c].to_numpy() for c in test.columns}
    conf = test[[f"confidence_{t}" for t in T3]].to_numpy()
    run = dict(LAYERS)
    probs = test[[c for c in test.columns if c.startswith("pool_")]].to_numpy()
    return [_pool_route(cols, r, pol.pools(r), probs, conf, T3, run, {"mobile": 2, "edge": 4, "cloud": 6}).tier
            for r in range(len(test))]


def test_cartography_routes_change_when_the_dynamics_change(tmp_path):
    h, mask = _hidden(400, seed=2)
    th, tmask = _hidden(200, seed=3)
    x = pooled(h, mask)
    # the same training samples, two histories: easy where the first feature is high, or where the second is
    by_first = np.where(x[:, 0] > 0.3, "easy", np.where(x[:, 0] < -0.3, "hard", "medium"))
    by_second = np.where(x[:, 1] > 0.3, "easy", np.where(x[:, 1] < -0.3, "hard", "medium"))
    a = _routes_with_pools_from(by_first, h, mask, th, tmask, tmp_path, "a")
    b = _routes_with_pools_from(by_second, h, mask, th, tmask, tmp_path, "b")
    again = _routes_with_pools_from(by_first, h, mask, th, tmask, tmp_path, "c")
    assert a == again  # deterministic
    differ = np.mean([p != q for p, q in zip(a, b, strict=True)])
    assert differ > 0.3, (differ, pd.Series(a).value_counts().to_dict(), pd.Series(b).value_counts().to_dict())
    assert len(set(a)) > 1  # it does route, not send everything to one tier
