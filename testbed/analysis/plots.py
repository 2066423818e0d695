"""Figures of a run, written as PNG files next to it. Reads result files; draws; never measures.

matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def timeline_marks(run_dir: Path, device: str, t0_ns: int, df: pd.DataFrame | None = None,
                   shaping: dict[str, Any] | None = None, cpu: dict[str, Any] | None = None) -> pd.DataFrame:
    """What happened during a device's power timeline, in seconds from its first sample.

    ``phase``: each policy's warmup and measured samples (first to last issue); ``link step``:
    each link schedule step applied (the manifest's ``shaping.schedule_applied``); ``cpu step``: each
    CPU cap put on or lifted from this device (``cpu.applied``); ``throttled``:
    each thermal sample of the device whose throttle flags were set (``thermal_<device>.parquet``).
    """
    marks: list[dict[str, Any]] = []
    if df is not None and len(df) and "t_issue_unix_ns" in df:
        for (policy, phase), g in df.groupby(["policy", "phase"], sort=False):
            t = g["t_issue_unix_ns"].to_numpy(np.int64)
            marks.append({"kind": "phase", "label": f"{policy} {phase}", "start_s": (t.min() - t0_ns) / 1e9,
                          "end_s": (t.max() - t0_ns) / 1e9})
    for step in (shaping or {}).get("schedule_applied") or []:
        at = (int(step["unix_ns"]) - t0_ns) / 1e9
        marks.append({"kind": "link step", "label": f"{step['hop']} step {step['step']}", "start_s": at, "end_s": at})
    for step in (cpu or {}).get("applied") or []:
        if step["device"] == device:
            at = (int(step["unix_ns"]) - t0_ns) / 1e9
            what = "lifted" if step["lift"] else f"{step['kind']} {step['value']:g}"
            marks.append({"kind": "cpu step", "label": f"cpu {what}", "start_s": at, "end_s": at})
    thermal = run_dir / f"thermal_{device}.parquet"
    if thermal.is_file():
        th = pq.read_table(thermal).to_pandas()
        hot = th[th["throttled_flags"] > 0]
        for t, flags in zip(hot["t_unix_ns"], hot["throttled_flags"], strict=True):
            at = (int(t) - t0_ns) / 1e9
            marks.append({"kind": "throttled", "label": f"flags {int(flags):#x}", "start_s": at, "end_s": at})
    return pd.DataFrame(marks, columns=["kind", "label", "start_s", "end_s"])


def _draw_marks(ax: Any, marks: pd.DataFrame) -> None:
    """Phases as shaded spans (alternating grey, labelled), link steps dashed, CPU steps dotted, throttling ticks."""
    phases = marks[marks["kind"] == "phase"]
    for i, (label, start, end) in enumerate(zip(phases["label"], phases["start_s"].astype(float),
                                                  phases["end_s"].astype(float), strict=True)):
        ax.axvspan(start, max(end, start + 1e-3), color="0.85" if i % 2 else "0.93", zorder=0)
        ax.text(start, 1.0, str(label), transform=ax.get_xaxis_transform(), fontsize=6, rotation=90,
                va="top", ha="left", color="0.3")
    for at in marks.loc[marks["kind"] == "link step", "start_s"].astype(float):
        ax.axvline(at, color="#0072B2", linestyle="--", linewidth=1)
    for at in marks.loc[marks["kind"] == "cpu step", "start_s"].astype(float):
        ax.axvline(at, color="#009E73", linestyle=":", linewidth=1.5)
    hot = marks[marks["kind"] == "throttled"]
    if len(hot):
        ax.plot(hot["start_s"], np.full(len(hot), 0.02), "|", color="#D55E00", markersize=12,
                transform=ax.get_xaxis_transform(), label="throttled")


def power_timelines(run_dir: Path, out_dir: Path, df: pd.DataFrame | None = None,
                    shaping: dict[str, Any] | None = None, cpu: dict[str, Any] | None = None) -> list[Path]:
    """One PNG per ``power_<device>.parquet``: watts per rail over the run, in seconds from its start.

    With the run's rows (``df``) and the manifest's ``shaping`` and ``cpu`` sections, the policies'
    phases, the link and CPU schedule steps and the device's throttling are marked (:func:`timeline_marks`); the
    watts and the marks are written as CSV beside the PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for path in sorted(run_dir.glob("power_*.parquet")):
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        device = meta.get(b"testbed.device", path.stem.removeprefix("power_").encode()).decode()
        source = meta.get(b"testbed.energy_source", b"?").decode()
        t = table.column("t_unix_ns").to_numpy()
        if len(t) == 0:
            continue
        seconds = (t - t[0]) / 1e9
        marks = timeline_marks(run_dir, device, int(t[0]), df, shaping, cpu)
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        _draw_marks(ax, marks)
        rails = [n for n in table.column_names if n.startswith("power_w_")]
        for name in rails:
            ax.plot(seconds, table.column(name).to_numpy(), label=name.removeprefix("power_w_"), linewidth=0.8)
        ax.set_xlabel("time since the first sample (s)")
        ax.set_ylabel("power (W)")
        ax.set_title(f"{device}: power timeline ({source}, {len(t)} samples)")
        ax.legend(loc="upper right", fontsize="small")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"power_{device}.png"
        fig.savefig(target)
        plt.close(fig)
        pd.DataFrame({"t_s": seconds, **{n: table.column(n).to_numpy() for n in rails}}).to_csv(
            target.with_suffix(".csv"), index=False)
        marks.to_csv(out_dir / f"power_{device}_marks.csv", index=False)
        written.append(target)
    return written
