"""Figures of a run, written as PNG files next to it. Reads result files; draws; never measures.

matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq


def power_timelines(run_dir: Path, out_dir: Path) -> list[Path]:
    """One PNG per ``power_<device>.parquet``: watts per rail over the run, in seconds from its start."""
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
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        for name in table.column_names:
            if name.startswith("power_w_"):
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
        written.append(target)
    return written
