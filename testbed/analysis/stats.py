"""Summaries of result rows: per policy and per exit tier, against all samples to the last tier. Pure.

The reference is the policy that runs every sample to the last tier (``all-cloud`` in the
default tiers). The tiers and hops are the frame's own (its per-tier columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from testbed.formats import schema
from testbed.formats.schema import ResultSchema


def reference(tiers: tuple[str, ...]) -> str:
    """The baseline every policy is compared with: all samples to the last tier (``all-cloud``)."""
    return f"all-{tiers[-1]}"


def _schema(df: pd.DataFrame) -> ResultSchema:
    return schema.for_tiers(schema.tiers_in(df.columns))


def _pct(series: pd.Series, q: float) -> float:
    return float(np.percentile(series, q)) if len(series) else float("nan")


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(g[col].mean()) if col in g and g[col].notna().any() else float("nan")


def _group_stats(g: pd.DataFrame, n_policy: int, wire_hops: tuple[str, ...]) -> dict[str, float]:
    hop_bytes = g[[f"bytes_{h}" for h in wire_hops]].sum(axis=1)  # the offloads, tier to tier
    return {
        "samples": len(g),
        "share": len(g) / n_policy if n_policy else float("nan"),
        "accuracy": float(g["correct"].mean()) if len(g) else float("nan"),
        "latency_ms_mean": float(g["latency_ms"].mean()) if len(g) else float("nan"),
        "latency_ms_p50": _pct(g["latency_ms"], 50),
        "latency_ms_p95": _pct(g["latency_ms"], 95),
        "latency_ms_p99": _pct(g["latency_ms"], 99),
        "offload_bytes_per_sample": float(hop_bytes.mean()) if len(g) else float("nan"),
        "energy_j_per_sample": _mean(g, "energy_j"),
        "energy_net_j_per_sample": _mean(g, "energy_net_j"),
    }


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, tier) plus one per policy with tier ``all``; measure phase only.

    Adds ``accuracy_delta_pt`` and ``latency_ratio`` against the :func:`reference` policy of the
    same run when it is present (NaN otherwise).
    """
    cols = _schema(df)
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        rows.append({"policy": policy, "tier": "all", **_group_stats(g, len(g), cols.wire_hops)})
        for tier in cols.tiers:
            t = g[g["exit_tier"] == tier]
            if len(t):
                rows.append({"policy": policy, "tier": tier, **_group_stats(t, len(g), cols.wire_hops)})
    out = pd.DataFrame(rows)
    ref = out[(out["policy"] == reference(cols.tiers)) & (out["tier"] == "all")]
    if len(ref):
        out["accuracy_delta_pt"] = (out["accuracy"] - float(ref["accuracy"].iloc[0])) * 100
        out["latency_ratio"] = out["latency_ms_mean"] / float(ref["latency_ms_mean"].iloc[0])
    else:
        out["accuracy_delta_pt"] = np.nan
        out["latency_ratio"] = np.nan
    return out


def hop_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per policy: median compute per tier and median net time per hop, over the samples that used them."""
    cols = _schema(df)
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        row: dict[str, object] = {"policy": policy}
        for t in cols.tiers:
            row[f"compute_ms_{t}_p50"] = float(g[f"compute_ms_{t}"].median())
        for h in cols.hops:
            row[f"net_ms_{h}_p50"] = float(g[f"net_ms_{h}"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def energy_by_tier(df: pd.DataFrame) -> pd.DataFrame:
    """Per policy: energy per measured sample spent on each tier (mJ), gross and net of idle.

    A tier a sample did not visit adds nothing to it; NaN where no sample has that tier's energy
    (no meter there, or no sample visited it).
    """
    tiers = schema.tiers_in(df.columns)
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        row: dict[str, object] = {"policy": policy, "samples": len(g)}
        for t in tiers:
            for col, name in ((f"energy_j_{t}", f"energy_mj_{t}"), (f"energy_net_j_{t}", f"energy_net_mj_{t}")):
                have = g[col].notna() if col in g else pd.Series(False, index=g.index)
                row[name] = float(g.loc[have, col].sum()) * 1e3 / len(g) if have.any() else float("nan")
            row[f"visited_{t}"] = float(g[f"device_{t}"].notna().mean())
        rows.append(row)
    return pd.DataFrame(rows)


def bytes_by_hop(df: pd.DataFrame) -> pd.DataFrame:
    """Per policy and device-to-device hop the samples crossed: tensor, message and wire bytes.

    Medians, and the wire's overhead over the tensors in total; wire columns are NaN where the
    hop was not counted.
    """
    wire_hops = [c.removeprefix("bytes_wire_") for c in df.columns if c.startswith("bytes_wire_")]
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        for h in wire_hops:
            crossed = g[g[f"bytes_{h}"] > 0]
            if not len(crossed):
                continue
            payload = crossed[f"bytes_{h}"]
            msg = crossed.get(f"bytes_msg_{h}", pd.Series(dtype=float)).dropna()
            wire = crossed.get(f"bytes_wire_{h}", pd.Series(dtype=float)).dropna()
            paired = payload[wire.index]
            rows.append({
                "policy": policy, "hop": h, "samples": len(crossed),
                "payload_bytes_p50": float(payload.median()),
                "msg_bytes_p50": float(msg.median()) if len(msg) else float("nan"),
                "wire_bytes_p50": float(wire.median()) if len(wire) else float("nan"),
                "wire_overhead_pct": float((wire.sum() - paired.sum()) / paired.sum() * 100) if len(wire)
                else float("nan"),
            })
    return pd.DataFrame(rows)


def quality_checks(df: pd.DataFrame) -> list[str]:
    """Advice about the run's numbers, pyperf style; empty when nothing looks wrong."""
    advice = []
    m = df[df["phase"] == "measure"]
    for policy, g in m.groupby("policy", sort=False):
        if len(g) < 30:
            advice.append(f"{policy}: only {len(g)} measured samples; percentiles above p95 are not meaningful")
            continue
        half = len(g) // 2
        a, b = g["latency_ms"].iloc[:half].median(), g["latency_ms"].iloc[half:].median()
        if min(a, b) > 0 and abs(a - b) / min(a, b) > 0.2:
            advice.append(f"{policy}: median latency moved {abs(a - b) / min(a, b):.0%} between the two halves "
                          "of the run (thermal throttling, other load?); raise warmup or rerun")
    return advice


def latency_split(df: pd.DataFrame) -> pd.DataFrame:
    """Per policy: mean latency split into compute, network and queueing, and what is left (ms, measured rows).

    Compute is every visited tier's onnxruntime time, network every hop's net time (issue,
    offloads, return), queueing every tier's arrival-to-start wait; the rest (encoding,
    the controller's own work) is ``other``. A queue that grows with load is contention.
    """
    cols = _schema(df)
    m = df[df["phase"] == "measure"]
    rows = []
    for policy, g in m.groupby("policy", sort=False):
        compute = sum(g[f"compute_ms_{t}"].fillna(0) for t in cols.tiers if f"compute_ms_{t}" in g)
        network = sum(g[f"net_ms_{h}"].fillna(0) for h in cols.hops if f"net_ms_{h}" in g)
        queue = g["queue_ms"] if "queue_ms" in g else pd.Series(0.0, index=g.index)
        rows.append({"policy": policy, "samples": len(g), "latency_ms": float(g["latency_ms"].mean()),
                     "compute_ms": float(np.mean(compute)), "network_ms": float(np.mean(network)),
                     "queue_ms": float(queue.mean()), "queue_ms_p95": _pct(queue, 95),
                     "other_ms": float((g["latency_ms"] - compute - network - queue).mean())})
    return pd.DataFrame(rows)
