"""Fit the cost model to a run's measurements (``testbed calibrate``): pure, rows in, presets out.

lambda per tier is the onnxruntime time (and energy, where a meter gave it) per layer that
tier ran; o per hop is the median network time of an offload and, by least squares over the
run's samples, its time per byte. Energy per offload is not measured on its own (meters see
devices, not links), so the energy preset charges links nothing and says so. ``base_ms`` is
what the model leaves out (controller hops, queueing, decode): the median of latency minus
compute minus offload hops. The fitted model then re-predicts each policy's mean latency and
energy from its routes, and the error against the measurement is reported per policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from testbed.core.costmodel import CostModel, offload_links
from testbed.core.hops import Hop


def _hop_col(link: str) -> str:
    return Hop.parse(link).column


def fit(df: pd.DataFrame, layers: dict[str, int]) -> dict[str, Any]:
    """Calibrated presets (``calibrated-ms``, ``calibrated-j``) and the fit's details from measured rows.

    ``layers``: the run's tiers in order, each with the layers a full pass runs there.
    """
    tiers = list(layers)
    hops = offload_links(tiers)
    m = df[df["phase"] == "measure"]
    lam_ms: dict[str, float] = {}
    lam_j: dict[str, float] = {}
    o_ms: dict[str, float] = {}
    per_byte: dict[str, dict[str, Any]] = {}
    for t in tiers:
        ms = m[f"compute_ms_{t}"].dropna()
        lam_ms[t] = float(ms.median() / layers[t]) if len(ms) else 0.0
        ej = m[f"energy_j_{t}"].dropna() if f"energy_j_{t}" in m else pd.Series(dtype=float)
        lam_j[t] = float(ej.mean() / layers[t]) if len(ej) else 0.0
    for hop in hops:
        col = _hop_col(hop)
        net = m[f"net_ms_{col}"]
        used = net.notna() & (m[f"bytes_{col}"] > 0)
        x, y = m.loc[used, f"bytes_{col}"].to_numpy(float), net[used].to_numpy(float)
        o_ms[hop] = float(np.median(y)) if len(y) else 0.0
        if len(y) >= 3 and np.ptp(x) > 0:
            b, a = np.polyfit(x, y, 1)
            per_byte[hop] = {"ms_per_byte": float(b), "ms_fixed": float(a), "samples": int(len(y))}
        else:
            per_byte[hop] = {"ms_per_byte": None, "ms_fixed": o_ms[hop], "samples": int(len(y)),
                             "note": "one payload size only: no per-byte slope"}
    modelled = sum(m[f"compute_ms_{t}"].fillna(0) for t in tiers) + sum(
        m[f"net_ms_{_hop_col(h)}"].fillna(0) for h in hops)
    base_ms = float((m["latency_ms"] - modelled).median()) if len(m) else 0.0
    return {
        "presets": {
            "calibrated-ms": CostModel("calibrated-ms", lam_ms, o_ms, unit="ms",
                                       source="testbed calibrate: median compute per layer, median net per offload",
                                       extra={"base_ms": base_ms}),
            "calibrated-j": CostModel("calibrated-j", lam_j, {h: 0.0 for h in hops}, unit="J",
                                      source="testbed calibrate: mean metered energy per layer",
                                      notes="links charged nothing: meters see devices, not links"),
        },
        "per_byte": per_byte,
        "base_ms": base_ms,
    }


def repredict(df: pd.DataFrame, layers: dict[str, int], fitted: dict[str, Any]) -> pd.DataFrame:
    """Per policy: mean latency and energy predicted from its routes by the fitted model vs measured."""
    m = df[df["phase"] == "measure"]
    ms, j = fitted["presets"]["calibrated-ms"], fitted["presets"]["calibrated-j"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        tiers = g["exit_tier"].to_numpy()
        pred_ms = float(ms.costs(tiers, layers).mean() + fitted["base_ms"])
        meas_ms = float(g["latency_ms"].mean())
        pred_j = float(j.costs(tiers, layers).mean())
        meas_j = float(g["energy_j"].mean()) if "energy_j" in g and g["energy_j"].notna().any() else float("nan")
        rows.append({"policy": policy, "samples": len(g), "latency_ms_predicted": pred_ms,
                     "latency_ms_measured": meas_ms, "latency_error": pred_ms / meas_ms - 1 if meas_ms else np.nan,
                     "energy_j_predicted": pred_j, "energy_j_measured": meas_j,
                     "energy_error": pred_j / meas_j - 1 if meas_j and not np.isnan(meas_j) else np.nan})
    return pd.DataFrame(rows)
