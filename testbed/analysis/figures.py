"""The report page's figures: matplotlib, headless, a PNG and the CSV of its numbers for each.

Colours are the Okabe-Ito palette, and every series also has its own marker (bars their own
hatch), so figures read in black and white. A figure function returns None when the run has no
data for it; the page then says why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.analysis.verdict import Interval

#: Okabe and Ito's colour-blind-safe palette, and a marker per series
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: measured trade-offs: (column of the paper-vs-measured table, axis label, file stem)
MEASURED = (("latency_ms_mean", "mean latency (ms)", "tradeoff_latency"),
            ("energy_j_per_sample", "energy per sample (J)", "tradeoff_energy"),
            ("offload_bytes_per_sample", "offload bytes per sample", "tradeoff_bytes"))


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower cost and higher accuracy, by cost."""
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _save(fig: Any, out: Path, stem: str) -> Path:
    """Lay the figure out, write ``out/<stem>.png`` and free it."""
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path)
    _plt().close(fig)
    return path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(i: int) -> tuple[str, str]:
    """Series i's colour and marker; past eight series the markers shift, so no two series look alike."""
    return PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]


def tradeoff(paper: pd.DataFrame, xcol: str, xlabel: str, out: Path, stem: str,
             errors: dict[str, tuple[tuple[float, float], tuple[float, float]]] | None = None,
             baseline: str = "all-cloud") -> Path:
    """Accuracy against a cost per policy, the baseline marked, the Pareto front drawn; PNG and CSV.

    A policy labelled ``<run>:<policy>`` (several runs) is the baseline when its policy part is.
    """
    plt = _plt()
    data = paper[["policy", xcol, "accuracy"]].dropna()
    data.to_csv(out / f"{stem}.csv", index=False)
    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=100)
    for i, r in enumerate(data.itertuples(index=False)):
        policy, x, y = r[0], float(r[1]), float(r[2])
        err = (errors or {}).get(policy)
        xerr = None if err is None else [[x - err[0][0]], [err[0][1] - x]]
        yerr = None if err is None else [[y - err[1][0]], [err[1][1] - y]]
        is_base = str(policy).split(":")[-1] == baseline
        color, marker = _style(i)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, markersize=9 if is_base else 6, capsize=3,
                    label=f"{policy} (baseline)" if is_base else policy,
                    markeredgecolor="black" if is_base else None, markeredgewidth=1.5 if is_base else None)
    front = _pareto([(float(a), float(b)) for a, b in zip(data[xcol], data["accuracy"], strict=True)])
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), linestyle="--", color="grey", linewidth=1, label="Pareto front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, stem)


def latency_cdf(df: pd.DataFrame, out: Path) -> Path | None:
    """Latency CDFs of the measured samples: per policy (left) and per exit tier, all policies (right); PNG, CSV.

    The CSV holds each curve's quantiles every 1% (``policy:<name>``, ``tier:<name>`` columns).
    """
    m = df[df["phase"] == "measure"]
    if m.empty or m["latency_ms"].isna().all():
        return None
    plt = _plt()
    qs = np.linspace(0, 1, 101)
    table = {"quantile": qs}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100, sharex=True)
    for ax, key, title in ((axes[0], "policy", "per policy"), (axes[1], "exit_tier", "per exit tier")):
        for i, (name, g) in enumerate(m.groupby(key, sort=False)):
            lat = np.sort(g["latency_ms"].dropna().to_numpy())
            if not len(lat):
                continue
            table[f"{'policy' if key == 'policy' else 'tier'}:{name}"] = np.quantile(lat, qs)
            color, marker = _style(i)
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), color=color, marker=marker,
                    markevery=max(1, len(lat) // 8), markersize=4, label=f"{name} ({len(lat)})")
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    axes[0].set_ylabel("share of samples at or below")
    pd.DataFrame(table).to_csv(out / "latency_cdf.csv", index=False)
    return _save(fig, out, "latency_cdf")


def exit_layers(df: pd.DataFrame, out: Path) -> Path | None:
    """Share of measured samples per exit layer, per policy (only when some policy exits inside a tier)."""
    m = df[df["phase"] == "measure"]
    if m.empty or "exit_layer" not in m:
        return None
    shares = pd.crosstab(m["policy"], m["exit_layer"], normalize="index")
    tier_layers = set(m.groupby("exit_tier")["exit_layer"].max())
    if set(shares.columns) <= tier_layers:  # every exit at a tier's last layer: the tier shares say it all
        return None
    shares = shares.reindex(m["policy"].unique())
    shares.columns = [f"L{c}" for c in shares.columns]
    return stacked(shares.reset_index(), list(shares.columns), "share of measured samples, by exit layer", out,
                   "exit_layers", xlim=(0.0, 1.0))


def bytes_kinds(table: pd.DataFrame | None, out: Path) -> Path | None:
    """Median bytes per sample on each device hop: the tensors, the whole message, and on the wire; PNG and CSV."""
    if table is None or table.empty:
        return None
    plt = _plt()
    table.to_csv(out / "bytes_per_hop.csv", index=False)
    kinds = [("payload_bytes_p50", "tensors"), ("msg_bytes_p50", "message"), ("wire_bytes_p50", "wire")]
    kinds = [(c, label) for c, label in kinds if table[c].notna().any()]
    labels = [f"{r.policy}: {r.hop}" for r in table.itertuples(index=False)]
    y = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(8.5, 0.8 + 0.45 * len(table)), dpi=100)
    h = 0.8 / len(kinds)
    for i, (col, label) in enumerate(kinds):
        ax.barh(y + i * h, table[col].fillna(0).to_numpy(float), height=h, color=PALETTE[i],
                hatch=("", "//", "..")[i], edgecolor="black", linewidth=0.5, label=label)
    ax.set_yticks(y + h * (len(kinds) - 1) / 2, labels)
    ax.invert_yaxis()
    ax.set_xlabel("median bytes per sample crossing the hop")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, "bytes_per_hop")


def exit_shares(paper: pd.DataFrame, tiers: list[str], out: Path) -> Path | None:
    """Where samples exit: the share per tier of each policy, stacked (:func:`stacked`)."""
    cols = [f"share_{t}" for t in tiers if f"share_{t}" in paper]
    return stacked(paper, cols, "share of measured samples", out, "exit_shares", xlim=(0.0, 1.0))


def stacked(table: pd.DataFrame | None, cols: list[str], xlabel: str, out: Path, stem: str,
            xlim: tuple[float, float] | None = None) -> Path | None:
    """One horizontal stacked bar per policy over ``cols`` (hatched, for black and white); PNG and CSV."""
    if table is None or table.empty or not cols or table[cols].isna().all().all():
        return None
    plt = _plt()
    table[["policy", *cols]].to_csv(out / f"{stem}.csv", index=False)
    fig, ax = plt.subplots(figsize=(8.5, 0.6 + 0.4 * len(table)), dpi=100)
    left = np.zeros(len(table))
    for i, c in enumerate(cols):
        vals = table[c].fillna(0).to_numpy(float)
        ax.barh(table["policy"], vals, left=left, color=PALETTE[i % len(PALETTE)], hatch=("", "//", "..", "xx")[i % 4],
                edgecolor="black", linewidth=0.5, label=c)
        left += vals
    ax.set_xlabel(xlabel)
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out, stem)


def choices(df: pd.DataFrame, out: Path) -> list[Path]:
    """For each policy that chooses per sample (``policy_choice``: a SplitEE arm), its choice over the run."""
    plt = _plt()
    paths = []
    for policy, g in df[df["policy_choice"].notna()].groupby("policy", sort=False):
        g = g.sort_values("seq")
        arms = sorted(g["policy_choice"].unique(), key=lambda a: (len(str(a)), str(a)))
        pos = {a: i for i, a in enumerate(arms)}
        stem = f"choices_{policy}"
        g[["seq", "phase", "policy_choice"]].to_csv(out / f"{stem}.csv", index=False)
        fig, ax = plt.subplots(figsize=(7, 2.5), dpi=100)
        ax.scatter(np.arange(len(g)), [pos[a] for a in g["policy_choice"]], s=4, color=PALETTE[0], marker="o")
        ax.set_yticks(range(len(arms)), [str(a) for a in arms])
        ax.set_xlabel(f"sample, in issue order ({policy})")
        ax.set_ylabel("choice")
        paths.append(_save(fig, out, stem))
    return paths


def paper_errors(paper: pd.DataFrame, papers: pd.DataFrame | None,
                 baseline: str) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Per judged policy, its 95% interval as (cost range, accuracy range) in the experiment's paper units.

    From the verdicts' paired intervals: the drop (pt) below the baseline's accuracy and the
    reduction of the experiment preset's cost (its ``cost_reduction_<preset>`` column).
    """
    if papers is None or papers.empty or baseline not in set(paper["policy"]):
        return {}
    base = paper.set_index("policy").loc[baseline]
    col = next((c for c in papers.columns if c.startswith("cost_reduction_")), None)
    out: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    for r in papers.itertuples(index=False):
        red, drop = (getattr(r, col) if col else None), r.drop_pt
        if not isinstance(red, Interval) or not isinstance(drop, Interval) or red.low is None or drop.low is None:
            continue
        cost = (base["cost_paper"] * (1 - red.high), base["cost_paper"] * (1 - red.low))
        acc = (base["accuracy"] - drop.high / 100, base["accuracy"] - drop.low / 100)
        out[str(r.policy)] = (cost, acc)
    return out


def load_over_time(df: pd.DataFrame, scenario: str, out: Path) -> Path | None:
    """Open-loop runs (server, offline): latency from the scheduled time against when each sample was scheduled.

    A system that keeps up shows a flat band; one that falls behind its arrival rate, a rising one.
    """
    m = df[df["phase"] == "measure"]
    if scenario not in ("server", "offline") or m.empty or "latency_scheduled_ms" not in m:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4), dpi=100)
    rows = []
    for i, (policy, g) in enumerate(m.groupby("policy", sort=False)):
        t = (g["t_scheduled_unix_ns"] - g["t_scheduled_unix_ns"].min()) / 1e9
        color, marker = _style(i)
        ax.scatter(t, g["latency_scheduled_ms"], s=6, color=color, marker=marker, label=str(policy))
        rows.append(pd.DataFrame({"policy": policy, "scheduled_s": t,
                                  "latency_scheduled_ms": g["latency_scheduled_ms"]}))
    pd.concat(rows).to_csv(out / "load_over_time.csv", index=False)
    ax.set_xlabel(f"scheduled time in the policy's phase (s), {scenario} scenario")
    ax.set_ylabel("latency from the scheduled time (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, out, "load_over_time")


def shortage_timeline(df: pd.DataFrame, steps: list[dict[str, Any]], out: Path) -> Path | None:
    """Per policy, each measured sample's latency over the policy's time, by choice, with the schedule steps drawn.

    ``steps``: :func:`testbed.analysis.shortage.steps`. None when the run applied no step.
    """
    m = df[df["phase"] == "measure"]
    if not steps or m.empty:
        return None
    plt = _plt()
    policies = list(dict.fromkeys(m["policy"]))
    fig, axes = plt.subplots(len(policies), 1, figsize=(7, 2.2 * len(policies)), dpi=100, sharex=True,
                             squeeze=False)
    points = []
    choices_all = list(dict.fromkeys(m["policy_choice"].fillna("-")))
    for ax, policy in zip(axes[:, 0], policies, strict=True):
        g = m[m["policy"] == policy]
        t0 = int(g["t_issue_unix_ns"].min())
        t = (g["t_issue_unix_ns"] - t0) / 1e9
        for choice in dict.fromkeys(g["policy_choice"].fillna("-")):
            sel = g["policy_choice"].fillna("-") == choice
            colour, marker = _style(choices_all.index(choice))
            ax.scatter(t[sel], g.loc[sel, "latency_ms"], s=5, color=colour, marker=marker, label=str(choice))
        for s in steps:
            if s["policy"] in (None, policy) and t0 <= s["unix_ns"] <= int(g["t_issue_unix_ns"].max()):
                ax.axvline((s["unix_ns"] - t0) / 1e9, color="0.3", linestyle=":", linewidth=1)
                ax.text((s["unix_ns"] - t0) / 1e9, 1.0, s["label"], transform=ax.get_xaxis_transform(), fontsize=6,
                        rotation=90, va="top", ha="right", color="0.3")
        ax.set_yscale("log")
        ax.set_ylabel(f"{policy}\nlatency (ms)")
        ax.legend(fontsize=7, loc="upper left", markerscale=2)
        points.append(pd.DataFrame({"policy": policy, "t_s": t, "latency_ms": g["latency_ms"],
                                    "policy_choice": g["policy_choice"]}))
    axes[-1, 0].set_xlabel("seconds from the policy's first measured sample (dotted: schedule steps)")
    pd.concat(points).to_csv(out / "shortage_timeline.csv", index=False)
    return _save(fig, out, "shortage_timeline")
