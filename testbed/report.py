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
    if isinstance(meters, dict) and meters:
        parts = []
        for device, m in meters.items():
            label = m.get("source", "none") + (" (MODELLED, not measured)" if m.get("source") == "model" else "")
            period = m.get("update_period_s")
            parts.append(f"{device}: {label}" + (f", update period {period * 1e3:.2f} ms" if period else ""))
        notes.append("energy meters: " + "; ".join(parts))
    if "energy_approx" in df and len(df):
        notes.append(f"energy windows shorter than their meter's update period: {df['energy_approx'].mean():.1%}")
    notes.append(f"shaping: {manifest.get('shaping', {}).get('backend', 'none')}")
    warm = int((df["phase"] == "warmup").sum())
    notes.append(f"{len(df) - warm} measured rows, {warm} warmup rows (kept in the parquet, left out here)")
    title = f"{manifest.get('experiment', {}).get('resolved', {}).get('name', '?')} / {manifest.get('run_id', '?')}"
    return Report(title, stats.summarise(df), stats.hop_summary(df), stats.quality_checks(df), notes)
