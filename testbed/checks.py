"""Checks of an experiment against its environment: the inventory, the bundle on disk, a cost presets file.

:mod:`testbed.core.config` validates what the files say; this module checks what they
refer to, so reading the disk stays out of the models. ``testbed validate`` runs both.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from testbed import policies
from testbed.core.config import CostSpec, Experiment, Inventory, resolve, shaping_problems, suggest
from testbed.core.costmodel import PRESETS, offload_links
from testbed.core.errors import BundleError
from testbed.formats.bundle import Bundle


def check_experiment(exp: Experiment, inv: Inventory, base: Path) -> list[str]:
    """Semantic checks that need the inventory, the bundle and the policy registry; returns problems."""
    bundle, problems = _load_bundle(exp, base)
    # the run's tiers are the bundle's; without a bundle, check the rest against the experiment's own
    tiers = bundle.tiers if bundle is not None else tuple(exp.devices)
    problems += _device_problems(exp, inv, tiers, bundle is not None)
    if bundle is not None:
        problems += _bundle_problems(exp, bundle)
    problems += _cost_problems(exp.cost, tiers)
    if exp.run.scenario == "server" and exp.run.rate_per_s is None:
        problems.append("run.rate_per_s: the server scenario needs a target rate (arrivals per second of each "
                        "first-tier device)")
    if exp.run.scenario == "server" and exp.topology.issue != "round-robin":
        problems.append(f"topology.issue: {exp.topology.issue!r} with the server scenario, whose arrivals are each "
                        "device's own Poisson process; use round-robin (the default) or another scenario")
    if exp.run.rate_per_s is not None and exp.run.scenario != "server":
        problems.append(f"run.rate_per_s: only the server scenario has a target rate; this run is "
                        f"{exp.run.scenario!r} (set run.scenario: server, or drop rate_per_s)")
    problems += shaping_problems(exp.shaping, tiers) + _cpu_problems(exp, tiers)
    keys: set[str] = set()
    for i, pol in enumerate(exp.policies):
        problems += [f"policies[{i}]{p}" for p in policies.check(pol, tiers)]
        if pol.key in keys:
            problems.append(f"policies[{i}]: policy {pol.key!r} appears twice; give one a different label")
        keys.add(pol.key)
    return problems


def _device_problems(exp: Experiment, inv: Inventory, tiers: tuple[str, ...], from_bundle: bool) -> list[str]:
    """One inventory device of the right tier for each of the run's tiers."""
    problems = []
    if from_bundle and sorted(exp.devices) != sorted(tiers):
        problems.append(f"devices: tiers {sorted(exp.devices)} given, but the bundle {exp.bundle!r} has tiers "
                        f"{list(tiers)}; name one device for each of them")
    ids = [d.id for d in inv.devices]
    for tier in exp.devices:
        if tier not in tiers:
            problems.append(f"devices.{tier}: not a tier of the bundle{suggest(tier, list(tiers))}")
            continue
        given = exp.tier_devices(tier)
        if not given:
            problems.append(f"devices.{tier}: an empty list; name one device or several")
        for j, dev_id in enumerate(given):
            where = f"devices.{tier}" + (f"[{j}]" if isinstance(exp.devices[tier], list) else "")
            try:
                dev = inv.device(dev_id)
            except KeyError:
                problems.append(f"{where}: device {dev_id!r} is not in the inventory{suggest(dev_id, ids)}")
                continue
            if dev.tier != tier:
                problems.append(f"{where}: device {dev_id!r} is a {dev.tier} device in the inventory, "
                                f"not {tier}; pick a {tier} device or fix its tier")
    all_ids = exp.device_ids()
    twice = sorted({d for d in all_ids if all_ids.count(d) > 1})
    if twice:
        problems.append(f"devices: {', '.join(twice)} named more than once; each place in the topology needs its "
                        "own agent")
    return problems + _topology_problems(exp, tiers)


def _topology_problems(exp: Experiment, tiers: tuple[str, ...]) -> list[str]:
    """An explicit assignment names every device with a next tier once, each to a device of that next tier."""
    assign = exp.topology.assign
    problems = []
    if isinstance(assign, dict):
        known = [t for t in tiers if t in exp.devices]
        for i, tier in enumerate(known[:-1]):
            nxt = exp.tier_devices(known[i + 1])
            for dev in exp.tier_devices(tier):
                if dev not in assign:
                    problems.append(f"topology.assign: {dev} ({tier}) has no device of {known[i + 1]} to offload to; "
                                    f"add `{dev}: <one of {nxt}>`")
                elif assign[dev] not in nxt:
                    problems.append(f"topology.assign.{dev}: {assign[dev]!r} is not a {known[i + 1]} device of this "
                                    f"experiment{suggest(assign[dev], nxt)}")
        last = set(exp.tier_devices(known[-1])) if known else set()
        problems += [f"topology.assign.{d}: {d} is on the last tier, or not in devices; it sends nothing on"
                     for d in assign if d in last or d not in exp.device_ids()]
    return problems


def _cpu_problems(exp: Experiment, tiers: tuple[str, ...]) -> list[str]:
    """Each CPU step names a device of the run (or a tier of it), in time order."""
    problems = []
    names = exp.device_ids() + [t for t in tiers if t in exp.devices]
    last = -1.0
    for i, step in enumerate(exp.cpu.schedule):
        if step.device not in names:
            problems.append(f"cpu.schedule[{i}].device: {step.device!r} is neither a device nor a tier of this "
                            f"experiment{suggest(step.device, names)}")
        if step.at_s < last:
            problems.append(f"cpu.schedule[{i}].at_s: {step.at_s} comes before {last}; give the steps in time order")
        last = step.at_s
    return problems


def _cost_problems(cost: CostSpec, tiers: tuple[str, ...]) -> list[str]:
    problems = []
    if cost.file:
        path = Path(cost.file)
        try:
            names = list((yaml.safe_load(path.read_text()) or {}).get("presets", {}))
        except (OSError, yaml.YAMLError, AttributeError) as e:
            return [f"cost.file: cannot read {cost.file!r} ({e}); give the cost_presets.yaml `testbed calibrate` wrote"]
        if cost.preset not in names:
            problems.append(f"cost.preset: {cost.preset!r} is not in {cost.file} (it has {names})"
                            f"{suggest(cost.preset, names)}")
    elif cost.preset not in PRESETS:
        problems.append(f"cost.preset: unknown preset {cost.preset!r}{suggest(cost.preset, list(PRESETS))}")
    else:
        missing = PRESETS[cost.preset].with_values(cost.lam, cost.o).missing(tiers)
        if missing:
            problems.append(f"cost: preset {cost.preset!r} has no value for {', '.join(missing)} in a run with tiers "
                            f"{', '.join(tiers)}; give them under cost.lam / cost.o")
    for key, allowed in (("lam", list(tiers)), ("o", offload_links(tiers))):
        for k, v in (getattr(cost, key) or {}).items():
            if k not in allowed:
                problems.append(f"cost.{key}.{k}: not one of {allowed}{suggest(k, allowed)}")
            elif v < 0:
                problems.append(f"cost.{key}.{k}: {v} is negative; costs are >= 0")
    for key in ("sweep_o", "sweep_lam"):
        for i, v in enumerate(getattr(cost, key) or []):
            if v < 0:
                problems.append(f"cost.{key}[{i}]: {v} is negative; costs are >= 0")
    return problems


def _load_bundle(exp: Experiment, base: Path) -> tuple[Bundle | None, list[str]]:
    root = resolve(base, exp.bundle)
    if not (root / "bundle.yaml").is_file():
        return None, [f"bundle: {exp.bundle!r} has no bundle.yaml ({root / 'bundle.yaml'}); build it with "
                      f"`{_build_command(base, exp.bundle)}`"]
    try:
        return Bundle.load(root), []
    except BundleError as e:
        return None, [f"bundle: {e}"]


def _build_command(base: Path, bundle: str) -> str:
    """The command that builds ``bundle``: the spec under partitions/specs whose ``out`` it is, if one is."""
    for spec in sorted((base / "partitions" / "specs").glob("*.yaml")):
        try:
            out = (yaml.safe_load(spec.read_text()) or {}).get("out")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if out and resolve(base, str(out)) == resolve(base, bundle):
            return f"testbed partition --config {spec.relative_to(base)}"
    return "testbed partition --config partitions/specs/<name>.yaml"


def _bundle_problems(exp: Experiment, bundle: Bundle) -> list[str]:
    """The bundle has every file it names, and the split holds the samples asked for."""
    problems = []
    missing = bundle.missing_files()
    if missing:
        problems.append(f"bundle: {exp.bundle!r} lacks {', '.join(missing)}; rebuild it with `testbed partition`")
    for i, pol in enumerate(exp.policies):
        problems += [f"policies[{i}]{p}" for p in policies.bundle_problems(pol, bundle)]
    splits = bundle.spec.data.splits
    if exp.samples.split not in splits:
        problems.append(f"samples.split: {exp.samples.split!r} is not a split of the bundle"
                        f"{suggest(exp.samples.split, list(splits))}")
    elif exp.samples.count is not None and exp.samples.count > splits[exp.samples.split]:
        problems.append(f"samples.count: {exp.samples.count} but split {exp.samples.split!r} has "
                        f"{splits[exp.samples.split]} samples; lower it or omit it to use them all")
    return problems
