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

import pandas as pd

from testbed.analysis import shortage
from testbed.analysis.figures import (
    MEASURED,
    bytes_kinds,
    choices,
    exit_layers,
    exit_shares,
    latency_cdf,
    load_over_time,
    paper_errors,
    shortage_timeline,
    stacked,
    tradeoff,
)
from testbed.analysis.report import Report
from testbed.analysis.verdict import Interval
from testbed.formats.manifest import RunManifest

CSS = """body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #bbb;padding:.25em .5em;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}.warn{color:#a40}
.missing{color:#666;font-style:italic}.wide{overflow-x:auto}figure{margin:1.5em 0}
figcaption{font-size:90%;color:#444}"""


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
    return f'<div class="wide"><table><tr>{head}</tr>{rows}</table></div>'


def _shortage(rep: Report, out: Path, df: pd.DataFrame, m: RunManifest) -> list[str]:
    """The latency over each policy's time with the steps, the plans and the figures between schedule steps."""
    if rep.shortage is None and rep.plans is None:
        return ['<p class="missing">resource shortage: left out: no link or CPU schedule step was applied</p>']
    for name, table in (("shortage", rep.shortage), ("plans", rep.plans)):
        if table is not None:
            table.to_csv(out / f"{name}.csv", index=False)
    fig = _figure(shortage_timeline(df, shortage.steps(m), out), "each measured sample's latency over its policy's "
                  "time, by choice, with the link and CPU schedule steps", "no measured samples")
    return [fig, "<h2>Plans from measured resources (a switch: the variant or exit tier changed)</h2>",
            _table(rep.plans),
            "<h2>Between schedule steps: choice, accuracy, median latency, energy, offload bytes (95% intervals: "
            "Wilson, order statistics, Student's t)</h2>", _table(rep.shortage)]


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
    links = "".join(f"<li>{html.escape(line)}</li>" for line in rep.links) or (
        f"<li>{html.escape((m.shaping or {}).get('note') or 'no link was shaped: nothing to compare')}</li>")
    return (f"<h1>{html.escape(rep.title)}</h1><table>{dl}</table><h2>Devices</h2><ul>{''.join(devices)}</ul>"
            f"<h2>Links: configured against measured</h2><ul>{links}</ul>"
            + (f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else ""))


def _figure(path: Path | None, caption: str, why_missing: str) -> str:
    if path is None:
        return f'<p class="missing">{html.escape(caption)}: left out: {html.escape(why_missing)}</p>'
    csv = path.with_suffix(".csv")
    link = f' (<a href="{csv.name}">numbers as CSV</a>)' if csv.is_file() else ""
    return (f'<figure><img src="{path.name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}{link}</figcaption></figure>")


def _paper_figures(run_dir: Path, df: pd.DataFrame, m: RunManifest, out: Path) -> list[str]:
    """The cost model against measurement, SplitEE's regret and DIMEC-DC's data map, or why each is left out."""
    from testbed.analysis import paper_figures as pf

    table = pf.prediction_table(df, m, run_dir)
    needs_bundle = df["policy"].str.startswith(("splitee", "cartography")).any()
    bundle = pf.run_bundle(m) if needs_bundle else None
    caption = "mean latency predicted by the cost model against measured, per policy"
    if table is not None:
        caption += (f": preset {table.attrs['preset']} ({table.attrs['unit']}) put on ms by one least-squares factor "
                    f"({table.attrs['factor']:.3g}), and calibrated-ms {table.attrs['calibrated']}")
    return [
        _figure(pf.predicted_vs_measured(table, out), caption, "the run has no cost model record or no measured rows"),
        _figure(pf.splitee_regret(pf.regret_table(df, m, bundle), out),
                "SplitEE: cumulative regret against the best fixed arm in hindsight (every arm's reward per sample "
                "from the bundle's exits table, by the policy's own reward)",
                "no SplitEE policy in the run, or its bundle is not at the path the manifest records"),
        _figure(pf.data_map(df, m, out, bundle), "DIMEC-DC: the training samples' pools on the data map (left) and "
                "the test samples' pool scores with the route each took (right)",
                "no cartography policy in the run, or its bundle (with its router) is not at the recorded path"),
    ]


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
        parts.append(_figure(exit_layers(df, out), "where samples exit, by layer, per policy",
                             "every sample exited at a tier's last layer (the tier shares above)"))
    else:
        parts.append('<p class="missing">trade-off figures: left out: the run has no cost model record</p>')
    parts += _paper_figures(run_dir, df, m, out)
    parts.append(_figure(latency_cdf(df, out), "latency CDF per policy and per exit tier", "no measured latencies"))
    scenario = (m.experiment.resolved.get("run") or {}).get("scenario", "closed")
    parts.append(_figure(load_over_time(df, scenario, out), "open loop: latency from the scheduled time over the run "
                         "(a rising band: the system fell behind its arrival rate)",
                         f"the run is {scenario}: samples were issued when a slot freed"))
    parts.append(_figure(stacked(rep.latency, ["compute_ms", "network_ms", "queue_ms", "other_ms"], "mean latency (ms)",
                                 out, "latency_split"), "mean latency split into compute, network, queueing and "
                         "the rest, per policy", "the run has no per-stage timings"))
    energy_cols = [f"energy_mj_{t}" for t in m.tiers if rep.energy is not None and f"energy_mj_{t}" in rep.energy]
    parts.append(_figure(stacked(rep.energy, energy_cols, "energy per sample (mJ), by tier", out, "energy_per_tier"),
                         "energy per sample on each tier", "no device measured or modelled energy"))
    parts.append(_figure(bytes_kinds(rep.bytes, out), "bytes per sample on each device hop: the tensors, the whole "
                         "message, and on the wire (interface counters, where the hop has its own interface)",
                         "no sample crossed a device hop"))
    picked = choices(df[df["phase"] == "measure"], out)
    parts += [_figure(p, f"{p.stem.removeprefix('choices_')}: the choice per sample over the run", "") for p in picked]
    pngs = power_timelines(run_dir, out, df, m.shaping, m.cpu)
    parts += [_figure(p, f"power timeline of {p.stem.removeprefix('power_')}", "") for p in pngs] or [
        '<p class="missing">power timelines: left out: no device sampled power (counter or model meters)</p>']
    parts += ["<h2>Per policy and exit tier</h2>", _table(rep.summary), "<h2>Paper cost model against measurement</h2>",
              _table(rep.paper), "<h2>Latency: compute, network, queueing</h2>", _table(rep.latency),
              "<h2>Bytes per hop</h2>", _table(rep.bytes),
              "<h2>Load: rate asked and achieved, latency from the scheduled time (95% order-statistic bounds), "
              "queueing per tier</h2>", _table(rep.scenarios), *_shortage(rep, out, df, m), "<h2>Notes</h2><ul>"
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
