"""Policies against the bundle's stored exit table, without devices (``testbed replay``); policy context and records.

Replay walks the samples of a split in order, asks the policy for each sample's
thresholds, routes it with :func:`testbed.policies.decide` on the stored confidences, and
feeds back exactly what a live run would: the confidences of the tiers the sample
visited. So a replay and a live run of the same policy on the same samples make the same
decisions (tested), and the report can put them side by side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from testbed import policies
from testbed.core.config import PolicySpec
from testbed.formats.bundle import Bundle


def replay(bundle: Bundle, specs: list[PolicySpec], split: str = "test", count: int | None = None,
           seed: int = 0, warmup: int = 0) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Route the samples of ``split`` with each policy on the stored exit table, in a live run's order.

    The order is the controller's: ``warmup`` samples (the first ones again), then the first
    ``count`` (all when None); learning policies learn from the warmups as they do live.
    Returns rows (policy, phase, sample_id, exit_tier, prediction, label, correct, confidence,
    policy_choice) and each policy's record.
    """
    table = bundle.exits(split)
    if count is not None:
        table = table.iloc[:count]
    ctx = policies.context_for(bundle, split, seed, {s.name for s in specs})
    tiers = bundle.tiers
    conf_max = table[[f"confidence_{t}" for t in tiers]].to_numpy(np.float64)
    entropy_cols = [f"confidence_entropy_{t}" for t in tiers]
    plan = [("warmup", i % len(table)) for i in range(warmup)] + [("measure", i) for i in range(len(table))]
    rows, records = [], {}
    for i, spec in enumerate(specs):
        policy = policies.make(spec, ctx)
        rng = np.random.default_rng(seed + i)
        conf = conf_max
        if policy.measure == "entropy":
            if not set(entropy_cols) <= set(table.columns):
                from testbed.core.errors import BundleError

                raise BundleError(f"bundle {bundle.root}: exits.parquet has no entropy confidences (built by an older "
                                  "testbed); rebuild it to replay a policy with measure: entropy")
            conf = table[entropy_cols].to_numpy(np.float64)
        sample_ids, labels = table["sample_id"].to_numpy(np.int64), table["label"].to_numpy(np.int64)
        preds = {tier: table[f"prediction_{tier}"].to_numpy(np.int64) for tier in tiers}
        for phase, r in plan:
            sid = int(sample_ids[r])
            th = policy.thresholds(sid, rng)
            t = int(policies.decide(th, conf[r:r + 1], tiers)[0])
            tier = tiers[t]
            visited = {tiers[j]: float(conf[r, j]) for j in range(t + 1)}
            pred = int(preds[tier][r])
            rows.append({"policy": spec.key, "phase": phase, "sample_id": sid, "exit_tier": tier, "prediction": pred,
                         "label": int(labels[r]), "correct": pred == int(labels[r]),
                         "confidence": float(conf[r, t]), "policy_choice": policy.choice(sid)})
            policy.observe(sid, visited)
        records[spec.key] = policies.record(policy)
    return pd.DataFrame(rows), records
