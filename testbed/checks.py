"""Checks of an experiment against its environment: the inventory, the bundle on disk, a cost presets file.

:mod:`testbed.core.config` validates what the files say; this module checks what they
refer to, so reading the disk stays out of the models. ``testbed validate`` runs both.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from agents.protocol import TIERS
from testbed import policies
from testbed.core.config import CostSpec, Experiment, Inventory, resolve, shaping_problems, suggest
from testbed.core.costmodel import HOPS, PRESETS
from testbed.core.errors import BundleError
from testbed.formats.bundle import Bundle


def check_experiment(exp: Experiment, inv: Inventory, base: Path) -> list[str]:
    """Semantic checks that need the inventory, the bundle and the policy registry; returns problems."""
    problems: list[str] = []
    if sorted(exp.devices) != sorted(TIERS):
        problems.append(f"devices: tiers {sorted(exp.devices)} given; name one device for each of {list(TIERS)}")
    ids = [d.id for d in inv.devices]
    for tier, dev_id in exp.devices.items():
        if tier not in TIERS:
            problems.append(f"devices.{tier}: unknown tier{suggest(tier, list(TIERS))}")
            continue
        try:
            dev = inv.device(dev_id)
        except KeyError:
            problems.append(f"devices.{tier}: device {dev_id!r} is not in the inventory{suggest(dev_id, ids)}")
            continue
        if dev.tier != tier:
            problems.append(f"devices.{tier}: device {dev_id!r} is a {dev.tier} device in the inventory, "
                            f"not {tier}; pick a {tier} device or fix its tier")
    if len(set(exp.devices.values())) != len(exp.devices):
        problems.append("devices: one device serves two tiers; each tier needs its own agent")
    problems += _bundle_problems(exp, base)
    problems += _cost_problems(exp.cost)
    problems += shaping_problems(exp.shaping)
    keys: set[str] = set()
    for i, pol in enumerate(exp.policies):
        problems += [f"policies[{i}]{p}" for p in policies.check(pol)]
        if pol.key in keys:
            problems.append(f"policies[{i}]: policy {pol.key!r} appears twice; give one a different label")
        keys.add(pol.key)
    return problems


def _cost_problems(cost: CostSpec) -> list[str]:
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
    for key, allowed in (("lam", list(TIERS)), ("o", list(HOPS))):
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


def _bundle_problems(exp: Experiment, base: Path) -> list[str]:
    """The bundle exists, has every file it names, and the split holds the samples asked for."""
    root = resolve(base, exp.bundle)
    if not (root / "bundle.yaml").is_file():
        return [f"bundle: {exp.bundle!r} has no bundle.yaml ({root / 'bundle.yaml'}); build it with "
                "`testbed partition --config partitions/specs/<name>.yaml` (or `make bundle`)"]
    try:
        bundle = Bundle.load(root)
    except BundleError as e:
        return [f"bundle: {e}"]
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
