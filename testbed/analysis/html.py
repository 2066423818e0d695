"""``testbed report`` as one HTML page: header, warnings, the paper table, trade-off figures, the numbers as CSV.

The page is static (no JavaScript, no server): figures are PNG files beside ``index.html``, each
with the CSV of the numbers it draws. Colours are the Okabe-Ito palette, and every series also
has its own marker, so figures read in black and white. A figure the run has no data for is
left out with a line that says why, never drawn empty. The page and the text report come from
the same :class:`testbed.analysis.report.Report`.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from testbed.analysis.report import Report
from testbed.analysis.verdict import Interval
from testbed.formats.manifest import RunManifest

#: Okabe and Ito's colour-blind-safe palette, and a marker per series
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: measured trade-offs: (column of the paper-vs-measured table, axis label, file stem)
MEASURED = (("latency_ms_mean", "mean latency (ms)", "tradeoff_latency"),
            ("energy_j_per_sample", "energy per sample (J)", "tradeoff_energy"),
            ("offload_bytes_per_sample", "offload bytes per sample", "tradeoff_bytes"))

CSS = """body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #bbb;padding:.25em .5em;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}.warn{color:#a40}
.missing{color:#666;font-style:italic}figure{margin:1.5em 0}figcaption{font-size:90%;color:#444}"""


def _fmt(v: Any) -> str:
    """A table cell: intervals as 'point [low, high]', fractions of 1 as percentages where named so."""
    if isinstance(v, Interval):
        return "-" if v.point is None or (isinstance(v.point, float) and math.isnan(v.point)) else (
            f"{v.point:.3g} [{v.low:.3g}, {v.high:.3g}]")
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def _table(df: pd.DataFrame | None) -> str:
    if df is None or df.empty:
        return '<p class="missing">no rows</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in df.itertuples(index=False))
    return f"<table><tr>{head}</tr>{rows}</table>"


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
    """The latency CDF of each policy's measured samples; PNG and CSV (quantiles every 1%)."""
    m = df[df["phase"] == "measure"]
    if m.empty or m["latency_ms"].isna().all():
        return None
    plt = _plt()
    qs = np.linspace(0, 1, 101)
    table = {"quantile": qs}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, (policy, g) in enumerate(m.groupby("policy", sort=False)):
        lat = np.sort(g["latency_ms"].dropna().to_numpy())
        table[str(policy)] = np.quantile(lat, qs)
        color, marker = _style(i)
        ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), color=color, marker=marker,
                markevery=max(1, len(lat) // 8), markersize=4, label=str(policy))
    pd.DataFrame(table).to_csv(out / "latency_cdf.csv", index=False)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("share of samples at or below")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out, "latency_cdf")


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


def _header(m: RunManifest, rep: Report) -> str:
    res = m.experiment.resolved
    devices = []
    for d, rec in m.agents.items():
        f = rec.get("facts") or {}
        meter = (f.get("meter") or {}).get("source", "none")
        board = f.get("board_model") or f.get("cpu_model") or "?"
        text = (f"{rec.get('tier')}: {board}, Python {f.get('python')}, onnxruntime {f.get('onnxruntime')} on "
                f"{', '.join(rec.get('providers') or [])}; meter {meter}; links {f.get('security', '?')}")
        devices.append(f"<li><b>{html.escape(d)}</b> ({html.escape(text)})</li>")
    git = m.git or {}
    items = [("experiment", res.get("name")), ("run", m.run_id), ("status", m.status),
             ("started", m.started_at), ("ended", m.ended_at), ("rows", m.rows), ("tiers", " > ".join(m.tiers)),
             ("bundle", m.bundle.name),
             ("git", (git.get("sha") or "?")[:12] + (" (dirty)" if git.get("dirty") else "")),
             ("cost preset", m.cost_model.get("name") if m.cost_model else None),
             ("shaping", (m.shaping or {}).get("backend", "none"))]
    dl = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    warns = [n for n in rep.notes if n.split(":")[0].isupper() or n.startswith(("INCOMPLETE", "run status"))]
    warn = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in [*warns, *rep.advice])
    return (f"<h1>{html.escape(rep.title)}</h1><table>{dl}</table><h2>Devices</h2><ul>{''.join(devices)}</ul>"
            + (f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else ""))


def _figure(path: Path | None, caption: str, why_missing: str) -> str:
    if path is None:
        return f'<p class="missing">{html.escape(caption)}: left out: {html.escape(why_missing)}</p>'
    csv = path.with_suffix(".csv")
    link = f' (<a href="{csv.name}">numbers as CSV</a>)' if csv.is_file() else ""
    return (f'<figure><img src="{path.name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")


def write_page(run_dir: Path, rep: Report, df: pd.DataFrame, m: RunManifest, out: Path) -> Path:
    """Write ``out/index.html`` with its figures and CSVs; returns its path."""
    from testbed.analysis.plots import power_timelines

    out.mkdir(parents=True, exist_ok=True)
    parts = [_header(m, rep), "<h2>Papers' claims</h2>", _table(rep.papers)]
    paper, baseline = rep.paper, f"all-{m.tiers[-1]}"
    if paper is not None and not paper.empty:
        errs = paper_errors(paper, rep.papers, baseline)
        parts.append(_figure(tradeoff(paper, "cost_paper", "cost in the experiment's paper units", out,
                                      "tradeoff_paper", errs, baseline),
                             f"accuracy against cost in paper units ({baseline} marked with a black edge; error "
                             "bars: paired 95% intervals of the judged policies)", ""))
        for col, label, stem in MEASURED:
            usable = paper[col].notna() & (paper[col] > 0) if col in paper else pd.Series(False, index=paper.index)
            parts.append(_figure(tradeoff(paper, col, label, out, stem, baseline=baseline) if usable.any() else None,
                                 f"accuracy against {label} (means; intervals in the paper table)",
                                 f"no policy has a measured {label} in this run"))
        parts.append(_figure(exit_shares(paper, list(m.tiers), out), "where samples exit, per policy", "no shares"))
    else:
        parts.append('<p class="missing">trade-off figures: left out: the run has no cost model record</p>')
    parts.append(_figure(latency_cdf(df, out), "latency CDF per policy", "no measured latencies"))
    parts.append(_figure(stacked(rep.latency, ["compute_ms", "network_ms", "queue_ms", "other_ms"], "mean latency (ms)",
                                 out, "latency_split"), "mean latency split into compute, network, queueing and "
                         "the rest, per policy", "the run has no per-stage timings"))
    energy_cols = [f"energy_mj_{t}" for t in m.tiers if rep.energy is not None and f"energy_mj_{t}" in rep.energy]
    parts.append(_figure(stacked(rep.energy, energy_cols, "energy per sample (mJ), by tier", out, "energy_per_tier"),
                         "energy per sample on each tier", "no device measured or modelled energy"))
    if rep.bytes is not None and not rep.bytes.empty:
        wide = rep.bytes.pivot_table(index="policy", columns="hop", values="msg_bytes_p50", sort=False).reset_index()
        parts.append(_figure(stacked(wide, [c for c in wide.columns if c != "policy"], "median message bytes per "
                                     "sample, by hop", out, "bytes_per_hop"), "bytes per sample on each hop",
                             "no offloads"))
    picked = choices(df[df["phase"] == "measure"], out)
    parts += [_figure(p, f"{p.stem.removeprefix('choices_')}: the choice per sample over the run", "") for p in picked]
    pngs = power_timelines(run_dir, out)
    parts += [_figure(p, f"power timeline of {p.stem.removeprefix('power_')}", "") for p in pngs] or [
        '<p class="missing">power timelines: left out: no device sampled power (counter or model meters)</p>']
    parts += ["<h2>Per policy and exit tier</h2>", _table(rep.summary), "<h2>Paper cost model against measurement</h2>",
              _table(rep.paper), "<h2>Latency: compute, network, queueing</h2>", _table(rep.latency),
              "<h2>Bytes per hop</h2>", _table(rep.bytes), "<h2>Notes</h2><ul>"
              + "".join(f"<li>{html.escape(n)}</li>" for n in rep.notes) + "</ul>"]
    if rep.summary is not None:
        rep.summary.to_csv(out / "summary.csv", index=False)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(rep.title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_comparison(runs: list[tuple[Path, Report, RunManifest]], out: Path) -> Path:
    """``out/index.html``: several runs side by side.

    One trade-off figure with every run's policies, then each run's claims table and
    paper-vs-measured table (labels ``<run>:<policy>``, the run by its id's last part).
    """
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for _, rep, m in runs:
        if rep.paper is not None and not rep.paper.empty:
            t = rep.paper.copy()
            t.insert(0, "run", m.run_id)
            t["policy"] = m.run_id.rsplit("-", 1)[-1] + ":" + t["policy"].astype(str)
            tables.append(t)
    parts = [f"<h1>{len(runs)} runs side by side</h1><ul>" + "".join(
        f"<li>{html.escape(m.run_id)}: {html.escape(str(m.experiment.resolved.get('name')))}, {html.escape(m.status)}"
        f", {m.rows} rows, bundle {html.escape(m.bundle.name)}, cost preset "
        f"{html.escape(str((m.cost_model or {}).get('name')))}</li>" for _, _, m in runs) + "</ul>"]
    if tables:
        both = pd.concat(tables, ignore_index=True)
        parts.append(_figure(tradeoff(both, "cost_paper", "cost in each run's paper units", out, "tradeoff_paper"),
                             "accuracy against cost, every run's policies (<run>:<policy>)", ""))
        usable = both["latency_ms_mean"].notna().any()
        parts.append(_figure(tradeoff(both, "latency_ms_mean", "mean latency (ms)", out, "tradeoff_latency")
                             if usable else None, "accuracy against measured mean latency, every run",
                             "no run measured latency"))
    else:
        parts.append('<p class="missing">trade-off figures: left out: no run has a cost model record</p>')
    for _, rep, m in runs:
        parts += [f"<h2>{html.escape(m.run_id)}</h2>", _table(rep.papers), _table(rep.paper)]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{len(runs)} runs</title>'
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
