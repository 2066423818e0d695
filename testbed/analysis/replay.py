"""Policies against the bundle's stored exit table, without devices (``testbed replay``); policy context and records.

Replay walks the samples of a split in order, asks the policy for each sample's
thresholds, routes it with :func:`testbed.policies.decide` on the stored confidences, and
feeds back exactly what a live run would: the confidences of the tiers the sample
visited. So a replay and a live run of the same policy on the same samples make the same
decisions (tested), and the report can put them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from agents.protocol import pool_route, should_exit
from testbed import policies
from testbed.core.config import PolicySpec
from testbed.core.errors import BundleError
from testbed.formats.bundle import Bundle
from testbed.policies import NEVER


@dataclass(frozen=True)
class Route:
    """Where one sample went: its exit tier and layer, its answer there, the layers each tier ran, what it saw."""

    tier: str
    layer: int
    prediction: int
    confidence: float
    layers: dict[str, int]
    seen: dict[str, float]  # what a live run feeds the policy back: per tier, and per layer where a chain ran


def _tier_route(table: dict[str, np.ndarray], r: int, th: dict[str, float], conf: np.ndarray,
                tiers: tuple[str, ...], run: dict[str, int], boundary: dict[str, int]) -> Route:
    """The agents' rule with tier graphs: the first tier confident enough at its boundary exits.

    ``run``: the layers each tier's graph runs; ``boundary``: the layer each tier ends at.
    """
    t = int(policies.decide(th, conf[r:r + 1], tiers)[0])
    return Route(tiers[t], boundary[tiers[t]], int(table[f"prediction_{tiers[t]}"][r]),
                 float(conf[r, t]), {tiers[j]: run[tiers[j]] for j in range(t + 1)},
                 {tiers[j]: float(conf[r, j]) for j in range(t + 1)})


def _pool_route(table: dict[str, np.ndarray], r: int, pools: list[list[Any]], probs: np.ndarray, conf: np.ndarray,
                tiers: tuple[str, ...], run: dict[str, int], boundary: dict[str, int]) -> Route:
    """The agents' rule with a pool router (:func:`agents.protocol.pool_route`) on the stored pool probabilities.

    ``probs``: per sample, the router's probability of each pool, easiest first (``pool_<name>`` columns).
    """
    chosen = pool_route(probs[r].tolist(), pools)
    t = tiers.index(chosen) if chosen else len(tiers) - 1
    return Route(tiers[t], boundary[tiers[t]], int(table[f"prediction_{tiers[t]}"][r]),
                 float(conf[r, t]), {tiers[j]: run[tiers[j]] for j in range(t + 1)},
                 {tiers[j]: float(conf[r, j]) for j in range(t + 1)})


def _layer_route(table: dict[str, np.ndarray], r: int, th: dict[str, float], split: int,
                 ranges: dict[str, tuple[int, int]], depth: int) -> Route:
    """The agents' rule with chains of layer graphs (:func:`agents.agent.run_chain`), on the stored layer exits."""
    tiers = list(ranges)
    prev, layers, seen = 0, {}, {}
    for i, tier in enumerate(tiers):
        first, end = ranges[tier]
        start = prev + 1 if prev else first
        stop = split if start <= split <= end else end
        for k in range(start, stop + 1):
            c = float(table[f"confidence_L{k}"][r])
            seen[f"L{k}"] = seen[tier] = c
            layers[tier] = k - start + 1
            if k == depth or (k == end and i == len(tiers) - 1) or should_exit(th.get(f"L{k}", NEVER), c):
                return Route(tier, k, int(table[f"prediction_L{k}"][r]), c, layers, seen)
        prev = stop
    raise ValueError(f"layer ranges {ranges} end before the model's last layer {depth}")


def replay(bundle: Bundle, specs: list[PolicySpec], split: str = "test", count: int | None = None,
           seed: int = 0, warmup: int = 0) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Route the samples of ``split`` with each policy on the stored exit table, in a live run's order.

    The order is the controller's: ``warmup`` samples (the first ones again), then the first
    ``count`` (all when None); learning policies learn from the warmups as they do live.
    Returns rows (policy, phase, sample_id, exit_tier, exit_layer, prediction, label, correct,
    confidence, policy_choice, layers_<tier>) and each policy's record.
    """
    table = bundle.exits(split)
    if count is not None:
        table = table.iloc[:count]
    ctx = policies.context_for(bundle, split, seed, {s.name for s in specs})
    tiers = bundle.tiers
    plan = [("warmup", i % len(table)) for i in range(warmup)] + [("measure", i) for i in range(len(table))]
    cols = {c: table[c].to_numpy() for c in table.columns}
    pool_probs = table[[c for c in table.columns if c.startswith("pool_")]].to_numpy(np.float64)
    run, boundary = bundle.layers_run, {t.tier: t.layers[-1] for t in bundle.spec.tiers}
    rows, records = [], {}
    for i, spec in enumerate(specs):
        policy = policies.make(spec, ctx)
        rng = np.random.default_rng(seed + i)
        conf = _confidences(bundle, table, policy.measure)
        ranges = policy.layer_ranges()
        for phase, r in plan:
            sid = int(cols["sample_id"][r])
            th, pools = policy.thresholds(sid, rng), policy.pools(sid)
            if pools:
                route = _pool_route(cols, r, pools, pool_probs, conf, tiers, run, boundary)
            elif ranges is not None:
                route = _layer_route(cols, r, th, policy.split(sid), ranges, len(bundle.spec.layer_graphs))
            else:
                route = _tier_route(cols, r, th, conf, tiers, run, boundary)
            label = int(cols["label"][r])
            rows.append({"policy": spec.key, "phase": phase, "sample_id": sid, "exit_tier": route.tier,
                         "exit_layer": route.layer, "prediction": route.prediction, "label": label,
                         "correct": route.prediction == label, "confidence": route.confidence,
                         "policy_choice": policy.choice(sid),
                         **{f"layers_{t}": route.layers.get(t) for t in tiers}})
            policy.observe(sid, route.seen)
        records[spec.key] = policies.record(policy)
    return pd.DataFrame(rows), records


def _confidences(bundle: Bundle, table: pd.DataFrame, measure: str) -> np.ndarray:
    """Per sample and tier, the confidence the policy's measure gives at each tier's exit."""
    cols = [f"confidence_{t}" for t in bundle.tiers]
    if measure == "entropy":
        cols = [f"confidence_entropy_{t}" for t in bundle.tiers]
        if not set(cols) <= set(table.columns):
            raise BundleError(f"bundle {bundle.root}: exits.parquet has no entropy confidences (built by an older "
                              "testbed); rebuild it to replay a policy with measure: entropy")
    return table[cols].to_numpy(np.float64)
