"""``testbed report``, ``replay`` and ``calibrate``: reading runs and bundles back, without devices."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, cast

from rich.table import Table

from testbed import policies
from testbed.cli.common import out, print_fitted
from testbed.cli.devices import mark_lost_run
from testbed.core.errors import ConfigError, TestbedError
from testbed.formats.bundle import Bundle


def render_report(run_dir: Path) -> None:
    """Print the tables of a run and draw its power timelines."""
    from testbed.analysis import report
    from testbed.formats import results

    df, complete = results.load_samples(run_dir)
    manifest = results.load_manifest(run_dir)
    rep = report.build(df, manifest, complete)
    _print_per_tier(rep)
    hops = Table(title="medians per hop (ms)")
    for c in rep.hops.columns:
        hops.add_column(c.replace("_p50", "").replace("compute_ms_", "compute ").replace("net_ms_", "net "))
    for _, r in rep.hops.iterrows():
        hops.add_row(*[("-" if math.isnan(v) else f"{v:.3f}") if isinstance(v, float) else str(v) for v in r])
    print_fitted(hops, 1)
    if rep.latency is not None and len(rep.latency):
        _print_latency(rep.latency)
    if rep.scenarios is not None and len(rep.scenarios):
        _print_scenarios(rep.scenarios)
    if rep.plans is not None:
        _print_plans(rep.plans)
    if rep.shortage is not None:
        _print_shortage(rep.shortage)
    if rep.energy is not None:
        en = Table(title="energy per measured sample by tier, mJ (gross / net of idle); a tier a sample did not "
                         "visit adds nothing")
        en.add_column("policy")
        tiers = manifest.tiers
        for t in tiers:
            en.add_column(t, justify="right")
        for _, r in rep.energy.iterrows():
            en.add_row(str(r["policy"]), *[f"{_mj(r[f'energy_mj_{t}'])} / {_mj(r[f'energy_net_mj_{t}'])}"
                                           for t in tiers])
        print_fitted(en, 1)
    if rep.bytes is not None and len(rep.bytes):
        by = Table(title="bytes per offload (medians): tensors, whole message, on the wire (interface counter)")
        for title in ("policy", "hop", "n", "tensor B", "message B", "wire B", "wire over tensors"):
            by.add_column(title, justify="left" if title in ("policy", "hop") else "right")
        for _, r in rep.bytes.iterrows():
            by.add_row(str(r["policy"]), str(r["hop"]), str(r["samples"]), _b(r["payload_bytes_p50"]),
                       _b(r["msg_bytes_p50"]), _b(r["wire_bytes_p50"]),
                       "-" if math.isnan(r["wire_overhead_pct"]) else f"{r['wire_overhead_pct']:+.1f}%")
        print_fitted(by, 2)
    if rep.paper is not None and len(rep.paper):
        _print_paper(rep.paper, "paper cost model vs measurement (measured samples; reductions against all-cloud "
                                "of the same run)")
    if rep.papers is not None and len(rep.papers):
        print_papers(rep.papers, "the papers' claims: each policy in its paper's cost preset against all samples to "
                                "the last tier, paired 95% intervals")
    if rep.sweep is not None and len(rep.sweep):
        wide = rep.sweep.pivot_table(index="policy", columns=["swept", "value"], values="cost_reduction", sort=False)
        sw = Table(title="cost reduction against all-cloud as o or lambda is swept (paper units, measured routes)")
        sw.add_column("policy")
        for col in wide.columns:
            what, v = cast(tuple[str, float], col)  # a (swept, value) MultiIndex
            sw.add_column(f"{what}={v:g}", justify="right")
        for policy, r in wide.iterrows():
            sw.add_row(str(policy), *[_fmt(float(x), "pct") for x in r])
        print_fitted(sw, 1)
    for note in rep.notes:
        out.print(f"note: {note}")
    for a in rep.advice:
        out.print(f"[yellow]advice:[/yellow] {a}")
    from testbed.analysis.plots import power_timelines

    for png in power_timelines(run_dir, run_dir / "plots", df, manifest.shaping, manifest.cpu):
        out.print(f"plot: {png}")


def _print_per_tier(rep: Any) -> None:
    """The first table: per policy and exit tier."""
    table = Table(title=f"{rep.title}: per policy and exit tier, measured samples; Δacc and lat/cloud against "
                        "all-cloud; offload B, energy mJ and net mJ (above idle) per sample")
    cols = [("policy", "policy"), ("tier", "exit tier"), ("samples", "n"), ("share", "share"),
            ("accuracy", "accuracy"), ("accuracy_delta_pt", "Δacc pt"), ("latency_ms_p50", "p50 ms"),
            ("latency_ms_p95", "p95 ms"), ("latency_ms_p99", "p99 ms"), ("latency_ratio", "lat/cloud"),
            ("offload_bytes_per_sample", "offload B"), ("energy_j_per_sample", "energy mJ"),
            ("energy_net_j_per_sample", "net mJ")]
    for _, title in cols:
        table.add_column(title, justify="left" if title in ("policy", "exit tier") else "right")
    for _, r in rep.summary.iterrows():
        cells = []
        for key, _ in cols:
            v = r[key]
            if isinstance(v, float):
                v = ("-" if math.isnan(v) else f"{v:.1%}" if key == "share" else f"{v * 1e3:.2f}"
                     if key.startswith("energy") else f"{v:.3f}" if key in ("accuracy", "latency_ratio")
                     else f"{v:.2f}")
            cells.append(str(v))
        table.add_row(*cells, style=None if r["tier"] == "all" else "dim")
    print_fitted(table, 2)


def render_summary(run_dir: Path) -> None:
    """The short text summary: each policy's overall row, the verdicts and the warnings (the page has the rest)."""
    from testbed.analysis import report
    from testbed.formats import results

    df, complete = results.load_samples(run_dir)
    m = results.load_manifest(run_dir)
    rep = report.build(df, m, complete)
    table = Table(title=f"{rep.title} ({m.status}, {m.rows} rows): per policy, measured samples")
    for c in ("policy", "n", "accuracy", "Δacc pt", "p50 ms", "p99 ms", "offload B", "energy mJ"):
        table.add_column(c, justify="left" if c == "policy" else "right")
    for _, r in rep.summary[rep.summary["tier"] == "all"].iterrows():
        table.add_row(str(r["policy"]), str(r["samples"]), _fmt(r["accuracy"], "acc"), _fmt(r["accuracy_delta_pt"], ""),
                      _fmt(r["latency_ms_p50"], ""), _fmt(r["latency_ms_p99"], ""),
                      _b(float(r["offload_bytes_per_sample"])), _fmt(r["energy_j_per_sample"], "mj"))
    print_fitted(table, 1)
    for note in rep.notes:
        if note.split(":")[0].isupper() or " claims >" in note or note.startswith(("INCOMPLETE", "run status")):
            out.print(f"note: {note}", highlight=False)
    for a in rep.advice:
        out.print(f"[yellow]advice:[/yellow] {a}")


def _print_scenarios(sc: Any) -> None:
    t = Table(title="load: rate asked and achieved; latency from the scheduled time, with 95% order-statistic "
                    "bounds (n < N: too few samples to bound it); mean queueing per tier (ms)")
    queue_cols = [c for c in sc.columns if c.startswith("queue_ms_")]
    for c in ("policy", "scenario", "n", "target/s", "achieved/s", "p50 ms", "p50 bound", "p90 ms", "p90 bound",
              "p99 ms", "p99 bound", *[c.removeprefix("queue_ms_").removesuffix("_mean") + " queue" for c in
                                       queue_cols]):
        t.add_column(c, justify="left" if c in ("policy", "scenario") else "right")
    for _, r in sc.iterrows():
        t.add_row(str(r["policy"]), str(r["scenario"]), str(r["samples"]), _fmt(r["target_per_s"], ""),
                  _fmt(r["achieved_per_s"], ""), _fmt(r["p50_ms"], ""), str(r["p50_bound"]), _fmt(r["p90_ms"], ""),
                  str(r["p90_bound"]), _fmt(r["p99_ms"], ""), str(r["p99_bound"]),
                  *[_fmt(float(r[c]), "") for c in queue_cols])
    print_fitted(t, 1)


def _ival(r: Any, col: str, lo: str, hi: str, digits: int = 2) -> str:
    """``value [lo, hi]``; the value alone where the interval is unknown."""
    v = float(r[col])
    if math.isnan(v):
        return "-"
    if r[lo] is None or r[hi] is None or math.isnan(float(r[lo])) or math.isnan(float(r[hi])):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{float(r[lo]):.{digits}f}, {float(r[hi]):.{digits}f}]"


def _print_plans(plans: Any) -> None:
    t = Table(title="plans from measured resources: the warmup's, then one after each schedule step that changed "
                    "them (switched: the variant or exit tier changed)")
    for c in ("policy", "plan", "at s", "trigger", "chosen", "predicted ms", "val acc", "switched"):
        t.add_column(c, justify="right" if c in ("plan", "at s", "predicted ms", "val acc") else "left")
    for _, r in plans.iterrows():
        t.add_row(str(r["policy"]), str(r["plan"]), _fmt(r["at_s"], ""), str(r["trigger"]), str(r["chosen"]),
                  _fmt(r["predicted_ms"], ""), f"{r['val_accuracy']:.3f}", "yes" if r["switched"] else "no")
    print_fitted(t, 3)


def _print_shortage(sh: Any) -> None:
    t = Table(title="between schedule steps, per policy: choice, measured samples (and probes) and their rate, "
                    "accuracy, median and mean latency, energy and offload bytes per sample, with 95% intervals")
    for c in ("policy", "from s", "after", "choice", "n", "probes", "per s", "accuracy", "p50 ms", "mean ms",
              "energy mJ", "offload B"):
        t.add_column(c, justify="left" if c in ("policy", "after", "choice") else "right")
    for _, r in sh.iterrows():
        t.add_row(str(r["policy"]), f"{r['from_s']:.2f}", str(r["from"]), str(r["choice"]), str(r["n"]),
                  str(r["probes"]), _fmt(r["per_s"], ""), _ival(r, "accuracy", "accuracy_lo", "accuracy_hi", 3),
                  _ival(r, "latency_ms_p50", "latency_ms_p50_lo", "latency_ms_p50_hi"),
                  _ival(r, "latency_ms_mean", "latency_ms_mean_lo", "latency_ms_mean_hi"),
                  _ival(r, "energy_mj_mean", "energy_mj_lo", "energy_mj_hi"),
                  _ival(r, "offload_bytes_mean", "offload_bytes_lo", "offload_bytes_hi", 0))
    print_fitted(t, 2)


def _print_latency(latency: Any) -> None:
    lat = Table(title="mean latency split (ms): compute on the tiers, network on the hops, queueing on arrival, "
                      "the rest; a queue that grows with load is contention")
    for c in ("policy", "n", "latency", "compute", "network", "queueing", "queue p95", "other"):
        lat.add_column(c, justify="left" if c == "policy" else "right")
    for _, r in latency.iterrows():
        lat.add_row(str(r["policy"]), str(r["samples"]), *[_fmt(float(r[c]), "") for c in (
            "latency_ms", "compute_ms", "network_ms", "queue_ms", "queue_ms_p95", "other_ms")])
    print_fitted(lat, 1)


def _mj(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _b(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0f}"


def _fmt(v: object, kind: str) -> str:
    if not isinstance(v, float):
        return str(v)
    if math.isnan(v):
        return "-"
    return {"pct": f"{v:.1%}", "acc": f"{v:.3f}", "mj": f"{v * 1e3:.2f}"}.get(kind, f"{v:.2f}")


def _iv(v: object, kind: str) -> str:
    from testbed.analysis.verdict import Interval

    return v.text(kind) if isinstance(v, Interval) else "-"


def print_papers(papers: object, title: str) -> None:
    """The paper table: claim, our figure with its interval, verdict, measured reductions, settings."""
    import pandas as pd

    assert isinstance(papers, pd.DataFrame)
    table = Table(title=title)
    extra = [c for c in papers.columns if c.startswith("cost_reduction_")]
    cols = [("policy", "policy", ""), ("paper", "paper", ""), ("claim", "claim", ""), ("preset", "preset", ""),
            ("n", "n", ""), ("cost_reduction", "cost red.", "pct"), ("drop_pt", "acc. drop", "pt"),
            ("verdict", "verdict", ""), *[(c, c.replace("cost_reduction_", "cost red. "), "pct") for c in extra],
            ("latency_ms_reduction", "latency red.", "pct"), ("energy_j_reduction", "energy red.", "pct"),
            ("offload_bytes_reduction", "bytes red.", "pct"), ("settings", "settings", "")]
    present = [c for c in cols if c[0] in papers.columns]
    for _, name, _ in present:
        table.add_column(name, overflow="fold")
    for _, r in papers.iterrows():
        table.add_row(*[_iv(r[k], kind) if kind else str(r[k]) for k, _, kind in present])
    print_fitted(table, 2)


def _print_paper(paper: object, title: str) -> None:
    cols = [("policy", "policy", ""), ("samples", "n", ""), ("accuracy", "accuracy", "acc"),
            ("accuracy_drop_pt", "drop pt", ""), ("cost_paper", "cost (paper)", "acc"),
            ("cost_reduction", "cost red.", "pct"), ("latency_ms_mean", "lat mean ms", ""),
            ("latency_ms_p50", "p50", ""), ("latency_ms_p95", "p95", ""), ("latency_ms_p99", "p99", ""),
            ("latency_reduction", "lat red.", "pct"), ("energy_j_per_sample", "mJ/sample", "mj"),
            ("energy_reduction", "energy red.", "pct"), ("offload_bytes_per_sample", "B/sample", ""),
            ("bytes_reduction", "bytes red.", "pct")]
    table = Table(title=title)
    present = [c for c in cols if c[0] in paper.columns]  # type: ignore[attr-defined]
    for _, name, _ in present:
        wide = name == "policy"
        table.add_column(name, justify="left" if wide else "right", min_width=11 if wide else None)
    for _, r in paper.iterrows():  # type: ignore[attr-defined]
        table.add_row(*[_fmt(r[k], kind) for k, _, kind in present])
    print_fitted(table, 1)


def _print_live_vs_replay(live: Any, rows: Any, layers: dict[str, int], cm: Any, paper: Any) -> None:
    """Per policy: accuracy and paper cost live and replayed, and the share of samples routed alike."""
    import pandas as pd

    from testbed.core import costmodel

    lm = live[live.phase == "measure"]
    rm = rows[rows.phase == "measure"]
    comp = Table(title="replay vs live, same samples")
    for col in ("policy", "live acc", "replay acc", "live cost", "replay cost", "same exit tier"):
        comp.add_column(col, justify="left" if col == "policy" else "right")
    live_paper = costmodel.paper_costs(lm, layers, cm).set_index("policy").to_dict("index")
    replay_cost = paper.set_index("policy")["cost_paper"].to_dict()
    for key, g in rm.groupby("policy", sort=False):
        lg = lm[lm.policy == key]
        merged = pd.merge(g[["sample_id", "exit_tier"]].reset_index(drop=True).reset_index(),
                          lg[["sample_id", "exit_tier"]].reset_index(drop=True).reset_index(),
                          on=["index", "sample_id"], suffixes=("_replay", "_live"))
        same = float((merged.exit_tier_replay == merged.exit_tier_live).mean()) if len(merged) else float("nan")
        lp = live_paper.get(key)
        comp.add_row(str(key), _fmt(float(lp["accuracy"]), "acc") if lp is not None else "-",
                     _fmt(float(g.correct.mean()), "acc"),
                     _fmt(float(lp["cost_paper"]), "acc") if lp is not None else "-",
                     _fmt(float(replay_cost[key]), "acc"), _fmt(same, "pct"))
    out.print(comp)


def cmd_replay(args: argparse.Namespace) -> int:
    """`testbed replay`: policies on the bundle's stored exit table, no devices; beside a live run if given."""
    import json

    import yaml
    from pydantic import ValidationError

    from testbed.analysis import replay, report, verdict
    from testbed.core import costmodel
    from testbed.core.config import CostSpec, PolicySpec
    from testbed.formats import results

    bundle = Bundle.load(args.bundle)
    split, count, warmup, seed = args.split, args.count, args.warmup, args.seed
    cost = CostSpec(preset=args.cost, file=str(args.cost_file) if args.cost_file else None)
    specs: list[PolicySpec] = []
    live = None
    if args.run:
        manifest = results.load_manifest(args.run)
        exp = manifest.experiment.resolved
        specs = [PolicySpec.model_validate(p) for p in exp["policies"]]
        sam = exp["samples"]
        split, count, warmup, seed = sam["split"], sam["count"], sam["warmup"], exp["seed"]
        cost = CostSpec.model_validate(exp.get("cost") or {})
        if args.cost_file or args.cost != "dimee":
            cost = CostSpec(preset=args.cost, file=str(args.cost_file) if args.cost_file else None)
        live, _ = results.load_samples(args.run)
    for text in args.policy or []:
        try:
            raw = yaml.safe_load(text)
            specs.append(PolicySpec.model_validate({"name": raw} if isinstance(raw, str) else raw))
        except (yaml.YAMLError, ValidationError) as e:
            raise ConfigError("--policy", [f"{text!r}: {e}"]) from e
    if not specs:
        raise ConfigError("command line", ["give --policy NAME (or a YAML mapping like '{name: splitee, alpha: 0.8}'), "
                                           "or --run RUN_DIR to replay a live run's policies"])
    problems = [f"--policy {s.key}{p}" for s in specs for p in policies.check(s, bundle.tiers)]
    if problems:
        raise ConfigError("command line", problems)
    reference = f"all-{bundle.tiers[-1]}"
    if reference not in {s.key for s in specs}:  # every verdict is against all samples to the last tier
        specs.append(PolicySpec.model_validate({"name": "all-at", "tier": bundle.tiers[-1], "label": reference}))
    rows, records = replay.replay(bundle, specs, split, count, seed, warmup)
    layers = bundle.layers_run
    cm = costmodel.from_spec(cost)
    paper = costmodel.paper_costs(rows, layers, cm)
    n = len(rows[rows.phase == 'measure']) // len(specs)
    _print_paper(paper, f"replay on {bundle.root} split {split} ({n} samples per policy), cost preset {cm.name}")
    settings = {s.key: report.policy_settings(s.model_dump(), records.get(s.key, {})) for s in specs}
    _, papers = verdict.paper_table(rows, specs, layers, cm, settings, seed, records)
    if len(papers):
        print_papers(papers, f"the papers' claims on {n} replayed samples of split {split}: each policy in its "
                             "paper's cost preset, paired 95% intervals")
    if live is not None:
        _print_live_vs_replay(live, rows, layers, cm, paper)
    for key, rec in records.items():
        if len(rec) > 1:
            out.print(f"{key}: {json.dumps({k: v for k, v in rec.items() if k != 'class'}, default=str)}",
                      highlight=False)
    if args.out:
        rows.to_parquet(args.out, index=False)
        out.print(f"replay rows written to {args.out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`testbed calibrate`: fit lambda and o from a run, write them as presets, re-predict every policy."""
    import yaml

    from testbed.analysis import calibrate
    from testbed.formats import results

    df, _ = results.load_samples(args.run_dir)
    manifest = results.load_manifest(args.run_dir)
    layers = manifest.cost_model.get("layers")
    if not layers:
        raise TestbedError(f"{args.run_dir}: the manifest has no cost_model.layers (a run from an older testbed); "
                           "rerun the experiment")
    fitted = calibrate.fit(df, layers)
    pred = calibrate.repredict(df, layers, fitted)
    dest = args.out or args.run_dir / "cost_presets.yaml"
    doc = {"from_run": str(args.run_dir), "layers": layers, "base_ms": fitted["base_ms"],
           "per_byte": fitted["per_byte"], "presets": {k: v.record() for k, v in fitted["presets"].items()}}
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    for name, cm in fitted["presets"].items():
        out.print(f"{name}: lambda per layer {{{', '.join(f'{t} {v:.4g}' for t, v in cm.lam.items())}}} {cm.unit}; "
                  f"o per offload {{{', '.join(f'{h} {v:.4g}' for h, v in cm.o.items())}}} {cm.unit}", highlight=False)
    for hop, fitb in fitted["per_byte"].items():
        slope = fitb["ms_per_byte"]
        out.print(f"{hop}: " + (f"{slope * 1e6:.3f} ms per MB + {fitb['ms_fixed']:.3f} ms" if slope is not None
                                else fitb.get("note", "")) + f" ({fitb['samples']} offloads)", highlight=False)
    out.print(f"base (controller hops, queueing, decode; not in the model): mean {fitted['base_ms']:.3f} ms, "
              f"median {fitted['base_ms_p50']:.3f} ms")
    table = Table(title="re-predicted from each policy's routes vs measured: the mean model predicts means, the "
                        "median model medians")
    for col in ("policy", "n", "mean pred ms", "measured", "error", "p50 pred ms", "measured", "error",
                "energy pred mJ", "measured", "error"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for _, r in pred.iterrows():
        table.add_row(r["policy"], str(r["samples"]), *[_fmt(r[c], k) for c, k in (
            ("latency_ms_mean_predicted", ""), ("latency_ms_mean_measured", ""), ("latency_mean_error", "pct"),
            ("latency_ms_p50_predicted", ""), ("latency_ms_p50_measured", ""), ("latency_p50_error", "pct"),
            ("energy_j_predicted", "mj"), ("energy_j_measured", "mj"), ("energy_error", "pct"))])
    print_fitted(table, 1)
    worst = {k: float(pred[c].abs().max()) for k, c in (("mean", "latency_mean_error"),
                                                         ("median", "latency_p50_error"))}
    out.print(f"largest re-prediction error of latency: means {worst['mean']:.1%}, medians {worst['median']:.1%} "
              "(goal: within 10% per policy for both)", highlight=False)
    out.print(f"presets written to {dest}")
    return 0

def _run_dir(given: Path) -> Path:
    """A run directory, or the latest run under an experiment's directory."""
    from testbed.formats import results

    if (given / results.MANIFEST).is_file():
        return given
    runs = results.find_runs(given.parent, given.name)
    if not runs:
        raise TestbedError(f"{given}: not a run directory and holds no runs; give results/<experiment>/<run_id>")
    out.print(f"latest run in {given}: {runs[-1].name}")
    return runs[-1]


def cmd_report(args: argparse.Namespace) -> int:
    """`testbed report`: tables of one run (or the latest under an experiment directory); several side by side."""
    from testbed.analysis import html, report
    from testbed.formats import results

    run_dirs = [_run_dir(d) for d in args.run_dir]
    for run_dir in run_dirs:
        mark_lost_run(run_dir)
        if args.format == "text":
            render_report(run_dir)
        elif args.format == "both":
            render_summary(run_dir)
    if args.format in ("html", "both") and len(run_dirs) == 1:
        page = write_html_report(run_dirs[0], args.out or run_dirs[0] / "report")
        out.print(f"report page: {page}", highlight=False)
    elif args.format in ("html", "both"):
        if args.out is None:
            raise ConfigError("command line", ["several runs side by side: give --out DIR for their page"])
        loaded = []
        for d in run_dirs:
            df, complete = results.load_samples(d)
            m = results.load_manifest(d)
            loaded.append((d, report.build(df, m, complete), m))
        page = html.write_comparison(loaded, args.out)
        out.print(f"comparison page: {page}", highlight=False)
    return 0


def write_html_report(run_dir: Path, out_dir: Path) -> Path:
    """``out_dir/index.html`` with its figures and CSVs, from the same tables the text report prints."""
    from testbed.analysis import html, report
    from testbed.formats import results

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError("command line", [f"cannot write the report page into {out_dir}: {e.strerror or e}; give "
                                           "--out DIR, a directory you can write"]) from e
    df, complete = results.load_samples(run_dir)
    manifest = results.load_manifest(run_dir)
    return html.write_page(run_dir, report.build(df, manifest, complete), df, manifest, out_dir)


def add_commands(sub: Any) -> None:
    """Add ``report``, ``calibrate`` and ``replay`` to the subparsers ``sub``."""
    rep = sub.add_parser("report", help="tables of a run: per policy and tier, against all-cloud")
    rep.add_argument("run_dir", type=Path, nargs="+", help="results/<experiment>/<run_id> (or results/<experiment>: "
                     "its latest run); several: side by side on one page (with --out)")
    rep.add_argument("--format", choices=("both", "text", "html"), default="both",
                     help="text: every table here, fitted to the terminal; html: RUN_DIR/report/index.html with "
                          "figures and CSVs; both (default): the page and a short summary here")
    rep.add_argument("--out", type=Path, default=None, help="where the page goes (default RUN_DIR/report)")
    rep.set_defaults(func=cmd_report)
    cal = sub.add_parser("calibrate", help="fit the cost model (ms and J per layer, per offload) to a run")
    cal.add_argument("run_dir", type=Path)
    cal.add_argument("--out", type=Path, default=None, help="presets file (default: RUN_DIR/cost_presets.yaml)")
    cal.set_defaults(func=cmd_calibrate)
    rp = sub.add_parser("replay", help="evaluate policies on a bundle's stored exit table, without devices")
    rp.add_argument("bundle", type=Path)
    rp.add_argument("--policy", action="append", help="a policy name or a YAML mapping "
                                                      "('{name: splitee-s, alpha: 0.8, o: 0.3}'); repeatable")
    rp.add_argument("--run", type=Path, default=None, help="a live run: replay its policies and samples, side by side")
    rp.add_argument("--split", default="test")
    rp.add_argument("--count", type=int, default=None)
    rp.add_argument("--warmup", type=int, default=0)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--cost", default="dimee", help="cost preset: dimee, dimec-dc, splitee (or one of --cost-file)")
    rp.add_argument("--cost-file", type=Path, default=None, help="presets written by `testbed calibrate`")
    rp.add_argument("--out", type=Path, default=None, help="write the replayed rows to this parquet file")
    rp.set_defaults(func=cmd_replay)
