"""``testbed``: the command line. The only module that prints or exits.

Exit codes: 0 ok; 1 other testbed error; 2 config or bundle; 3 agent start;
4 agent lost; 5 protocol; 6 results; 7 build; 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.protocol import TIERS
from testbed import __version__, policies
from testbed.bundle import Bundle
from testbed.config import Experiment, Inventory, check_experiment, load_experiment, load_inventory, resolve
from testbed.errors import ConfigError, TestbedError

# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _load_all(exp_path: Path, inv_path: Path) -> tuple[Experiment, Inventory]:
    """Experiment + inventory + semantic checks; every problem of both files in one error."""
    problems: list[ConfigError] = []
    exp = inv = None
    try:
        exp = load_experiment(exp_path)
    except ConfigError as e:
        problems.append(e)
    try:
        inv = load_inventory(inv_path)
    except ConfigError as e:
        problems.append(e)
    if exp is not None and inv is not None:
        semantic = check_experiment(exp, inv, policies.check, Path.cwd())
        if semantic:
            problems.append(ConfigError(str(exp_path), semantic))
    if problems:
        if len(problems) == 1:
            raise problems[0]
        raise ConfigError(" and ".join(e.file for e in problems), [p for e in problems for p in e.problems])
    assert exp is not None and inv is not None
    return exp, inv


def cmd_validate(args: argparse.Namespace) -> int:
    """`testbed validate`: structural and semantic checks, every problem at once."""
    exp, inv = _load_all(args.experiment, args.inventory)
    out.print(f"[green]ok[/green] {args.experiment}: experiment {exp.name!r}, {len(exp.policies)} policies, "
              f"devices {', '.join(f'{t}={d}' for t, d in exp.devices.items())} ({args.inventory})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """`testbed plan`: what would run where; starts nothing."""
    exp, inv = _load_all(args.experiment, args.inventory)
    bundle = Bundle.load(resolve(Path.cwd(), exp.bundle))
    missing = bundle.missing_files()
    table = Table(title=f"plan for {exp.name} (nothing is started)")
    for col in ("tier", "device", "host", "launcher", "partition", "layers", "sha256", "offload to"):
        table.add_column(col)
    for i, tier in enumerate(TIERS):
        dev = inv.device(exp.devices[tier])
        spec = bundle.tier(tier)
        table.add_row(tier, dev.id, dev.host, dev.launcher, str(bundle.root / spec.file),
                      f"{spec.layers[0]}-{spec.layers[-1]}", spec.sha256[:12],
                      exp.devices[TIERS[i + 1]] if i + 1 < len(TIERS) else "- (returns to controller)")
    out.print(table)
    n = len(bundle.samples(exp.samples.split))
    count = min(exp.samples.count or n, n)
    out.print(f"samples: split {exp.samples.split!r}, {count} measured + {exp.samples.warmup} warmup per policy, "
              f"concurrency {exp.run.concurrency}")
    from testbed.replay import policy_context

    ctx = policy_context(bundle, exp.samples.split, exp.seed, {s.name for s in exp.policies})
    for spec in exp.policies:
        pol = policies.make(spec, ctx)
        if isinstance(pol, policies.StaticPolicy) or hasattr(pol, "record") and "thresholds" in pol.record:
            rule = pol.thresholds(0, np.random.default_rng(exp.seed))
            out.print(f"policy {spec.key}: exit thresholds {rule} (exit when {getattr(pol, 'measure', 'max')} "
                      "confidence >= threshold)", highlight=False)
        else:
            given = [f"{k}={getattr(spec, k)}" for k in sorted(policies.PARAMS[spec.name])
                     if getattr(spec, k) is not None]
            out.print(f"policy {spec.key}: {type(pol).__name__}, chooses per sample or per run "
                      f"({', '.join(given) or 'defaults'})", highlight=False)
    out.print(f"cost model: {exp.cost.preset}")
    _print_shaping_plan(exp, inv)
    out.print(f"results: {args.results}/{exp.name}/<run_id>/")
    if missing:
        out.print(f"[red]missing bundle files: {', '.join(missing)}[/red]")
        return 2
    return 0


def _print_shaping_plan(exp: Experiment, inv: Inventory) -> None:
    """The tc commands each device would run for the experiment's link profiles (nothing is run)."""
    from testbed import shaping

    if not exp.shaping.links or exp.shaping.backend == "none":
        out.print("shaping: none")
        return
    remote = any(inv.device(d).launcher == "ssh" for d in exp.devices.values())
    backend = exp.shaping.backend if exp.shaping.backend != "auto" else ("netem" if remote else "userspace")
    note = " (auto: netem where the kernel has it, else userspace; preflight decides)" \
        if exp.shaping.backend == "auto" else ""
    out.print(f"shaping: backend {backend}{note}", highlight=False)
    seen: dict[tuple[str, str], str] = {}
    for link, prof in exp.shaping.links.items():
        ends = link.split("-")
        out.print(f"link {link}: delay {prof.delay_ms} ms, jitter {prof.jitter_ms} ms, loss {prof.loss_pct}%, "
                  f"rate {prof.rate_mbit or 'unlimited'} Mbit/s, both directions"
                  + (f", schedule of {len(prof.schedule)} steps" if prof.schedule else ""), highlight=False)
        for end in ends:
            if end == "controller":
                peer_id = exp.devices[ends[1]]
                iface = inv.controller.interfaces.get(peer_id)
                steps = shaping.plan(iface or "<interface>", prof, backend)
                if steps and not iface:
                    out.print(f"  controller: needs controller.interfaces.{peer_id} in the inventory (its own "
                              f"interface toward {peer_id}) for {' '.join(steps[0].argv[:3])}", markup=False,
                              highlight=False)
                elif steps:
                    for step in steps:
                        out.print(f"  controller (here): {' '.join(step.argv)}   # {step.why}", markup=False,
                                  highlight=False)
                    out.print(f"  controller at the end: {' '.join(shaping.teardown(iface).argv)}", markup=False,
                              highlight=False)
                params = shaping.userspace_params(prof, backend)
                if params:
                    what = ("the Work it receives and the Results it sends" if ends[1] == TIERS[0]
                            else "the Results it sends (the controller issues Work to the first tier only)")
                    out.print(f"  {peer_id}: agent holds {what} {params}", markup=False, highlight=False)
                continue
            dev = inv.device(exp.devices[end])
            peer = ends[1] if end == ends[0] else ends[0]
            iface = dev.interface_to(peer) or "<interface: set it in the inventory>"
            where = "local: loopback, not applied" if dev.launcher == "local" else f"{dev.host} via SSH"
            if (dev.id, iface) in seen:
                out.print(f"  warning: {dev.id} {iface} already carries link {seen[(dev.id, iface)]}; this profile "
                          "would replace it (one interface per shaped link is needed)", markup=False, highlight=False)
            seen[(dev.id, iface)] = link
            for step in shaping.plan(iface, prof, backend):
                out.print(f"  {dev.id} ({where}): {' '.join(step.argv)}   # {step.why}", markup=False,
                          highlight=False)
            params = shaping.userspace_params(prof, backend)
            if params and peer != "controller":
                out.print(f"  {dev.id}: agent delays its outgoing messages {params}", markup=False, highlight=False)
            out.print(f"  {dev.id} at the end: {' '.join(shaping.teardown(iface).argv)}", markup=False,
                      highlight=False)


def _render_report(run_dir: Path) -> None:
    from testbed import report, results

    df, complete = results.load_samples(run_dir)
    manifest = results.load_manifest(run_dir)
    rep = report.build(df, manifest, complete)
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
    out.print(table)
    hops = Table(title="medians per hop (ms)")
    for c in rep.hops.columns:
        hops.add_column(c.replace("_p50", "").replace("compute_ms_", "compute ").replace("net_ms_", "net "))
    for _, r in rep.hops.iterrows():
        hops.add_row(*[("-" if math.isnan(v) else f"{v:.3f}") if isinstance(v, float) else str(v) for v in r])
    out.print(hops)
    if rep.energy is not None:
        en = Table(title="energy per measured sample by tier, mJ (gross / net of idle); a tier a sample did not "
                         "visit adds nothing")
        en.add_column("policy")
        for t in TIERS:
            en.add_column(t, justify="right")
        for _, r in rep.energy.iterrows():
            en.add_row(str(r["policy"]), *[f"{_mj(r[f'energy_mj_{t}'])} / {_mj(r[f'energy_net_mj_{t}'])}"
                                           for t in TIERS])
        out.print(en)
    if rep.bytes is not None and len(rep.bytes):
        by = Table(title="bytes per offload (medians): tensors, whole message, on the wire (interface counter)")
        for title in ("policy", "hop", "n", "tensor B", "message B", "wire B", "wire over tensors"):
            by.add_column(title, justify="left" if title in ("policy", "hop") else "right")
        for _, r in rep.bytes.iterrows():
            by.add_row(str(r["policy"]), str(r["hop"]), str(r["samples"]), _b(r["payload_bytes_p50"]),
                       _b(r["msg_bytes_p50"]), _b(r["wire_bytes_p50"]),
                       "-" if math.isnan(r["wire_overhead_pct"]) else f"{r['wire_overhead_pct']:+.1f}%")
        out.print(by)
    if rep.paper is not None and len(rep.paper):
        _print_paper(rep.paper, "paper cost model vs measurement (measured samples; reductions against all-cloud "
                                "of the same run)")
    if rep.sweep is not None and len(rep.sweep):
        wide = rep.sweep.pivot_table(index="policy", columns=["swept", "value"], values="cost_reduction", sort=False)
        sw = Table(title="cost reduction against all-cloud as o or lambda is swept (paper units, measured routes)")
        sw.add_column("policy")
        for what, v in wide.columns:
            sw.add_column(f"{what}={v:g}", justify="right")
        for policy, r in wide.iterrows():
            sw.add_row(str(policy), *[_fmt(float(x), "pct") for x in r])
        out.print(sw)
    for note in rep.notes:
        out.print(f"note: {note}")
    for a in rep.advice:
        out.print(f"[yellow]advice:[/yellow] {a}")
    from testbed.plots import power_timelines

    for png in power_timelines(run_dir, run_dir / "plots"):
        out.print(f"plot: {png}")


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
    out.print(table)


def cmd_replay(args: argparse.Namespace) -> int:
    """`testbed replay`: policies on the bundle's stored exit table, no devices; beside a live run if given."""
    import json

    import pandas as pd
    import yaml
    from pydantic import ValidationError

    from testbed import costmodel, replay, results
    from testbed.config import CostSpec, PolicySpec

    bundle = Bundle.load(args.bundle)
    split, count, warmup, seed = args.split, args.count, args.warmup, args.seed
    cost = CostSpec(preset=args.cost, file=str(args.cost_file) if args.cost_file else None)
    specs: list[PolicySpec] = []
    live = None
    if args.run:
        manifest = results.load_manifest(args.run)
        exp = manifest["experiment"]["resolved"]
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
    problems = [f"--policy {s.key}{p}" for s in specs for p in policies.check(s)]
    if problems:
        raise ConfigError("command line", problems)
    rows, records = replay.replay(bundle, specs, split, count, seed, warmup)
    layers = {t.tier: len(t.runs_layers or t.layers) for t in bundle.spec.tiers}
    cm = replay.cost_model(cost)
    paper = costmodel.paper_costs(rows, layers, cm)
    _print_paper(paper, f"replay on {bundle.root} split {split} ({len(rows[rows.phase == 'measure']) // len(specs)} "
                        f"samples per policy), cost preset {cm.name}")
    if live is not None:
        lm = live[live.phase == "measure"]
        rm = rows[rows.phase == "measure"]
        comp = Table(title="replay vs live, same samples")
        for col in ("policy", "live acc", "replay acc", "live cost", "replay cost", "same exit tier"):
            comp.add_column(col, justify="left" if col == "policy" else "right")
        live_paper = costmodel.paper_costs(lm, layers, cm).set_index("policy")
        for key, g in rm.groupby("policy", sort=False):
            lg = lm[lm.policy == key]
            merged = pd.merge(g[["sample_id", "exit_tier"]].reset_index(drop=True).reset_index(),
                              lg[["sample_id", "exit_tier"]].reset_index(drop=True).reset_index(),
                              on=["index", "sample_id"], suffixes=("_replay", "_live"))
            same = float((merged.exit_tier_replay == merged.exit_tier_live).mean()) if len(merged) else float("nan")
            lp = live_paper.loc[key] if key in live_paper.index else None
            comp.add_row(key, _fmt(float(lp["accuracy"]), "acc") if lp is not None else "-",
                         _fmt(float(g.correct.mean()), "acc"),
                         _fmt(float(lp["cost_paper"]), "acc") if lp is not None else "-",
                         _fmt(float(paper.set_index("policy").loc[key, "cost_paper"]), "acc"), _fmt(same, "pct"))
        out.print(comp)
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

    from testbed import calibrate, results

    df, _ = results.load_samples(args.run_dir)
    manifest = results.load_manifest(args.run_dir)
    layers = (manifest.get("cost_model") or {}).get("layers")
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
    out.print(f"base (controller hops, queueing, decode; not in the model): {fitted['base_ms']:.3f} ms")
    table = Table(title="re-predicted from each policy's routes with the calibrated model vs measured (means)")
    for col in ("policy", "n", "latency pred ms", "measured", "error", "energy pred mJ", "measured", "error"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for _, r in pred.iterrows():
        table.add_row(r["policy"], str(r["samples"]), _fmt(r["latency_ms_predicted"], ""),
                      _fmt(r["latency_ms_measured"], ""), _fmt(r["latency_error"], "pct"),
                      _fmt(r["energy_j_predicted"], "mj"), _fmt(r["energy_j_measured"], "mj"),
                      _fmt(r["energy_error"], "pct"))
    out.print(table)
    out.print(f"presets written to {dest}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`testbed run`: the whole run, with a progress bar and the report at the end."""
    from testbed.controller import Controller

    exp, inv = _load_all(args.experiment, args.inventory)
    from testbed import shaping

    remote = any(inv.device(d).launcher == "ssh" for d in exp.devices.values())
    _, refusals = shaping.applicable(exp.shaping.links, exp.shaping.backend, remote)
    if refusals:
        raise ConfigError(str(args.experiment), [*refusals, "a run would not be shaped as asked, so it does not "
                                                 "start; `testbed plan` prints the tc commands"])
    bundle = Bundle.load(resolve(Path.cwd(), exp.bundle))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=args.quiet) as bar:
        tasks: dict[str, int] = {}

        def on_progress(pr: object) -> None:
            key = pr.policy  # type: ignore[attr-defined]
            if key not in tasks:
                tasks[key] = bar.add_task(f"{key:<12}", total=pr.total)  # type: ignore[attr-defined]
            bar.update(tasks[key], completed=pr.done)  # type: ignore[attr-defined]

        ctrl = Controller(exp, args.experiment, inv, args.inventory, bundle, args.results, on_progress=on_progress,
                          trust_new_hosts=args.trust_new_hosts)
        err.print(f"run {ctrl.run_id}: results in {ctrl.run_dir}")
        try:
            outcome = ctrl.run()
        except (TestbedError, KeyboardInterrupt):
            err.print(f"rows measured before the stop are in {ctrl.run_dir}")
            raise
    _render_report(outcome.run_dir)
    out.print(f"results: {outcome.run_dir} ({outcome.rows} rows)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """`testbed report`: tables of one run (or the latest under an experiment directory)."""
    from testbed import results

    run_dir: Path = args.run_dir
    if not (run_dir / results.MANIFEST).is_file():
        runs = results.find_runs(run_dir.parent, run_dir.name)
        if not runs:
            raise TestbedError(f"{run_dir}: not a run directory and holds no runs; give results/<experiment>/<run_id>")
        run_dir = runs[-1]
        out.print(f"latest run in {args.run_dir}: {run_dir.name}")
    _render_report(run_dir)
    return 0


PARTITION_FLAGS = {  # flag dest -> spec field (None: handled by hand)
    "name": "name", "model": "model", "data": "data", "text_column": "text_column",
    "text_pair_column": "text_pair_column", "label_column": "label_column", "offload": "offload_mode",
    "max_length": "max_length", "threads": "threads",
}


def _partition_spec(args: argparse.Namespace) -> tuple[object, Path]:
    """The spec from ``--config`` and/or flags (flags win); returns (spec, output directory)."""
    from pydantic import ValidationError

    from testbed.partition import PartitionSpec, load_spec
    from testbed.resnet import ResNetSpec
    from testbed.tiers import CutError, parse_exits, parse_tiers

    base: dict = load_spec(args.config).model_dump() if args.config else {}
    if args.model and args.model.startswith("resnet-"):  # resnet-8, resnet-14, ...: depth 6n+2
        depth = args.model.removeprefix("resnet-")
        if not depth.isdigit() or (int(depth) - 2) % 6 or int(depth) < 8:
            raise ConfigError("command line", [f"--model {args.model}: a CIFAR ResNet has depth 6n+2 "
                                               "(resnet-8, resnet-14, resnet-20, ...)"])
        base |= {"kind": "resnet", "blocks_per_stage": (int(depth) - 2) // 6}
        base.pop("model", None)
        args.model = None
    model_cls = ResNetSpec if base.get("kind") == "resnet" else PartitionSpec
    try:
        if args.tiers:
            base["tiers"] = {k: list(v) for k, v in parse_tiers(args.tiers).items()}
        if args.exits:
            parsed = parse_exits(args.exits)
            base["exits"] = "all" if parsed is None else parsed
    except CutError as e:
        raise ConfigError("command line", [str(e)]) from e
    for dest, field in PARTITION_FLAGS.items():
        if getattr(args, dest) is not None:
            base[field] = getattr(args, dest)
    if args.variants is not None:
        base["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    training = dict(base.get("training", {}))
    for dest in ("epochs", "lr", "backbone_lr"):
        if getattr(args, dest) is not None:
            training[dest] = getattr(args, dest)
    if args.batch is not None:
        training["batch_size"] = args.batch
    if args.finetune:
        training["finetune"] = True
    base["training"] = training
    split = dict(base.get("split", {}))
    for dest in ("train", "val", "test", "seed"):
        if getattr(args, dest) is not None:
            split[dest] = getattr(args, dest)
    base["split"] = split
    if args.out is not None:
        base["out"] = str(args.out)
    if "out" in base and "name" not in base:
        base["name"] = Path(base["out"]).name
    if "name" in base and "out" not in base:
        base["out"] = f"partitions/{base['name']}"
    if "tiers" not in base:
        raise ConfigError("command line",
                          ["--tiers is required without --config (e.g. mobile:1-4,edge:5-8,cloud:9-12)"])
    try:
        spec = model_cls.model_validate(base)
    except ValidationError as e:
        flag = {v: k for k, v in PARTITION_FLAGS.items()} | {"tiers": "tiers", "exits": "exits", "out": "out"}
        problems = []
        for err_ in e.errors():
            loc = [str(x) for x in err_["loc"]]
            name = flag.get(loc[0], ".".join(loc)) if loc else "spec"
            problems.append(f"--{name.replace('_', '-')}: {err_['msg']} (got {err_.get('input')!r})")
        raise ConfigError(str(args.config) if args.config else "command line", problems) from e
    return spec, Path(spec.out)


def cmd_partition(args: argparse.Namespace) -> int:
    """`testbed partition`: build a bundle from a spec file and/or flags."""
    from testbed.partition import build_bundle, spec_sha256

    if args.config is None and args.model is None and args.data is None:
        raise ConfigError("command line", ["give --config partitions/specs/<name>.yaml, or --model, --data, "
                                           "--tiers and --out"])
    spec, dest = _partition_spec(args)
    if args.if_missing and (dest / "bundle.yaml").is_file():
        try:
            existing = Bundle.load(dest)
            existing.verify()
            if existing.spec.build.get("spec_sha256") == spec_sha256(spec):  # type: ignore[arg-type]
                out.print(f"bundle {dest} exists, verifies and was built from this spec; not rebuilding")
                return 0
            err.print(f"bundle {dest} was built from another spec; rebuilding")
        except TestbedError as e:
            err.print(f"bundle {dest} does not verify ({e}); rebuilding")
        args.force = True
    if str(getattr(spec, "model", "")).startswith("builtin:"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build_bundle(spec, dest, progress=lambda m: err.print(f"[dim]partition[/dim] {m}", highlight=False),  # type: ignore[arg-type]
                 force=args.force)
    out.print(f"bundle written to {dest}")
    return 0


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    """`testbed bundle verify`: hashes, graph inputs/outputs, and a replay against exits.parquet."""
    from testbed.errors import BundleError

    bundle = Bundle.load(args.bundle)
    hashes = bundle.verify()
    out.print(f"[green]ok[/green] hashes: {len(hashes)} files match bundle.yaml")
    problems = bundle.check_graphs()
    if problems:
        raise BundleError(f"bundle {args.bundle}: the ONNX graphs disagree with bundle.yaml: " + "; ".join(problems))
    out.print(f"[green]ok[/green] shapes: inputs and outputs of {len(bundle.spec.tiers) + len(bundle.spec.variants)} "
              "graphs match bundle.yaml")
    worst = bundle.replay("val", args.samples)
    parity = bundle.spec.parity
    out.print(f"[green]ok[/green] parity: onnxruntime replays exits.parquet on {args.samples} val samples "
              f"(max confidence diff {worst:.2e}); build parity vs torch "
              f"{parity.get('max_abs_diff', float('nan')):.2e} "
              f"on a padded batch of {parity.get('batch', '?')}")
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    """`testbed bundle show`: tiers, layers, bytes per offload, exit accuracies, variants."""
    bundle = Bundle.load(args.bundle)
    s = bundle.spec
    m = s.model
    out.print(f"bundle [bold]{s.name}[/bold] (format {s.format_version}, {s.kind}): model {m.get('source')} "
              f"({m.get('architecture')}, {m.get('num_layers')} layers, hidden {m.get('hidden_size')}, "
              f"{m.get('parameters', 0) / 1e6:.1f} M parameters)")
    out.print(f"task: {len(bundle.labels)} classes {bundle.labels}; data {s.task.get('data')}; splits "
              f"{s.data.get('splits')} seed {s.data.get('seed')}")
    tr = s.training
    if tr:
        out.print(f"training: {tr.get('what')}; {tr.get('epochs')} epochs")
    table = Table(title="tiers")
    for col in ("tier", "layers", "runs", "file", "MB", "inputs", "outputs", "offload to next"):
        table.add_column(col)
    for t in s.tiers:
        runs = t.runs_layers or t.layers
        table.add_row(t.tier, f"{t.layers[0]}-{t.layers[-1]}", f"{runs[0]}-{runs[-1]}", t.file,
                      f"{t.size_bytes / 1e6:.1f}", ", ".join(i.name for i in t.inputs),
                      ", ".join(o.name for o in t.outputs), ", ".join(t.offload) or "-")
    out.print(table)
    off = s.offload
    med = off.get("test_seq_len_median")
    out.print(f"offload mode {off['mode']}: bytes = {off.get('formula', off['bytes_per_token'])}"
              + (f"; at the median test length {med:g} tokens: {bundle.offload_bytes(int(med)):,} B" if med else "")
              + (f"; by hop: {off['bytes_by_hop']}" if "bytes_by_hop" in off else ""))
    ex = Table(title="exits (accuracy of each exit alone, exported graphs, unpadded samples)")
    for col in ("layer", "tier", "output", "val acc", "test acc"):
        ex.add_column(col, justify="right")
    for t in s.tiers:
        for e in t.exits or [t.exit]:
            ex.add_row(str(e.layer), t.tier, e.output, f"{e.val_accuracy:.3f}", f"{e.test_accuracy:.3f}",
                       style="bold" if e.layer == t.exit.layer else None)
    out.print(ex)
    if s.variants:
        vt = Table(title="variants")
        for col in ("tier", "variant", "file", "MB", "exit val acc", "final val acc", "max Δconf"):
            vt.add_column(col)
        for v in s.variants:
            own = [e for e in v.exits if e["layer"] == bundle.tier(v.tier).exit.layer]
            vt.add_row(v.tier, v.name, v.file, f"{v.size_bytes / 1e6:.1f}",
                       f"{own[0]['val_accuracy']:.3f}" if own else "-", f"{v.final['val_accuracy']:.3f}",
                       f"{v.max_confidence_diff:.3g}")
        out.print(vt)
    if s.resnet_variants:
        rt = Table(title="ResNet variants (connections dropped, cheapest first)")
        for col in ("variant", "dropped", "val acc", "test acc", "exit acc by tier (val)", "M MACs by tier",
                    "offload B by hop"):
            rt.add_column(col)
        for v in s.resnet_variants:
            rt.add_row(v["name"], ", ".join(v["dropped"]) or "-", f"{v['val_accuracy']:.3f}",
                       f"{v['test_accuracy']:.3f}", " / ".join(f"{e['val_accuracy']:.3f}" for e in v["exits"]),
                       " / ".join(f"{m / 1e6:.2f}" for m in v["macs"].values()),
                       ", ".join(f"{k} {b:,}" for k, b in v["bytes_per_offload"].items()))
        out.print(rt)
        costs = ", ".join(f"{c['connection']} {c['accuracy_cost']:+.3f}" for c in s.connections)
        out.print(f"val accuracy lost by dropping one connection alone: {costs}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    ap = argparse.ArgumentParser(prog="testbed", description="three-tier distributed inference testbed")
    ap.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_experiment(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("experiment", type=Path, help="experiments/<name>.yaml")
        sp.add_argument("--inventory", type=Path, default=Path("inventory.yaml"), help="default: inventory.yaml")
        sp.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
        return sp

    with_experiment("validate", "check an experiment and the inventory; report every problem at once"
                    ).set_defaults(func=cmd_validate)
    with_experiment("plan", "print what would run where; starts nothing").set_defaults(func=cmd_plan)
    run = with_experiment("run", "run an experiment: start agents, issue samples, write results, report")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--trust-new-hosts", action="store_true",
                     help="SSH devices: record unknown host keys in known_hosts instead of refusing")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="tables of a run: per policy and tier, against all-cloud")
    rep.add_argument("run_dir", type=Path, help="results/<experiment>/<run_id> (or results/<experiment>: latest)")
    rep.set_defaults(func=cmd_report)
    part = sub.add_parser("partition", help="build a partition bundle from a model and a dataset",
                          description="build a partition bundle; flags override the --config file")
    part.add_argument("--config", type=Path, default=None, help="partitions/specs/<name>.yaml")
    part.add_argument("--model", default=None, help="Hugging Face directory or hub name, or builtin:minilm-l6")
    part.add_argument("--data", default=None, help="CSV/TSV/JSONL file, datasets directory, hub NAME[:CONFIG], "
                                                   "or builtin:sentiment")
    part.add_argument("--tiers", default=None, help="mobile:FIRST-LAST,edge:FIRST-LAST,cloud:FIRST-LAST (1-based)")
    part.add_argument("--exits", default=None, help="exit layers, e.g. 4,8, or 'all' (default: all)")
    part.add_argument("--out", type=Path, default=None, help="output directory (default: partitions/<name>)")
    part.add_argument("--name", default=None, help="bundle name (default: the --out directory's name)")
    part.add_argument("--text-column", dest="text_column", default=None)
    part.add_argument("--text-pair-column", dest="text_pair_column", default=None, help="second text of a pair")
    part.add_argument("--label-column", dest="label_column", default=None)
    part.add_argument("--offload", choices=["hidden", "input"], default=None,
                      help="hidden: next tier continues from the tensor; input: it re-runs from the tokens")
    part.add_argument("--variants", default=None, help="extra mobile-tier files: fp16,int8")
    part.add_argument("--finetune", action="store_true", help="train the backbone jointly with the exits")
    part.add_argument("--epochs", type=int, default=None)
    part.add_argument("--lr", type=float, default=None, help="learning rate of the exit heads")
    part.add_argument("--backbone-lr", dest="backbone_lr", type=float, default=None)
    part.add_argument("--batch", type=int, default=None, help="training batch size")
    part.add_argument("--max-length", dest="max_length", type=int, default=None)
    part.add_argument("--train", type=int, default=None, help="train split size")
    part.add_argument("--val", type=int, default=None, help="validation split size")
    part.add_argument("--test", type=int, default=None, help="test split size")
    part.add_argument("--seed", type=int, default=None, help="seed of the splits and the training")
    part.add_argument("--threads", type=int, default=None)
    part.add_argument("--force", action="store_true", help="replace an existing output directory")
    part.add_argument("--if-missing", action="store_true", help="do nothing when the bundle exists and verifies")
    part.set_defaults(func=cmd_partition)
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
    bun = sub.add_parser("bundle", help="inspect a partition bundle: verify, show")
    bsub = bun.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    bv = bsub.add_parser("verify", help="hashes, graph inputs/outputs, onnxruntime replay of the exit table")
    bv.add_argument("bundle", type=Path)
    bv.add_argument("--samples", type=int, default=32, help="val samples to replay (default 32)")
    bv.set_defaults(func=cmd_bundle_verify)
    bs = bsub.add_parser("show", help="tiers, layers, bytes per offload, exit accuracies, variants")
    bs.add_argument("bundle", type=Path)
    bs.set_defaults(func=cmd_bundle_show)
    from testbed.cli_devices import add_commands

    add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``testbed``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    try:
        from testbed.cli_devices import maybe_enter_netns

        maybe_enter_netns(args, argv)
        return int(args.func(args))
    except TestbedError as e:
        err.print(f"error: {e}", highlight=False, markup=False, style="red")
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted; agents stopped, measured rows saved", style="yellow")
        return 130


def entry() -> None:
    """Run the CLI and exit with its code (``python -m testbed``)."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
