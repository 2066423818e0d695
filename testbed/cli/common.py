"""What every command group shares: the consoles and loading an experiment with its inventory."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from testbed import policies
from testbed.checks import check_experiment
from testbed.core.config import Experiment, Inventory, load_experiment, load_inventory
from testbed.core.errors import ConfigError

# Logs and CI are not terminals: give tables room instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

def load_all(exp_path: Path, inv_path: Path) -> tuple[Experiment, Inventory]:
    """Experiment + inventory + semantic checks; every problem of both files in one error."""
    problems: list[ConfigError] = []
    exp = inv = None
    try:
        exp = load_experiment(exp_path, policies.keys_of)
    except ConfigError as e:
        problems.append(e)
    try:
        inv = load_inventory(inv_path)
    except ConfigError as e:
        problems.append(e)
    if exp is not None and inv is not None:
        semantic = check_experiment(exp, inv, Path.cwd())
        if semantic:
            problems.append(ConfigError(str(exp_path), semantic))
    if problems:
        if len(problems) == 1:
            raise problems[0]
        raise ConfigError(" and ".join(e.file for e in problems), [p for e in problems for p in e.problems])
    assert exp is not None and inv is not None
    return exp, inv

