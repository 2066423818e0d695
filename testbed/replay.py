"""Policies against the bundle's stored exit table, without devices (``testbed replay``); policy context and records.

Replay walks the samples of a split in order, asks the policy for each sample's
thresholds, routes it with :func:`testbed.policies.decide` on the stored confidences, and
feeds back exactly what a live run would: the confidences of the tiers the sample
visited. So a replay and a live run of the same policy on the same samples make the same
decisions (tested), and the report can put them side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agents.protocol import TIERS
from testbed import costmodel, policies
from testbed.bundle import Bundle
from testbed.config import CostSpec, PolicySpec
from testbed.policies.context import PolicyContext
from testbed.policies.learned import SplitEEPolicy


def policy_context(bundle: Bundle, split: str, seed: int, names: set[str]) -> PolicyContext:
    """What the named policies need from ``bundle`` (tables are read only when a policy needs them)."""
    need = set().union(*(policies.NEEDS.get(n, set()) for n in names)) if names else set()
    layers = {t.tier: len(t.runs_layers or t.layers) for t in bundle.spec.tiers}
    carto = None
    if "cartography" in need:
        path = bundle.root / "cartography.parquet"
        if not path.is_file():
            from testbed.errors import BundleError

            raise BundleError(f"bundle {bundle.root}: the cartography policy needs cartography.parquet (training "
                              "dynamics); rebuild the bundle with this testbed's `testbed partition`")
        carto = pd.read_parquet(path)
    return PolicyContext(
        seed=seed, layers=layers, exit_layers={t.tier: t.exit.layer for t in bundle.spec.tiers},
        exits=bundle.exits(split) if "exits" in need else None,
        val_exits=bundle.exits("val") if "val_exits" in need else None,
        cartography=carto,
        resnet_variants=list(bundle.spec.resnet_variants) or None,
    )


def cost_model(spec: CostSpec) -> costmodel.CostModel:
    """The experiment's cost model: its preset (built in, or from a calibrated file) with any values it replaces."""
    if spec.file:
        import yaml

        rec = yaml.safe_load(Path(spec.file).read_text())["presets"][spec.preset]
        base = costmodel.CostModel(rec["name"], rec["lam"], rec["o"], tuple(rec["charge"]), rec.get("unit", ""),
                                   rec.get("source", ""), rec.get("notes", ""), rec.get("extra", {}))
    else:
        base = costmodel.preset(spec.preset)
    return base.with_values(spec.lam, spec.o)


def policy_record(policy: policies.Policy) -> dict[str, Any]:
    """What the manifest keeps of a policy after its run: fitted values, the bandit's state."""
    rec: dict[str, Any] = {"class": type(policy).__name__}
    if getattr(policy, "upper_bound", False):
        rec["upper_bound"] = "uses the labels; not deployable"
    if hasattr(policy, "record"):
        rec |= policy.record
    if isinstance(policy, SplitEEPolicy):
        rec["arms"] = policy.arms
        rec["arm_layers"] = {a: policy.layer[a] for a in policy.arms}
        rec["pulls"] = policy.n.tolist()
        rec["mean_reward"] = [float(s / n) if n else None for s, n in zip(policy.sum, policy.n, strict=True)]
        rec["best_arm"] = policy.best_arm
        rec["params"] = {k: getattr(policy, k) for k in ("alpha", "c", "lam", "o", "side_info")}
    if isinstance(policy, policies.StaticPolicy):
        rec["thresholds"] = policy.thresholds(0, np.random.default_rng(0))
    return rec


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
    ctx = policy_context(bundle, split, seed, {s.name for s in specs})
    conf_max = table[[f"confidence_{t}" for t in TIERS]].to_numpy(np.float64)
    entropy_cols = [f"confidence_entropy_{t}" for t in TIERS]
    plan = [("warmup", i % len(table)) for i in range(warmup)] + [("measure", i) for i in range(len(table))]
    rows, records = [], {}
    for i, spec in enumerate(specs):
        policy = policies.make(spec, ctx)
        rng = np.random.default_rng(seed + i)
        conf = conf_max
        if getattr(policy, "measure", "max") == "entropy":
            if not set(entropy_cols) <= set(table.columns):
                from testbed.errors import BundleError

                raise BundleError(f"bundle {bundle.root}: exits.parquet has no entropy confidences (built by an older "
                                  "testbed); rebuild it to replay a policy with measure: entropy")
            conf = table[entropy_cols].to_numpy(np.float64)
        for phase, r in plan:
            sid = int(table["sample_id"].iat[r])
            th = policy.thresholds(sid, rng)
            t = int(policies.decide(th, conf[r:r + 1])[0])
            tier = TIERS[t]
            visited = {TIERS[j]: float(conf[r, j]) for j in range(t + 1)}
            pred = int(table[f"prediction_{tier}"].iat[r])
            rows.append({"policy": spec.key, "phase": phase, "sample_id": sid, "exit_tier": tier, "prediction": pred,
                         "label": int(table["label"].iat[r]), "correct": pred == int(table["label"].iat[r]),
                         "confidence": float(conf[r, t]), "policy_choice": policy.choice(sid)})
            policy.observe(sid, visited)
        records[spec.key] = policy_record(policy)
    return pd.DataFrame(rows), records
