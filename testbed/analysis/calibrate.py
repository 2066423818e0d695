"""Fit the cost model to a run's measurements (``testbed calibrate``): pure, rows in, presets out.

Two latency models are fitted, and each predicts the statistic it was fitted on:

- ``calibrated-ms`` (means): lambda per tier is the mean onnxruntime time per layer that tier
  ran, o per hop the mean network time of an offload, ``base_ms`` the mean of what the model
  leaves out (controller hops, queueing, decode: latency minus compute minus offload hops).
  It predicts each policy's **mean** latency: the mean over its samples of their route costs.
- ``calibrated-ms-p50`` (medians): the same with medians; it predicts each policy's **median**
  latency as the median over its samples of their predicted latencies.

Energy (``calibrated-j``) is the mean metered energy per layer; meters see devices, not
links, so it charges links nothing and says so. o per hop also gets a time per byte, by least
squares over the run's offloads. The re-prediction error of both statistics is reported per
policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from testbed.core.costmodel import CostModel, offload_links
from testbed.core.hops import Hop


def _hop_col(link: str) -> str:
    return Hop.parse(link).column


def _stat(values: pd.Series, how: str) -> float:
    return float(values.mean() if how == "mean" else values.median()) if len(values) else 0.0


def _latency_model(m: pd.DataFrame, layers: dict[str, int], how: str) -> tuple[dict[str, float], dict[str, float],
                                                                                float]:
    """Lambda per tier, o per hop and the base outside the model, as means or as medians."""
    tiers = list(layers)
    hops = offload_links(tiers)
    lam = {t: _stat(m[f"compute_ms_{t}"].dropna(), how) / layers[t] for t in tiers}
    o = {}
    for hop in hops:
        col = _hop_col(hop)
        net = m[f"net_ms_{col}"]
        o[hop] = _stat(net[net.notna() & (m[f"bytes_{col}"] > 0)], how)
    modelled = sum(m[f"compute_ms_{t}"].fillna(0) for t in tiers) + sum(
        m[f"net_ms_{_hop_col(h)}"].fillna(0) for h in hops)
    return lam, o, _stat(m["latency_ms"] - modelled, how)


def _per_byte(m: pd.DataFrame, hops: list[str], o_p50: dict[str, float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for hop in hops:
        col = _hop_col(hop)
        net = m[f"net_ms_{col}"]
        used = net.notna() & (m[f"bytes_{col}"] > 0)
        x, y = m.loc[used, f"bytes_{col}"].to_numpy(float), net[used].to_numpy(float)
        if len(y) >= 3 and np.ptp(x) > 0:
            b, a = np.polyfit(x, y, 1)
            out[hop] = {"ms_per_byte": float(b), "ms_fixed": float(a), "samples": int(len(y))}
        else:
            out[hop] = {"ms_per_byte": None, "ms_fixed": o_p50[hop], "samples": int(len(y)),
                        "note": "one payload size only: no per-byte slope"}
    return out


def fit(df: pd.DataFrame, layers: dict[str, int]) -> dict[str, Any]:
    """Calibrated presets (``calibrated-ms``, ``calibrated-ms-p50``, ``calibrated-j``) and the fit's details.

    ``layers``: the run's tiers in order, each with the layers a full pass runs there.
    """
    m = df[df["phase"] == "measure"]
    tiers = list(layers)
    lam_mean, o_mean, base_mean = _latency_model(m, layers, "mean")
    lam_p50, o_p50, base_p50 = _latency_model(m, layers, "median")
    lam_j: dict[str, float] = {}
    for t in tiers:
        ej = m[f"energy_j_{t}"].dropna() if f"energy_j_{t}" in m else pd.Series(dtype=float)
        lam_j[t] = float(ej.mean() / layers[t]) if len(ej) else 0.0
    return {
        "presets": {
            "calibrated-ms": CostModel("calibrated-ms", lam_mean, o_mean, unit="ms",
                                       source="testbed calibrate: mean compute per layer, mean net per offload; "
                                              "predicts mean latency", extra={"base_ms": base_mean}),
            "calibrated-ms-p50": CostModel("calibrated-ms-p50", lam_p50, o_p50, unit="ms",
                                           source="testbed calibrate: median compute per layer, median net per "
                                                  "offload; predicts median latency", extra={"base_ms": base_p50}),
            "calibrated-j": CostModel("calibrated-j", lam_j, {h: 0.0 for h in offload_links(tiers)}, unit="J",
                                      source="testbed calibrate: mean metered energy per layer",
                                      notes="links charged nothing: meters see devices, not links"),
        },
        "per_byte": _per_byte(m, offload_links(tiers), o_p50),
        "base_ms": base_mean,
        "base_ms_p50": base_p50,
    }


def _error(pred: float, meas: float) -> float:
    return pred / meas - 1 if meas and not np.isnan(meas) else float("nan")


def repredict(df: pd.DataFrame, layers: dict[str, int], fitted: dict[str, Any]) -> pd.DataFrame:
    """Per policy: mean and median latency and mean energy predicted from its routes vs measured, with errors."""
    m = df[df["phase"] == "measure"]
    presets = fitted["presets"]
    mean_ms, p50_ms, j = presets["calibrated-ms"], presets["calibrated-ms-p50"], presets["calibrated-j"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        pred_mean = float(mean_ms.costs_of(g, layers).mean() + mean_ms.extra["base_ms"])
        pred_p50 = float(np.median(p50_ms.costs_of(g, layers) + p50_ms.extra["base_ms"]))
        meas_mean, meas_p50 = float(g["latency_ms"].mean()), float(g["latency_ms"].median())
        pred_j = float(j.costs_of(g, layers).mean())
        meas_j = float(g["energy_j"].mean()) if "energy_j" in g and g["energy_j"].notna().any() else float("nan")
        rows.append({"policy": policy, "samples": len(g),
                     "latency_ms_mean_predicted": pred_mean, "latency_ms_mean_measured": meas_mean,
                     "latency_mean_error": _error(pred_mean, meas_mean),
                     "latency_ms_p50_predicted": pred_p50, "latency_ms_p50_measured": meas_p50,
                     "latency_p50_error": _error(pred_p50, meas_p50),
                     "energy_j_predicted": pred_j, "energy_j_measured": meas_j, "energy_error": _error(pred_j, meas_j)})
    return pd.DataFrame(rows)
