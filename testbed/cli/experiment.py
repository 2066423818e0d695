"""``testbed validate``, ``plan`` and ``run``: an experiment from its file to its results."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from testbed import policies
from testbed.cli.analysis import render_summary, write_html_report
from testbed.cli.common import err, load_all, out
from testbed.core.config import Experiment, Inventory, resolve
from testbed.core.errors import ConfigError, TestbedError
from testbed.formats.bundle import Bundle


def cmd_validate(args: argparse.Namespace) -> int:
    """`testbed validate`: structural and semantic checks, every problem at once."""
    exp, inv = load_all(args.experiment, args.inventory)
    out.print(f"[green]ok[/green] {args.experiment}: experiment {exp.name!r}, {len(exp.policies)} policies, "
              f"devices {', '.join(f'{t}={d}' for t in exp.devices for d in exp.tier_devices(t))} ({args.inventory})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """`testbed plan`: what would run where; starts nothing."""
    exp, inv = load_all(args.experiment, args.inventory)
    bundle = Bundle.load(resolve(Path.cwd(), exp.bundle))
    missing = bundle.missing_files()
    table = Table(title=f"plan for {exp.name} (nothing is started)")
    for col in ("tier", "device", "host", "launcher", "partition", "layers", "sha256", "offload to"):
        table.add_column(col)
    tiers = bundle.tiers
    for tier in tiers:
        spec = bundle.tier(tier)
        for dev_id in exp.tier_devices(tier):
            dev = inv.device(dev_id)
            table.add_row(tier, dev.id, dev.host, dev.launcher, str(bundle.root / spec.file),
                          f"{spec.layers[0]}-{spec.layers[-1]}", spec.sha256[:12],
                          exp.next_device(tiers, dev_id) or "- (returns to controller)")
    out.print(table)
    n = len(bundle.samples(exp.samples.split))
    count = min(exp.samples.count or n, n)
    out.print(f"samples: split {exp.samples.split!r}, {count} measured + {exp.samples.warmup} warmup per policy, "
              f"concurrency {exp.run.concurrency}")

    ctx = policies.context_for(bundle, exp.samples.split, exp.seed, {s.name for s in exp.policies})
    for pspec in exp.policies:
        pol = policies.make(pspec, ctx)
        if pol.pools(0):
            out.print(f"policy {pspec.key}: pool router on the first tier, pool thresholds {pol.pools(0)} (go to the "
                      "first tier whose easier pools' probability >= its threshold)", highlight=False)
        elif isinstance(pol, policies.StaticPolicy) or "thresholds" in pol.record:
            rule = pol.thresholds(0, np.random.default_rng(exp.seed))
            out.print(f"policy {pspec.key}: exit thresholds {rule} (exit when {pol.measure} "
                      "confidence >= threshold)", highlight=False)
        else:
            _, params = policies.parse(pspec)
            given = [f"{k}={v}" for k, v in params.model_dump().items()]
            out.print(f"policy {pspec.key}: {type(pol).__name__}, chooses per sample or per run "
                      f"({', '.join(given) or 'no parameters'})", highlight=False)
    out.print(f"cost model: {exp.cost.preset}")
    _print_shaping_plan(exp, inv, tiers[0])
    out.print(f"results: {args.results}/{exp.name}/<run_id>/")
    if missing:
        out.print(f"[red]missing bundle files: {', '.join(missing)}[/red]")
        return 2
    return 0


def _print_shaping_plan(exp: Experiment, inv: Inventory, first_tier: str) -> None:
    """The tc commands each device would run for the experiment's link profiles (nothing is run)."""
    from testbed.devices import shaping

    if not exp.shaping.links or exp.shaping.backend == "none":
        out.print("shaping: none")
        return
    remote = any(inv.device(d).launcher == "ssh" for d in exp.device_ids())
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
                peer_id = exp.tier_devices(ends[1])[0]
                iface = inv.controller.interfaces.get(peer_id)
                steps = shaping.plan(iface or "<interface>", prof, backend)
                if steps and not iface:
                    out.print(f"  controller: needs controller.interfaces.{peer_id} in the inventory (its own "
                              f"interface toward {peer_id}) for {' '.join(steps[0].argv[:3])}", markup=False,
                              highlight=False)
                elif steps and iface:
                    for step in steps:
                        out.print(f"  controller (here): {' '.join(step.argv)}   # {step.why}", markup=False,
                                  highlight=False)
                    out.print(f"  controller at the end: {' '.join(shaping.teardown(iface).argv)}", markup=False,
                              highlight=False)
                params = shaping.userspace_params(prof, backend)
                if params:
                    what = ("the Work it receives and the Results it sends" if ends[1] == first_tier
                            else "the Results it sends (the controller issues Work to the first tier only)")
                    out.print(f"  {peer_id}: agent holds {what} {params}", markup=False, highlight=False)
                continue
            dev = inv.device(exp.tier_devices(end)[0])
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



def cmd_run(args: argparse.Namespace) -> int:
    """`testbed run`: the whole run, with a progress bar and the report at the end."""
    from testbed.run import resume as resuming
    from testbed.run.controller import Controller
    from testbed.run.controller import Progress as RunProgress

    resume = None
    if args.resume is not None:
        from testbed.cli.devices import mark_lost_run

        mark_lost_run(args.resume)  # a run whose controller died says running until someone looks
        resume = resuming.load(args.resume)
        args.experiment = Path(resume.manifest.experiment.path)
        args.inventory = Path(resume.manifest.inventory.path)
    elif args.experiment is None:
        raise ConfigError("command line", ["testbed run needs an experiment file, or --resume RUN_DIR"])
    exp, inv = load_all(args.experiment, args.inventory)
    from testbed.devices import shaping

    remote = any(inv.device(d).launcher == "ssh" for d in exp.device_ids())
    _, refusals = shaping.applicable(exp.shaping.links, exp.shaping.backend, remote)
    if refusals:
        raise ConfigError(str(args.experiment), [*refusals, "a run would not be shaped as asked, so it does not "
                                                 "start; `testbed plan` prints the tc commands"])
    bundle = Bundle.load(resolve(Path.cwd(), exp.bundle))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=args.quiet) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(pr: RunProgress) -> None:
            if pr.policy not in tasks:
                tasks[pr.policy] = bar.add_task(f"{pr.policy:<12}", total=pr.total)
            bar.update(tasks[pr.policy], completed=pr.done, total=pr.total)  # phases differ (warmup, probes)

        ctrl = Controller(exp, args.experiment, inv, args.inventory, bundle, args.results, on_progress=on_progress,
                          trust_new_hosts=args.trust_new_hosts, resume=resume)
        if resume is not None:
            err.print(f"run {ctrl.run_id}: resuming in {ctrl.run_dir}, attempt {resume.attempt}: {len(resume.done)} "
                      "rows on disk are replayed to the policies, the rest are issued")
        else:
            err.print(f"run {ctrl.run_id}: results in {ctrl.run_dir}")
        try:
            outcome = ctrl.run()
        except (TestbedError, KeyboardInterrupt):
            err.print(f"rows measured before the stop are in {ctrl.run_dir}")
            raise
    render_summary(outcome.run_dir)
    out.print(f"results: {outcome.run_dir} ({outcome.rows} rows); every table: testbed report --format text")
    try:
        page = write_html_report(outcome.run_dir, outcome.run_dir / "report")
        out.print(f"report page: {page}", highlight=False)
    except Exception as e:  # noqa: BLE001  (the run and its rows are done; the page can be made again)
        err.print(f"the report page was not written ({type(e).__name__}: {e}); `testbed report {outcome.run_dir}` "
                  "makes it", markup=False, highlight=False)
    return 0


def add_commands(sub: Any) -> None:
    """Add ``validate``, ``plan`` and ``run`` to the subparsers ``sub``."""
    def with_experiment(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("experiment", type=Path, help="experiments/<name>.yaml", **(
            {"nargs": "?", "default": None} if name == "run" else {}))
        sp.add_argument("--inventory", type=Path, default=Path("inventory.yaml"), help="default: inventory.yaml")
        sp.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
        return sp

    with_experiment("validate", "check an experiment and the inventory; report every problem at once"
                    ).set_defaults(func=cmd_validate)
    with_experiment("plan", "print what would run where; starts nothing").set_defaults(func=cmd_plan)
    run = with_experiment("run", "run an experiment: start agents, issue samples, write results, report")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                     help="go on with a stopped run (interrupted, failed, lost) in its directory: issue exactly the "
                          "samples without a row, after replaying the rows on disk to the policies")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--trust-new-hosts", action="store_true",
                     help="SSH devices: record unknown host keys in known_hosts instead of refusing")
    run.set_defaults(func=cmd_run)
