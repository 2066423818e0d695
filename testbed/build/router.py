"""DIMEC-DC's difficulty pools and the router the first tier runs on them (no torch).

Data cartography (Swayamdipta et al., 2020) maps each training sample by the confidence
and variability of its gold-label probability over the training epochs. DIMEC-DC
(Bajpai and Hanawal, arXiv:2412.16616) clusters that map into easy, medium and hard
pools and assigns easy samples to the mobile, medium ones to the edge and hard ones to
the cloud. A sample's pool is unknown at inference, so the first tier predicts it:

1. :func:`training_pools`: k-means (k = 3, scikit-learn) of the training samples on
   confidence and variability at the exit of every tier but the last; the cluster with
   the highest mean confidence is easy, the lowest hard.
2. :func:`fit_router`: a multinomial logistic regression (scikit-learn, standardised
   inputs) from the first tier's mean-pooled hidden state (what its exit head reads) to
   the pool.
3. :func:`router_graph`: that regression as a small ONNX graph (``hidden``,
   ``attention_mask`` -> ``pool_logits``) with the standardisation folded into its
   weights, which the first tier's agent runs after its own graph.

The agents then route by :func:`agents.protocol.pool_route`, with thresholds the
cartography policy picks by its reward on the validation split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.runtime import Partition, sha256_file, softmax
from testbed.formats.bundle import RouterSpec

#: the router's file in a bundle
ROUTER_FILE = "difficulty.onnx"
#: the pools, easiest first; pool i is routed to tier i (three tiers) or to the first tier when easy (two)
POOLS = ("easy", "medium", "hard")


def training_pools(carto: pd.DataFrame, exit_layers: list[int], seed: int) -> tuple[pd.Series, dict[str, Any]]:
    """Each training sample's pool from its training dynamics at ``exit_layers``, and each pool's centroid.

    Returns (sample_id -> pool name, pool -> {size, confidence_L<k>, variability_L<k>, ...}).
    """
    from sklearn.cluster import KMeans

    wide = None
    cols: list[str] = []
    for layer in exit_layers:
        sub = carto[carto["exit_layer"] == layer].set_index("sample_id")[["confidence", "variability"]]
        if sub.empty:
            raise ValueError(f"cartography.parquet has no training dynamics at the exit after layer {layer}")
        sub = sub.rename(columns={"confidence": f"confidence_L{layer}", "variability": f"variability_L{layer}"})
        wide = sub if wide is None else wide.join(sub, how="inner")
        cols += [f"confidence_L{layer}", f"variability_L{layer}"]
    assert wide is not None
    x = wide[cols].to_numpy(np.float64)
    km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(x)
    conf = [i for i, c in enumerate(cols) if c.startswith("confidence")]
    order = np.argsort(-km.cluster_centers_[:, conf].mean(1), kind="stable")
    names = {int(j): POOLS[rank] for rank, j in enumerate(order)}
    pools = pd.Series([names[int(lab)] for lab in km.labels_], index=wide.index, name="pool")
    centroids = {names[j]: {"size": int((km.labels_ == j).sum()),
                            **{c: round(float(km.cluster_centers_[j][i]), 6) for i, c in enumerate(cols)}}
                 for j in range(3)}
    return pools, {p: centroids[p] for p in POOLS}


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` (batch, tokens, width) over the real tokens of ``mask`` (batch, tokens)."""
    m = mask.astype(np.float32)[:, :, None]
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)


def first_tier_features(first: Partition, feeds: Iterable[dict[str, np.ndarray]]) -> np.ndarray:
    """The first tier's mean-pooled ``hidden_out`` per sample, one unpadded sample at a time as the agents run it."""
    rows = []
    for feed in feeds:
        out = first.run(feed)
        rows.append(pooled(out["hidden_out"], feed["attention_mask"])[0])
    return np.asarray(rows, np.float32)


def fit_router(features: np.ndarray, pools: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial logistic regression from features to pool, standardisation folded in.

    Returns (weights (3, width), bias (3,), accuracy on the training samples); row i of the
    weights scores :data:`POOLS` [i].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    missing = [p for p in POOLS if p not in set(pools)]
    if missing:
        raise ValueError(f"the training pools lack {missing}: too few training samples to cluster")
    y = np.array([POOLS.index(p) for p in pools])
    scaler = StandardScaler().fit(features)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(features), y)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weights = clf.coef_ / scale[None, :]
    bias = clf.intercept_ - weights @ scaler.mean_
    accuracy = float((clf.predict(scaler.transform(features)) == y).mean())
    return weights.astype(np.float32), bias.astype(np.float32), accuracy


def router_graph(weights: np.ndarray, bias: np.ndarray, path: Path) -> None:
    """Write the router as ONNX: mean of ``hidden`` over ``attention_mask``, then ``pool_logits`` = x W^T + b."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    width = weights.shape[1]
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["hidden", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_f", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["count1"]),
        helper.make_node("Div", ["summed", "count1"], ["mean"]),
        helper.make_node("Gemm", ["mean", "weights", "bias"], ["pool_logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(weights.astype(np.float32), "weights"),
             numpy_helper.from_array(bias.astype(np.float32), "bias")]
    graph = helper.make_graph(
        nodes, "pool_router",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", width]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("pool_logits", TensorProto.FLOAT, ["batch", len(POOLS)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="testbed")
    model.ir_version = 8  # what onnxruntime 1.19 (the newest for Python 3.8 boards) reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def pool_columns(first: Partition, router: Partition, feeds: Iterable[dict[str, np.ndarray]]) -> pd.DataFrame:
    """``pool_<name>``: the router's probability of each pool per sample, as the first tier's agent computes it."""
    rows = []
    for feed in feeds:
        out = first.run(feed)
        logits = router.run({"hidden": out["hidden_out"], "attention_mask": feed["attention_mask"]})["pool_logits"]
        rows.append(softmax(logits[0]))
    return pd.DataFrame(rows, columns=[f"pool_{p}" for p in POOLS])


def make_router(out: Path, first: Partition, tier: str, layer: int, carto: pd.DataFrame, clustered_on: list[int],
                seed: int, train_feed: Callable[[int], dict[str, np.ndarray]],
                eval_feeds: Iterable[dict[str, np.ndarray]], progress: Callable[[str], None]
                ) -> tuple[RouterSpec, pd.DataFrame]:
    """Pools, router and ``out/difficulty.onnx``; returns its record and the ``pool_<name>`` columns of ``eval_feeds``.

    ``first``: the first tier's graph (``tier``, ending at ``layer``); ``train_feed(sample_id)``: a
    training sample as the agents get it; ``eval_feeds``: the exit table's samples in its row order.
    """
    pools, centroids = training_pools(carto, clustered_on, seed)
    progress("training pools from the dynamics at layers " + ", ".join(map(str, clustered_on)) + ": "
             + ", ".join(f"{p} {centroids[p]['size']:.0f}" for p in POOLS))
    features = first_tier_features(first, (train_feed(int(s)) for s in pools.index))
    weights, bias, accuracy = fit_router(features, pools.to_numpy(), seed)
    path = out / ROUTER_FILE
    router_graph(weights, bias, path)
    router = Partition.load(path, sha256_file(path))
    cols = pool_columns(first, router, eval_feeds)
    progress(f"pool router ({ROUTER_FILE}) on the {tier} tier's hidden state: {accuracy:.3f} of the training "
             f"samples in their own pool; on the val and test splits it predicts "
             + ", ".join(f"{p} {(cols.to_numpy().argmax(1) == i).mean():.2f}" for i, p in enumerate(POOLS)))
    spec = RouterSpec(
        file=ROUTER_FILE, sha256=sha256_file(path), size_bytes=path.stat().st_size, tier=tier, layer=layer,
        pools=list(POOLS), clustered_on=list(clustered_on), epochs=int(carto["epochs"].iloc[0]),
        centroids=centroids, train_samples=len(pools), train_accuracy=round(accuracy, 6),
        method="k-means (k=3, scikit-learn) of the training samples on the confidence and variability of "
               "their gold-label probability over the epochs at the clustered exits; pools named by mean "
               "confidence; multinomial logistic regression (standardised) from the tier's mean-pooled "
               "hidden state to the pool")
    return spec, cols


def add_router(root: Path, progress: Callable[[str], None]) -> RouterSpec:
    """Give an existing transformer bundle a pool router (``testbed bundle add-router``), from its own files.

    Reads its cartography.parquet, samples and first tier; writes ``difficulty.onnx``, the
    ``pool_<name>`` columns of exits.parquet and ``bundle.yaml`` with the new hashes. No torch.
    """
    import yaml

    from testbed.core.errors import BuildError
    from testbed.formats.bundle import Bundle

    bundle = Bundle.load(root)
    bundle.verify()
    spec = bundle.spec
    if spec.kind != "transformer" or spec.offload.mode != "hidden" or len(spec.tiers) not in (2, 3):
        raise BuildError(f"bundle {root}: a pool router reads the first tier's hidden state and routes to two or three "
                         f"tiers; this is a {spec.kind} bundle with {spec.offload.mode} offloads and "
                         f"{len(spec.tiers)} tiers")
    first = spec.tiers[0]
    graph = Partition.load(root / first.file, first.sha256)
    table = pd.read_parquet(root / "exits.parquet")
    table = table.drop(columns=[c for c in table.columns if c.startswith("pool_")])
    splits = {k: bundle.samples(k) for k in ("train", *sorted(set(table["split"])))}
    index = {k: {int(s): i for i, s in enumerate(v.sample_id)} for k, v in splits.items()}
    router, cols = make_router(
        root, graph, first.tier, first.layers[-1], bundle.cartography(), [t.exit.layer for t in spec.tiers[:-1]],
        spec.data.seed, lambda sid: splits["train"].tensors(index["train"][sid]),
        (splits[k].tensors(index[k][int(s)]) for k, s in zip(table["split"], table["sample_id"], strict=True)),
        progress)
    pd.concat([table.reset_index(drop=True), cols], axis=1).to_parquet(root / "exits.parquet", index=False)
    files = dict(spec.files) | {"exits.parquet": sha256_file(root / "exits.parquet")}
    new = spec.model_copy(update={"router": router, "files": files})
    (root / "bundle.yaml").write_text(yaml.safe_dump(new.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return router
