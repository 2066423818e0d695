"""Batch energy windows: share each window's energy out to its samples. Pure: no I/O.

An agent with ``energy.batch_samples > 1`` (or ``min_window_s > 0``) measures one
energy window over several consecutive samples (first compute start to last compute
end) and reports it as an :class:`agents.protocol.EnergyWindow`. Each sample gets a
share in proportion to its onnxruntime time on that device; the shares of a window
sum to the window's energy exactly (the last share takes the rounding remainder).

A window can reach the controller before or after the Result of a sample in it (the
sample may travel on to other tiers), so rows wait here until every batch stage they
visited has its share, and leave in the order they complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agents.protocol import EnergyWindow
from testbed.run.rows import energy_totals


@dataclass(frozen=True)
class Share:
    """One sample's part of a window."""

    energy_j: float | None
    energy_net_j: float | None
    approx: bool


def _split(total: float, weights: list[int]) -> list[float]:
    """``total`` in proportion to ``weights`` (equal parts when they are all zero); sums to ``total``."""
    n = len(weights)
    wsum = sum(weights)
    parts = [total * (w / wsum if wsum > 0 else 1 / n) for w in weights]
    if parts:
        parts[-1] = total - sum(parts[:-1])
    return parts


def shares(window: EnergyWindow) -> dict[int, Share]:
    """Each sample's share of ``window``, keyed by run_seq."""
    if len(window.run_seqs) != len(window.compute_ns):
        raise ValueError(f"window {window.batch} of {window.agent_id}: {len(window.run_seqs)} samples but "
                         f"{len(window.compute_ns)} compute times")
    out: dict[int, Share] = {}
    energy = None if math.isnan(window.energy_j) else _split(window.energy_j, window.compute_ns)
    net = None if math.isnan(window.energy_net_j) else _split(window.energy_net_j, window.compute_ns)
    for i, seq in enumerate(window.run_seqs):
        out[seq] = Share(energy[i] if energy else None, net[i] if net else None, window.approx)
    return out


def window_record(window: EnergyWindow, offset_ns: int) -> dict[str, Any]:
    """One row of ``energy_windows.parquet``: the raw window, its stamps on the controller's clock."""
    return {"device": window.agent_id, "batch": window.batch,
            "start_unix_ns": window.start_ns - offset_ns, "end_unix_ns": window.end_ns - offset_ns,
            "duration_ms": (window.end_ns - window.start_ns) / 1e6,
            "energy_j": None if math.isnan(window.energy_j) else window.energy_j,
            "energy_net_j": None if math.isnan(window.energy_net_j) else window.energy_net_j,
            "energy_approx": window.approx, "samples": len(window.run_seqs),
            "compute_ms_sum": sum(window.compute_ns) / 1e6, "run_seqs": list(window.run_seqs)}


class EnergyLedger:
    """Rows waiting for their batch windows, and windows waiting for their rows."""

    def __init__(self) -> None:
        self._shares: dict[tuple[str, int, int], Share] = {}  # (device, batch, seq)
        self._waiting: dict[int, dict[str, Any]] = {}  # seq -> row
        self.windows = 0

    @property
    def pending(self) -> int:
        """Rows still waiting for a window."""
        return len(self._waiting)

    def add_row(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows complete now: ``row`` itself unless one of its tiers' windows has not been reported."""
        self._waiting[row["seq"]] = row
        return self._complete([row["seq"]])

    def add_window(self, window: EnergyWindow) -> list[dict[str, Any]]:
        """Record a window's shares; returns the waiting rows it completes."""
        self.windows += 1
        for seq, share in shares(window).items():
            self._shares[(window.agent_id, window.batch, seq)] = share
        return self._complete(list(window.run_seqs))

    def drain(self) -> list[dict[str, Any]]:
        """Every row still waiting, its missing shares left null (the run ends without those windows)."""
        rows = [self._waiting.pop(seq) for seq in sorted(self._waiting)]
        for row in rows:
            energy_totals(row)
        return rows

    def _complete(self, seqs: list[int]) -> list[dict[str, Any]]:
        done = []
        for seq in seqs:
            row = self._waiting.get(seq)
            if row is None:
                continue
            tiers = row["tier_path"].split(">")
            keys = {t: (row[f"device_{t}"], row[f"energy_batch_{t}"], seq) for t in tiers
                    if row[f"energy_batch_{t}"] is not None}
            if not all(k in self._shares for k in keys.values()):
                continue
            for t, k in keys.items():
                share = self._shares.pop(k)
                row[f"energy_j_{t}"] = share.energy_j
                row[f"energy_net_j_{t}"] = share.energy_net_j
                row[f"energy_approx_{t}"] = share.approx
            energy_totals(row)
            done.append(self._waiting.pop(seq))
        return done
