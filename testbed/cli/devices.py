"""CLI commands for real and emulated devices: deploy, preflight, clean, emulate up/down.

Commands whose inventory names ``controller.netns`` (an emulation's) run inside that
namespace: :func:`maybe_enter_netns` re-executes the command there with ``ip netns exec``,
so the controller has the emulation's links as its routes and nothing can leave the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from agents.protocol import DEFAULT_TIERS, tier_name_problem
from testbed.core.errors import ConfigError, RouteError, TestbedError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ENTERED_ENV = "TESTBED_NETNS_ENTERED"


# --------------------------------------------------------------------------- namespaces


def _inventory_netns(path: Path) -> str | None:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return (data.get("controller") or {}).get("netns")
    except (OSError, yaml.YAMLError, AttributeError):
        return None  # the command itself reports an unreadable inventory


def _records_netns(paths: list[Path]) -> str | None:
    for run_dir in paths:
        try:
            m = json.loads((run_dir / "manifest.json").read_text())
            ns = m["inventory"]["resolved"]["controller"].get("netns")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ns:
            return ns
    return None


def netns_of(args: argparse.Namespace) -> str | None:
    """The namespace a command must run in, if any."""
    if args.command in ("run", "deploy", "preflight"):
        return _inventory_netns(args.inventory)
    if args.command == "clean":
        return _records_netns(record_dirs(args.run_dir, args.results))
    return None


def maybe_enter_netns(args: argparse.Namespace, argv: list[str]) -> None:
    """Re-execute this command inside the namespace it must run in (does not return when it does)."""
    from testbed.devices.routes import current_netns_matches, netns_exists

    ns = netns_of(args)
    if ns is None or current_netns_matches(ns):
        return
    if os.environ.get(ENTERED_ENV) == ns:
        raise RouteError(f"entered network namespace {ns!r} but this process is not in it; run the command with "
                         f"`ip netns exec {ns} ...`")
    if not netns_exists(ns):
        raise RouteError(f"the inventory's controller.netns {ns!r} does not exist: the emulation is down. Run "
                         "`testbed emulate up --inventory FILE` first (nothing was sent anywhere)")
    env = {**os.environ, ENTERED_ENV: ns}
    try:
        os.execvpe("ip", ["ip", "netns", "exec", ns, sys.executable, "-m", "testbed.cli", *argv], env)
    except OSError as e:
        raise RouteError(f"cannot enter network namespace {ns!r} ({e}); this needs root and iproute2") from e


# --------------------------------------------------------------------------- deploy / preflight


def _devices(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from testbed.cli.common import load_all
    from testbed.core.config import resolve
    from testbed.formats.bundle import Bundle

    exp, inv = load_all(args.experiment, args.inventory)
    bundle = Bundle.load(resolve(Path.cwd(), exp.bundle))
    return exp, inv, bundle


def cmd_deploy(args: argparse.Namespace) -> int:
    """`testbed deploy`: preflight and push to every SSH device of the experiment; starts nothing."""
    from testbed.devices.fleet import Fleet
    from testbed.devices.owned import Ownership
    from testbed.formats.results import new_run_id

    exp, inv, bundle = _devices(args)
    deploy_id = new_run_id()
    rec_dir = args.results / "_deploys" / exp.name / deploy_id
    fleet = Fleet(exp, inv, bundle, rec_dir, deploy_id, Ownership(rec_dir), args.trust_new_hosts,
                  exp_path=args.experiment)
    if not fleet.remote:
        out.print("every device of this experiment is local: nothing to deploy")
        return 0
    try:
        fleet.connect_all()
    finally:
        for r in fleet.remotes.values():
            r.close()
        (rec_dir / "deploy.json").parent.mkdir(parents=True, exist_ok=True)
        (rec_dir / "deploy.json").write_text(json.dumps(fleet.record(), indent=1, default=str))
    table = Table(title=f"deploy of {args.experiment}")
    for col in ("device", "host", "workdir", "pushed", "skipped", "MB pushed", "s"):
        table.add_column(col)
    for d, dep in fleet.deploys.items():
        table.add_row(d, dep.host, dep.workdir, str(len(dep.push.pushed)), str(len(dep.push.skipped)),
                      f"{dep.push.bytes_pushed / 1e6:.1f}", f"{dep.push.seconds:.2f}")
    out.print(table)
    out.print(f"ownership record: {rec_dir / 'owned.json'} (`testbed clean {rec_dir}` removes what was pushed)")
    return 0


def _preflight_device(d: Any, bundle: Any, trust_new_hosts: bool, want_backend: str | None,
                      max_offset_ms: float) -> tuple[str, dict[str, Any], str, list[str]]:
    """Probe one device: (how it was reached, its facts, the files column, its problems)."""
    from testbed.devices.deploy import HASHES_PY, deploy_files, preflight, preflight_problems, run_py, target_of
    from testbed.devices.ssh import LocalRemote, SshRemote

    remote: Any
    if d.launcher == "ssh":
        remote, reach = SshRemote(target_of(d), trust_new_hosts), f"ssh {d.host}:{d.port}"
    else:
        remote, reach = LocalRemote(d.id), "local"
    try:
        facts = preflight(remote, d if d.launcher == "ssh" else d.model_copy(
            update={"python": d.python or sys.executable, "workdir": d.workdir or "."}))
        files = deploy_files(bundle, d.tier)
        if d.launcher == "ssh":
            have = run_py(remote, d.python or "python3", HASHES_PY, facts["workdir"],
                          stdin=json.dumps(sorted(files)).encode())
            same = sum(1 for rel, (_, sha) in files.items() if have.get(rel) == sha)
            need = sum(p.stat().st_size for rel, (p, sha) in files.items() if have.get(rel) != sha)
            files_col = f"{same}/{len(files)} in place"
        else:
            need, files_col = 0, "local bundle"
    finally:
        remote.close()
    problems = preflight_problems(d, facts, need, max_offset_ms, want_backend if d.launcher == "ssh" else None)
    return reach, facts, files_col, problems


def _facts_cells(facts: dict[str, Any]) -> list[str]:
    """The python .. meters columns of a device's preflight row."""
    mods = facts.get("modules", {})
    return [
        facts.get("python", "?"),
        ("missing " + ", ".join(m.split(" ")[0] for m in facts["missing"])) if facts.get("missing")
        else f"onnxruntime {mods.get('onnxruntime')}, pyzmq {mods.get('zmq')}",
        f"{(facts.get('disk_free_bytes') or 0) / 1e9:.1f} GB"]


def _state_cells(facts: dict[str, Any]) -> list[str]:
    """The clock .. meters columns of a device's preflight row."""
    return [f"{facts.get('clock_offset_ms', 0):+.1f} ms", str(facts.get("governor") or "-"),
            f"{facts['temp_c_max']:.0f} C" if facts.get("temp_c_max") is not None else "-",
            "yes" if facts.get("netem") else "no", ", ".join(facts.get("meters") or []) or "none (model/null)"]


def _preflight_controller(exp: Any, want_backend: str | None, table: Table) -> list[str]:
    """The controller's own end of its shaped links (tc runs here); adds its row, returns its problems."""
    from testbed.devices import shaping
    from testbed.devices.deploy import shaping_facts
    from testbed.devices.fleet import controller_problems
    from testbed.devices.ssh import LocalRemote

    if not want_backend or not shaping.controller_needs(exp.shaping.links, want_backend):
        return []
    try:
        facts = shaping_facts(LocalRemote("controller"), sys.executable)
        problems = controller_problems(facts, exp.shaping.links, want_backend)
    except TestbedError as e:
        facts, problems = {}, [f"controller (this machine): {e}"]
    table.add_row("controller (here)", "-", "local", platform.python_version(), "", "", "", "", "", "",
                  "yes" if facts.get("netem") else "no", "", "[red]FAIL[/red]" if problems else "[green]ok[/green]")
    return problems


def cmd_preflight(args: argparse.Namespace) -> int:
    """`testbed preflight`: per device, what a run needs and what the device has; non-zero if a check fails."""
    from testbed.devices import shaping
    from testbed.devices.routes import check_routes

    exp, inv, bundle = _devices(args)
    ssh_run = any(inv.device(d).launcher == "ssh" for d in exp.device_ids())
    chosen, _ = shaping.applicable(exp.shaping.links, exp.shaping.backend, ssh_run)
    want_backend = chosen if chosen in ("netem", "userspace") else None
    table = Table(title=f"preflight of {args.experiment} ({args.inventory})")
    for col in ("device", "tier", "reach", "python", "agent deps", "disk free", "files", "clock off",
                "governor", "temp", "netem", "meters", "result"):
        table.add_column(col, overflow="fold")
    failed: list[str] = []
    for tier, dev_id in ((t, d) for t in exp.devices for d in exp.tier_devices(t)):
        d = inv.device(dev_id)
        try:
            if d.launcher == "ssh":
                check_routes(inv, {d.id: [d.host]})
            reach, facts, files_col, problems = _preflight_device(d, bundle, args.trust_new_hosts, want_backend,
                                                                  exp.deploy.max_clock_offset_ms)
        except TestbedError as e:
            table.add_row(d.id, tier, "[red]no[/red]", "", "", "", "", "", "", "", "", "", "[red]FAIL[/red]")
            failed.append(f"{d.id}: {e}")
            continue
        failed += problems
        table.add_row(d.id, tier, reach, *_facts_cells(facts), files_col, *_state_cells(facts),
                      "[red]FAIL[/red]" if problems else "[green]ok[/green]")
    if ssh_run:
        failed += _preflight_controller(exp, want_backend, table)
    out.print(table)
    for f in failed:
        err.print(f"  {f}", markup=False, highlight=False)
    if failed:
        err.print(f"preflight failed: {len(failed)} problem(s)", style="red")
        return 11
    out.print("preflight: every check passed")
    return 0


# --------------------------------------------------------------------------- clean


def mark_lost_run(run_dir: Path) -> None:
    """Mark the run ``lost`` when its manifest says running but its controller on this host is gone (said here)."""
    from testbed.devices.owned import proc_starttime
    from testbed.formats import results

    if not (run_dir / "manifest.json").is_file():
        return
    for what in results.restore_rescued(run_dir):  # rows a full disk could not take, now that it has room
        err.print(f"{run_dir.name}: restored {what}", markup=False, highlight=False)
    before = results.load_manifest(run_dir).status
    m = results.mark_lost(run_dir, lambda pid, start: proc_starttime(pid) is not None and proc_starttime(pid) == start)
    if m.status == "lost" and before != "lost":
        err.print(f"{run_dir.name}: marked lost: {m.error}", style="yellow", markup=False, highlight=False)


def record_dirs(run_dir: Path | None, results: Path) -> list[Path]:
    """The run directories to clean: the one given, or every one under ``results`` with an ownership record."""
    from testbed.devices.owned import RECORD

    if run_dir is not None:
        return [run_dir]
    return sorted({p.parent for p in results.rglob(RECORD)}) if results.is_dir() else []


def cmd_clean(args: argparse.Namespace) -> int:
    """`testbed clean [RUN_DIR]`: undo what the run's ownership record says it made, and nothing else."""
    from testbed.devices.deploy import undo_remote
    from testbed.devices.owned import RECORD, Ownership, clean, undo_local
    from testbed.devices.ssh import LocalRemote, SshRemote, SshTarget

    dirs = record_dirs(args.run_dir, args.results)
    if args.run_dir is not None and not (args.run_dir / RECORD).is_file():
        raise ConfigError(str(args.run_dir), [f"no {RECORD} here: not a run directory of this testbed, or a run "
                                              "from before ownership records; nothing was touched"])
    remotes: dict[tuple[Any, ...], Any] = {}

    def undo(entry: dict[str, Any]) -> str:
        where = entry["where"]
        if where.get("local") and entry["kind"] == "qdisc":  # the controller's end of its link with a device
            return undo_remote(entry, LocalRemote("controller"))
        if where.get("local"):
            return undo_local(entry)
        key = (where["host"], where["port"], where.get("user"))
        if key not in remotes:
            remotes[key] = SshRemote(SshTarget(**where))
        return undo_remote(entry, remotes[key])

    failures = 0
    touched_any = False
    for d in dirs:
        mark_lost_run(d)
        rec = Ownership(d)
        if not rec.live():
            continue
        for entry, state, note in clean(rec, undo, keep_files=args.keep_files):
            touched_any = True
            what = entry.get("path") or (f"pid {entry.get('pid')}" if entry["kind"] == "process" else
                                         f"{entry.get('qdisc')} {entry.get('handle')} on {entry.get('dev')}")
            host = "local" if entry["where"].get("local") else entry["where"].get("host")
            style = "red" if state == "failed" else None
            out.print(f"{d.name}: {entry['kind']} {what} on {host}: {state}{(' (' + note + ')') if note else ''}",
                      style=style, markup=False, highlight=False)
            failures += state == "failed"
    for r in remotes.values():
        r.close()
    if not touched_any:
        out.print("nothing to clean: every recorded process, file and qdisc is already undone")
    if failures:
        err.print(f"{failures} entr{'y' if failures == 1 else 'ies'} could not be undone now; they stay in the record "
                  "and the next `testbed clean` tries again", style="red")
        return 12
    return 0


# --------------------------------------------------------------------------- emulate


def _parse_cpu(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    outp = {}
    for part in text.split(","):
        tier, _, value = part.partition("=")
        try:
            outp[tier.strip()] = float(value)
        except ValueError:
            raise ConfigError("--cpu", [f"{part!r}: expected TIER=CORES, e.g. mobile=0.25"]) from None
    return outp


def _parse_tiers(text: str) -> tuple[str, ...]:
    tiers = tuple(t.strip() for t in text.split(","))
    problems = [e for t in tiers if (e := tier_name_problem(t))]
    if len(tiers) < 2 or len(set(tiers)) != len(tiers):
        problems.append(f"{text!r}: give two or more distinct tiers in the order a sample crosses them, "
                        "e.g. mobile,edge,cloud or mobile,cloud")
    if problems:
        raise ConfigError("--tiers", problems)
    return tiers


def _parse_counts(text: str | None, tiers: tuple[str, ...]) -> dict[str, int]:
    """``--devices mobile=3,edge=2``: devices per tier (1 where not named)."""
    counts: dict[str, int] = {}
    problems = []
    for part in (text or "").split(",") if text else []:
        tier, _, value = part.partition("=")
        tier = tier.strip()
        if tier not in tiers:
            problems.append(f"{part!r}: {tier!r} is not one of the emulated tiers {list(tiers)}")
        elif not value.strip().isdigit() or not 1 <= int(value) <= 16:
            problems.append(f"{part!r}: expected TIER=N with N from 1 to 16, e.g. mobile=3")
        else:
            counts[tier] = int(value)
    if problems:
        raise ConfigError("--devices", problems)
    return counts


def cmd_emulate_up(args: argparse.Namespace) -> int:
    """`testbed emulate up`: namespaces, links, sshd and CPU caps; writes the inventory."""
    from testbed.devices.emulate import Emulation

    tiers = _parse_tiers(args.tiers)
    emu = Emulation(args.state_dir, args.prefix, args.subnet, tiers, _parse_counts(args.devices, tiers))
    state = emu.up(args.inventory, _parse_cpu(args.cpu), args.python)
    sshd = ", ".join(f"{t} ({s['listen']})" for t, s in state["sshd"].items())
    out.print(f"emulation up: namespaces {', '.join(state['netns'])}; sshd in {sshd}; CPU caps {state['cpu_caps']} "
              f"{state['cpu']}", highlight=False)
    out.print(f"inventory written to {args.inventory}; run: testbed run experiments/emulated.yaml --inventory "
              f"{args.inventory}", highlight=False)
    return 0


def cmd_emulate_down(args: argparse.Namespace) -> int:
    """`testbed emulate down`: remove everything ``up`` made."""
    from testbed.devices.emulate import Emulation

    removed = Emulation(args.state_dir, args.prefix, args.subnet).down()
    out.print("emulation down: " + (", ".join(removed) if removed else "nothing was up"), highlight=False)
    return 0


def add_commands(sub: Any) -> None:
    """Register deploy, preflight, clean and emulate on the CLI's subparsers."""
    from testbed.devices.emulate import DEFAULT_PREFIX, DEFAULT_STATE, DEFAULT_SUBNET

    def exp_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("experiment", type=Path, help="experiments/<name>.yaml")
        sp.add_argument("--inventory", type=Path, default=Path("inventory.yaml"), help="default: inventory.yaml")
        sp.add_argument("--results", type=Path, default=Path("results"), help="results root (default: results)")
        sp.add_argument("--trust-new-hosts", action="store_true",
                        help="record unknown host keys in known_hosts instead of refusing")
        return sp

    exp_cmd("deploy", "check the experiment's SSH devices and push the agent and the bundle files that changed"
            ).set_defaults(func=cmd_deploy)
    exp_cmd("preflight", "per device: reachable, versions, files, clock offset, governor, thermal, shaping, meters"
            ).set_defaults(func=cmd_preflight)
    cl = sub.add_parser("clean", help="undo what runs recorded in their ownership records (processes, qdiscs, files)")
    cl.add_argument("run_dir", type=Path, nargs="?", default=None,
                    help="one run directory (default: every run under --results with something left)")
    cl.add_argument("--results", type=Path, default=Path("results"))
    cl.add_argument("--keep-files", action="store_true", help="leave deployed files (the next deploy skips them)")
    cl.set_defaults(func=cmd_clean)
    em = sub.add_parser("emulate", help="a one-machine testbed of real hosts: network namespaces, sshd, CPU caps")
    esub = em.add_subparsers(dest="emulate_command", required=True, metavar="ACTION")
    for name, func, help_ in (("up", cmd_emulate_up, "create namespaces, links, sshd, CPU caps; write an inventory"),
                              ("down", cmd_emulate_down, "remove everything `up` made")):
        sp = esub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help=f"default: {DEFAULT_STATE}")
        sp.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
        sp.add_argument("--subnet", default=DEFAULT_SUBNET, help="first three octets of the emulation's /24")
        if name == "up":
            sp.add_argument("--inventory", type=Path, default=Path("inventory.emulated.yaml"),
                            help="where to write the inventory (default: inventory.emulated.yaml)")
            sp.add_argument("--cpu", default=None, help="CPU cores per tier, e.g. mobile=0.25,edge=0.5,cloud=1")
            sp.add_argument("--python", default=None, help="the devices' Python (default: this one)")
            sp.add_argument("--devices", default=None, help="devices per tier where more than one, e.g. mobile=3 "
                            "(devices mobile1-emu..mobile3-emu, each linked to the controller and to every device "
                            "of the next tier)")
            sp.add_argument("--tiers", default=",".join(DEFAULT_TIERS),
                            help="the emulated tiers in order (default: mobile,edge,cloud; the bundle's, e.g. "
                                 "mobile,cloud for a two-tier run)")
        sp.set_defaults(func=func)
