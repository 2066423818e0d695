"""``python -m agents meter``: the check a lab engineer runs on a board before a run.

It opens the meter the agent would open (or the one ``--kind`` names), reads it over a window
of ``--seconds``, and prints one JSON object: ``source``, ``energy_j``, ``duration_s``,
``power_w``, ``rails`` (name -> joules), ``period_s`` (the meter's update or sampling period)
and ``warnings``. ``--root DIR`` reads the sysfs trees under DIR instead of ``/`` (a fixture
of a board's layout, for tests and debugging).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agents.meters import HWMON_ROOT, IIO_ROOT, RAPL_ROOT, MeterError, open_meter

KINDS = ("auto", "rapl", "nvml", "ina", "pmic", "model", "none")


def _under(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to("/")


def check(kind: str = "auto", seconds: float = 1.0, root: Path | None = None) -> dict[str, Any]:
    """Read the meter over one window; the JSON the command prints (``error`` instead when none opens)."""
    try:
        meter = open_meter(kind, rapl_root=_under(root, RAPL_ROOT), hwmon_root=_under(root, HWMON_ROOT),
                           iio_root=_under(root, IIO_ROOT))
    except MeterError as e:
        return {"source": None, "error": str(e), "warnings": [str(e)]}
    try:
        meter.begin("check")
        time.sleep(seconds)
        delta = meter.end("check")
        info = meter.describe()
    finally:
        close = getattr(meter, "close", None)
        if close is not None:
            close()
    warnings = [f"rail {r} unreadable: {why}" for r, why in (info.get("unreadable_rails") or {}).items()]
    if delta.energy_j is None:
        warnings.append(f"meter {delta.source} gives no energy here")
    if delta.approx:
        warnings.append("the window was shorter than the meter's update period: the reading is approximate")
    return {"source": delta.source, "energy_j": delta.energy_j, "duration_s": delta.duration_s,
            "power_w": None if delta.energy_j is None or not delta.duration_s else delta.energy_j / delta.duration_s,
            "rails": delta.rails_j or {}, "period_s": info.get("update_period_s"),
            "achieved_period_s": info.get("achieved_period_s"), "total": info.get("total"),
            "warnings": warnings}


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m agents meter``; prints the JSON object, 1 when no meter opened."""
    ap = argparse.ArgumentParser(prog="python -m agents meter", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of the window (default 1)")
    ap.add_argument("--kind", choices=KINDS, default="auto", help="force a back end (default: what the agent picks)")
    ap.add_argument("--root", type=Path, default=None, help="read sysfs under this directory instead of /")
    args = ap.parse_args(argv)
    out = check(args.kind, args.seconds, args.root)
    print(json.dumps(out, indent=1, sort_keys=True))
    return 1 if out.get("error") else 0
