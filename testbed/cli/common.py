"""What every command group shares: the consoles and loading an experiment with its inventory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from testbed import policies
from testbed.checks import check_experiment
from testbed.core.config import Experiment, Inventory, load_experiment, load_inventory
from testbed.core.errors import ConfigError

# Logs and CI are not terminals: give tables room instead of rich's 80-column default ($COLUMNS wins).
_WIDTH = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
out = Console(width=None if sys.stdout.isatty() else _WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else _WIDTH)


def _col_width(col: object) -> int:
    cells = [str(c) for c in getattr(col, "cells", [])]
    return max([cell_len(str(getattr(col, "header", ""))), *map(cell_len, cells)]) + 3  # padding and a rule


def print_fitted(table: Table, keys: int = 1) -> None:
    """Print ``table`` within the console's width: too wide, its columns go into several tables in turn.

    Each part repeats the first ``keys`` columns (policy, tier) so a row can be read across parts;
    a column too wide on its own is wrapped by rich within the width.
    """
    width = out.width
    if Measurement.get(out, out.options.update_width(10_000), table).maximum <= width:
        out.print(table)
        return
    head, rest = table.columns[:keys], table.columns[keys:]
    base = sum(_col_width(c) for c in head) + 1
    parts: list[list] = [[]]
    used = base
    for col in rest:
        w = _col_width(col)
        if parts[-1] and used + w > width:
            parts.append([])
            used = base
        parts[-1].append(col)
        used += w
    styles = [r.style for r in table.rows]
    for i, part in enumerate(parts):
        cols = [*head, *part]
        t = Table(title=table.title if i == 0 else f"(continued, {i + 1} of {len(parts)})")
        for c in cols:
            t.add_column(c.header, justify=c.justify)
        for j, cells in enumerate(zip(*[list(c.cells) for c in cols], strict=True)):
            t.add_row(*cells, style=styles[j] if j < len(styles) else None)
        out.print(t)

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

