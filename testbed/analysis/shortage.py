"""Resource shortage in a run: each policy's figures between the link and CPU schedule steps, and its plans. Pure.

A schedule step (a link reshaped, a CPU capped) splits each policy's measured samples into
segments by issue time. Per segment the table gives what the policy chose and its accuracy,
latency, energy and offload bytes, each with a 95% interval: accuracy Wilson's score interval,
the median latency the order-statistic interval of :func:`testbed.analysis.load.percentile_interval`,
means Student's t. With ``run.schedule_clock: policy`` every policy met the same steps, so an
adaptive policy's segments sit beside those of one that does not adapt.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats as sps

from testbed.analysis.load import percentile_interval
from testbed.formats.schema import for_tiers


def _label(rec: dict[str, Any]) -> str:
    if "hop" in rec:
        shown = ", ".join(f"{k} {v:g}" for k, v in rec["profile"].items() if v)
        return f"link {rec['hop']}: {shown or 'unshaped'}"
    return f"cpu {rec['device']}: " + ("lifted" if not rec["value"] else f"{rec['kind']} {rec['value']:g}")


def steps(manifest: Any) -> list[dict[str, Any]]:
    """Every schedule step applied (links and CPU; each back-to-configured reset left out), in time order.

    Each: ``unix_ns`` (when the controller applied it), ``policy`` (None unless the schedules
    restart per policy) and ``label``. CPU steps that capped several devices at once are one step.
    """
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in (manifest.shaping or {}).get("schedule_applied") or []:
        if rec.get("step", 0) >= 0:
            out[("link", rec["hop"], rec["step"], rec.get("policy"))] = {
                "unix_ns": rec["unix_ns"], "policy": rec.get("policy"), "label": _label(rec)}
    for rec in (manifest.cpu or {}).get("applied") or []:
        if rec.get("step", 0) >= 0:
            key = ("cpu", rec["step"], rec.get("policy"))
            step = out.setdefault(key, {"unix_ns": rec["unix_ns"], "policy": rec.get("policy"), "devices": [],
                                        "what": _label(rec).split(": ", 1)[1]})
            step["devices"].append(rec["device"])
            step["label"] = f"cpu {', '.join(step['devices'])}: {step['what']}"
    return sorted(out.values(), key=lambda s: s["unix_ns"])


def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(method="wilson")
    return float(ci.low), float(ci.high)


def _mean_ci(x: np.ndarray) -> tuple[float, float, float]:
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2 or float(x.std()) == 0.0:
        return m, m, m
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=m, scale=sps.sem(x))
    return m, float(lo), float(hi)


def _segment(g: pd.DataFrame, offload_cols: list[str], seconds: float, probes: int) -> dict[str, Any]:
    n = len(g)
    k = int(g["correct"].sum())
    lo, hi = _wilson(k, n)
    p50, p_lo, p_hi = percentile_interval(g["latency_ms"].to_numpy(float), 0.5)
    e = _mean_ci(g["energy_j"].to_numpy(float) * 1e3) if "energy_j" in g else (math.nan,) * 3
    b = _mean_ci(g[offload_cols].sum(axis=1).to_numpy(float)) if offload_cols else (math.nan,) * 3
    choices = g["policy_choice"].dropna()
    mean = _mean_ci(g["latency_ms"].to_numpy(float))
    return {"n": n, "probes": probes, "per_s": n / seconds if seconds > 0 else math.nan,
            "choice": ", ".join(choices.value_counts().index[:2]) if len(choices) else "-",
            "accuracy": k / n, "accuracy_lo": lo, "accuracy_hi": hi,
            "latency_ms_p50": p50, "latency_ms_p50_lo": p_lo, "latency_ms_p50_hi": p_hi,
            "latency_ms_mean": mean[0], "latency_ms_mean_lo": mean[1], "latency_ms_mean_hi": mean[2],
            "energy_mj_mean": e[0], "energy_mj_lo": e[1], "energy_mj_hi": e[2],
            "offload_bytes_mean": b[0], "offload_bytes_lo": b[1], "offload_bytes_hi": b[2]}


def segment_table(df: pd.DataFrame, manifest: Any) -> pd.DataFrame | None:
    """Per policy and segment between schedule steps: choice, accuracy, latency, energy, bytes (95% intervals).

    ``per_s``: measured samples per second of the segment's wall time, which includes the
    ``probes`` an adaptive policy issued in it (phase probe, left out of the figures). None when
    the run applied no schedule step.
    """
    applied = steps(manifest)
    if not applied:
        return None
    offload = [f"bytes_{h}" for h in for_tiers(tuple(manifest.tiers)).wire_hops]
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        t = g["t_issue_unix_ns"]
        probe_t = df.loc[(df["phase"] == "probe") & (df["policy"] == policy), "t_issue_unix_ns"]
        own = [s for s in applied if s["policy"] in (None, policy) and t.min() < s["unix_ns"] <= t.max()]
        bounds = [int(t.min())] + [s["unix_ns"] for s in own] + [int(t.max()) + 1]
        labels = ["start"] + [s["label"] for s in own]
        for i, label in enumerate(labels):
            seg = g[(t >= bounds[i]) & (t < bounds[i + 1])]
            probes = int(((probe_t >= bounds[i]) & (probe_t < bounds[i + 1])).sum())
            if len(seg):
                rows.append({"policy": policy, "segment": i, "from": label,
                             "from_s": (bounds[i] - bounds[0]) / 1e9,
                             **_segment(seg, offload, (bounds[i + 1] - bounds[i]) / 1e9, probes)})
    return pd.DataFrame(rows) if rows else None


def plans_table(manifest: Any) -> pd.DataFrame | None:
    """Every plan of the policies that plan from measured resources: when, why, what, and whether it switched."""
    rows = []
    for policy, rec in manifest.policies.items():
        for k, plan in enumerate(rec.get("plans") or []):
            chosen = plan["chosen"]
            rows.append({"policy": policy, "plan": k, "at_s": plan.get("at_s"), "trigger": plan.get("trigger", ""),
                         "chosen": f"{chosen['variant']}@{chosen['tier']}",
                         "predicted_ms": chosen["latency_ms"], "val_accuracy": chosen["val_accuracy"],
                         "switched": bool(plan.get("switched"))})
    return pd.DataFrame(rows) if rows else None
