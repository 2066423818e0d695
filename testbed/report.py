"""The report of a run: tables built from its rows and manifest. Pure: no printing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from testbed import stats


@dataclass(frozen=True)
class Report:
    """Everything ``testbed report`` shows."""

    title: str
    summary: pd.DataFrame
    hops: pd.DataFrame
    advice: list[str]
    notes: list[str]


def build(df: pd.DataFrame, manifest: dict[str, Any], complete: bool) -> Report:
    """Summaries, hop medians, quality advice and notes about where numbers come from."""
    notes = []
    if not complete:
        notes.append("INCOMPLETE run: rows come from parts flushed before the run stopped")
    status = manifest.get("status")
    if status != "complete":
        notes.append(f"run status: {status}; error: {manifest.get('error')}")
    exits = manifest.get("bundle", {}).get("exits", {})
    if exits:
        notes.append("bundle exit accuracy on its test split: "
                     + ", ".join(f"{t} {e['test_accuracy']:.3f}" for t, e in exits.items()))
    meters = manifest.get("energy", {}).get("meters", {})
    for device, m in (meters.items() if isinstance(meters, dict) else []):
        notes.append("energy meter " + meter_line(device, m, df))
    notes.append(f"shaping: {manifest.get('shaping', {}).get('backend', 'none')}")
    warm = int((df["phase"] == "warmup").sum())
    notes.append(f"{len(df) - warm} measured rows, {warm} warmup rows (kept in the parquet, left out here)")
    title = f"{manifest.get('experiment', {}).get('resolved', {}).get('name', '?')} / {manifest.get('run_id', '?')}"
    return Report(title, stats.summarise(df), stats.hop_summary(df), stats.quality_checks(df), notes)


def meter_line(device: str, meter: dict[str, Any], df: pd.DataFrame) -> str:
    """One line per meter: source, update period, share of its windows that were approximate."""
    source = meter.get("source", "none")
    text = f"{device}: {source}" + (" (MODELLED, not measured)" if source == "model" else "")
    period = meter.get("update_period_s")
    if period:
        text += f", update period {period * 1e3:.2f} ms"
    flags = [df.loc[df[f"device_{t}"] == device, f"energy_approx_{t}"]
             for t in ("mobile", "edge", "cloud") if f"energy_approx_{t}" in df]
    windows = pd.concat(flags).dropna() if flags else pd.Series(dtype=bool)
    if source != "none" and len(windows):
        text += f", {windows.astype(bool).mean():.1%} of {len(windows)} windows approximate"
    return text
