"""The report page's figures about the papers' methods: cost model, SplitEE's regret, DIMEC-DC's data map.

Each returns None with nothing drawn when the run lacks what it needs (the page then says why).
They read the run's bundle where they need it (the exits table, the
training dynamics), from the path its manifest records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.analysis.figures import PALETTE, _plt, _save, _style
from testbed.formats.manifest import RunManifest


def _scale(pred: np.ndarray, meas: np.ndarray) -> float:
    """Least-squares factor through the origin that puts ``pred`` on ``meas``'s scale."""
    den = float(np.dot(pred, pred))
    return float(np.dot(pred, meas)) / den if den > 0 else float("nan")


def prediction_table(df: pd.DataFrame, m: RunManifest, run_dir: Path | None = None) -> pd.DataFrame | None:
    """Per policy: mean latency predicted by the experiment's preset (scaled to ms) and by a calibrated model.

    The experiment's preset speaks in its own units: it is put on milliseconds by one factor
    fitted over the policies (so only its shape is judged). The calibrated model is
    ``calibrated-ms`` from ``RUN_DIR/cost_presets.yaml`` where ``testbed calibrate`` wrote one,
    else fitted on this run's own rows (in-sample: a lower bound on its error).
    """
    from testbed.analysis import calibrate
    from testbed.core.costmodel import CostModel

    rec = m.cost_model or {}
    layers = rec.get("layers")
    mdf = df[df["phase"] == "measure"]
    if not layers or mdf.empty:
        return None
    preset = CostModel.from_record(rec)
    fitted = calibrate.fit(df, layers)
    source = "fitted on this run (in-sample)"
    saved = run_dir / "cost_presets.yaml" if run_dir is not None else None
    if saved is not None and saved.is_file():
        import yaml

        doc = yaml.safe_load(saved.read_text()) or {}
        if "calibrated-ms" in doc.get("presets", {}):
            cal = CostModel.from_record(doc["presets"]["calibrated-ms"])
            fitted["presets"]["calibrated-ms"] = cal
            source = f"from {saved.name} (fitted on {doc.get('from_run', '?')})"
    after = calibrate.repredict(df, layers, fitted).set_index("policy")["latency_ms_mean_predicted"].to_dict()
    rows = []
    for policy, g in mdf.groupby("policy", sort=False):
        rows.append({"policy": policy, "measured_ms": float(g["latency_ms"].mean()),
                     "preset_units": float(preset.costs_of(g, layers).mean()),
                     "calibrated_ms": float(after[policy])})
    t = pd.DataFrame(rows)
    k = 1.0 if preset.unit == "ms" else _scale(t["preset_units"].to_numpy(), t["measured_ms"].to_numpy())
    t["preset_ms"] = t["preset_units"] * k
    for col, err in (("preset_ms", "preset_error_pct"), ("calibrated_ms", "calibrated_error_pct")):
        t[err] = (t[col] / t["measured_ms"] - 1) * 100
    t.attrs.update(preset=preset.name, unit=preset.unit, factor=k, calibrated=source)
    return t


def predicted_vs_measured(table: pd.DataFrame | None, out: Path) -> Path | None:
    """Predicted against measured mean latency per policy, before and after calibration, with the identity line."""
    if table is None or table.empty:
        return None
    plt = _plt()
    table.to_csv(out / "predicted_vs_measured.csv", index=False)
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=100)
    for col, label, marker, color in (("preset_ms", f"preset {table.attrs.get('preset')} (scaled by "
                                                    f"{table.attrs.get('factor', 1):.3g} ms/unit)", "s", PALETTE[1]),
                                      ("calibrated_ms", "calibrated-ms", "o", PALETTE[0])):
        err = table[col.replace("_ms", "_error_pct")]
        mae = float(err.abs().mean())
        ax.scatter(table["measured_ms"], table[col], marker=marker, color=color, edgecolor="black", linewidth=0.5,
                   label=f"{label}: mean |error| {mae:.1f}%", zorder=3)
    hi = float(np.nanmax(table[["measured_ms", "preset_ms", "calibrated_ms"]].to_numpy())) * 1.05
    ax.plot([0, hi], [0, hi], color="grey", linestyle="--", linewidth=1, label="predicted = measured")
    for r in table.itertuples(index=False):
        ax.annotate(str(r.policy), (r.measured_ms, r.calibrated_ms), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("measured mean latency (ms)")
    ax.set_ylabel("predicted mean latency (ms)")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, out, "predicted_vs_measured")


def run_bundle(m: RunManifest) -> Any:
    """The run's bundle where its manifest's path still holds it, else None (load it once for both figures)."""
    from testbed.formats.bundle import Bundle

    try:
        return Bundle.load(Path(m.bundle.path))
    except Exception:  # noqa: BLE001  (moved, deleted, or another format: the figure says so)
        return None


def _confidences(exits: pd.DataFrame, measure: str) -> list[dict[str, float]]:
    """Each sample's confidence at every tier and layer, as a policy observes it."""
    prefix = "confidence_entropy_" if measure == "entropy" else "confidence_"
    cols = {c.removeprefix(prefix): c for c in exits.columns if c.startswith(prefix) and
            (measure == "entropy" or not c.startswith("confidence_entropy_"))}
    return [dict(zip(cols, vals, strict=True)) for vals in exits[list(cols.values())].to_numpy(float)]


def regret_table(df: pd.DataFrame, m: RunManifest, bundle: Any = None) -> pd.DataFrame | None:
    """Per SplitEE policy and measured sample: the reward it got and the cumulative regret to the best fixed arm.

    Every arm's reward for every sample comes from the bundle's exits table (each sample's
    confidence at every exit), by the policy's own reward; the best fixed arm is the one with
    the highest total over the run, in hindsight.
    """
    from testbed import policies
    from testbed.core.config import PolicySpec

    entries = [PolicySpec(**e) for e in m.experiment.resolved.get("policies", []) if
               str(e.get("name", "")).startswith("splitee")]
    mdf = df[(df["phase"] == "measure") & df["policy_choice"].notna()]
    bundle = (bundle or run_bundle(m)) if entries and not mdf.empty else None
    if bundle is None:
        return None
    split = m.experiment.resolved.get("samples", {}).get("split", "test")
    ctx = policies.context_for(bundle, split, int(m.experiment.resolved.get("seed", 0)), {e.name for e in entries})
    exits = bundle.exits(split).set_index("sample_id")
    frames = []
    for spec in entries:
        g = mdf[mdf["policy"] == spec.key].sort_values("seq")
        if g.empty:
            continue
        pol: Any = policies.make(spec, ctx)  # a SplitEE: its arms, layers and reward
        conf = _confidences(exits.loc[g["sample_id"]], pol.measure)
        arm_of = {f"L{pol.layer[a]}": i for i, a in enumerate(pol.arms)}
        rewards = np.array([[pol.reward(i, c) for i in range(len(pol.arms))] for c in conf])
        got = rewards[np.arange(len(g)), [arm_of[str(a)] for a in g["policy_choice"]]]
        best = int(np.argmax(rewards.sum(0)))
        frames.append(pd.DataFrame({"policy": spec.key, "sample": np.arange(1, len(g) + 1), "seq": g["seq"].to_numpy(),
                                    "arm": g["policy_choice"].to_numpy(), "reward": got,
                                    "best_fixed_arm": f"L{pol.layer[pol.arms[best]]}",
                                    "cumulative_regret": np.cumsum(rewards[:, best] - got)}))
    return pd.concat(frames, ignore_index=True) if frames else None


def splitee_regret(table: pd.DataFrame | None, out: Path) -> Path | None:
    """Cumulative regret against the best fixed arm in hindsight, per SplitEE policy."""
    if table is None or table.empty:
        return None
    plt = _plt()
    table.to_csv(out / "splitee_regret.csv", index=False)
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=100)
    for i, (policy, g) in enumerate(table.groupby("policy", sort=False)):
        color, marker = _style(i)
        ax.plot(g["sample"], g["cumulative_regret"], color=color, marker=marker, markevery=max(1, len(g) // 10),
                markersize=4, label=f"{policy} (best fixed arm {g['best_fixed_arm'].iloc[0]})")
    ax.set_xlabel("measured sample, in issue order")
    ax.set_ylabel("cumulative regret (reward units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, out, "splitee_regret")


def data_map(df: pd.DataFrame, m: RunManifest, out: Path, bundle: Any = None) -> Path | None:
    """DIMEC-DC: training samples on the data map by pool, beside the test samples' pool scores by route."""
    routed = df[(df["phase"] == "measure") & (df["policy"].str.startswith("cartography"))]
    bundle = (bundle or run_bundle(m)) if not routed.empty else None
    router = bundle.spec.router if bundle is not None else None
    if bundle is None or router is None or not (bundle.root / "cartography.parquet").is_file():
        return None
    carto = bundle.cartography()
    layer = router.clustered_on[0]
    train = carto[carto["exit_layer"] == layer].set_index("sample_id")[["confidence", "variability"]]
    wide = pd.concat([carto[carto["exit_layer"] == k].set_index("sample_id")[["confidence", "variability"]]
                      .add_suffix(f"_L{k}") for k in router.clustered_on], axis=1, join="inner")
    cols = [c for k in router.clustered_on for c in (f"confidence_L{k}", f"variability_L{k}")]
    centres = np.array([[router.centroids[p][c] for c in cols] for p in router.pools])
    nearest = np.argmin(((wide[cols].to_numpy()[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    train = train.loc[wide.index].assign(pool=[router.pools[i] for i in nearest])
    split = m.experiment.resolved.get("samples", {}).get("split", "test")
    test = bundle.exits(split).set_index("sample_id").loc[routed["sample_id"]]
    test = test.assign(route=routed["exit_tier"].to_numpy(), policy=routed["policy"].to_numpy())
    train.reset_index().to_csv(out / "data_map_train.csv", index=False)
    test[["policy", "route", *[f"pool_{p}" for p in router.pools]]].reset_index().to_csv(
        out / "data_map.csv", index=False)
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5), dpi=100)
    for i, pool in enumerate(router.pools):
        sub = train[train["pool"] == pool]
        color, marker = _style(i)
        left.scatter(sub["variability"], sub["confidence"], s=4, alpha=0.4, color=color, marker=marker,
                     label=f"{pool} ({len(sub)})")
    left.set_xlabel(f"variability (exit after layer {layer})")
    left.set_ylabel("confidence (mean gold probability)")
    left.set_title("training samples: the pools", fontsize="medium")
    left.legend(fontsize="small", markerscale=3)
    for i, tier in enumerate(m.tiers):
        sub = test[test["route"] == tier]
        if len(sub):
            color, marker = _style(i + 3)
            right.scatter(sub[f"pool_{router.pools[0]}"], sub[f"pool_{router.pools[-1]}"], s=8, color=color,
                          marker=marker, label=f"routed to {tier} ({len(sub)})")
    right.set_xlabel(f"P({router.pools[0]}) from the router")
    right.set_ylabel(f"P({router.pools[-1]})")
    right.set_title("test samples: the router's scores and the route taken", fontsize="medium")
    right.legend(fontsize="small", markerscale=2)
    return _save(fig, out, "data_map")
