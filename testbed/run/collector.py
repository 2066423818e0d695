"""Where measured rows go: built from Results, completed by energy windows, written, never lost.

:class:`Collector` turns each Result into a row (on the controller's clock), holds rows that
wait for a batch energy window (:class:`~testbed.run.energy.EnergyLedger`), writes every
completed row through the :class:`~testbed.formats.results.RunWriter`, and keeps the raw
windows and power timelines that are written beside the rows at the end.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from agents import protocol as p
from testbed.formats.results import RunWriter, write_energy_windows, write_power_timeline, write_thermal
from testbed.run.energy import EnergyLedger, window_record
from testbed.run.rows import Issued, build_row
from testbed.run.transport import Received


class Collector:
    """Rows of one run, from Results and energy windows to the run directory.

    Set once the agents' clocks are aligned: ``offsets`` (device id -> its clock offset, ns) and
    ``context`` (the columns every row shares: run id, experiment, split, energy sources by device).
    """

    def __init__(self, writer: RunWriter, exit_layers: dict[str, int], tier_layers: dict[str, int] | None = None):
        self.writer = writer
        self.tier_layers = tier_layers or {}  # the layers each tier graph runs (the bundle's)
        self.exit_layers = exit_layers  # the run's tiers in order, each with its exit's layer
        self.tiers = tuple(exit_layers)
        self.ledger = EnergyLedger()
        self.windows: list[dict[str, Any]] = []  # energy_windows.parquet
        self.timelines: dict[str, dict[str, Any]] = {}  # device -> what its power timeline file holds
        self.thermals: dict[str, dict[str, Any]] = {}  # device -> its thermal file, hottest zones, throttling
        self.offsets: dict[str, int] = {}
        self.context: dict[str, Any] = {}
        self.sink: list[dict[str, Any]] | None = None  # rows completed while a flush is awaited

    def _write(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            self.writer.append(row)
        if self.sink is not None:
            self.sink += rows
        return rows

    def result(self, got: Received, msg: p.Result, issued: Issued) -> list[dict[str, Any]]:
        """The row of an answered sample, written now unless it waits for its energy window."""
        row = build_row(msg, issued, got.mono_ns, got.wall_ns, self.offsets, self.exit_layers, self.context,
                        self.tier_layers)
        return self._write(self.ledger.add_row(row))

    def window(self, msg: p.EnergyWindow) -> list[dict[str, Any]]:
        """Keep a batch window (for energy_windows.parquet) and write the rows it completes."""
        self.windows.append(window_record(msg, self.offsets.get(msg.agent_id, 0)))
        return self._write(self.ledger.add_window(msg))

    def timeline(self, msg: p.Timeline) -> None:
        """Write a device's power timeline beside the rows, on the controller's clock."""
        offset = self.offsets.get(msg.agent_id, 0)
        t_unix_ns = (msg.times_s * 1e9).astype(np.int64) + msg.wall_minus_mono_ns - offset
        path = write_power_timeline(self.writer.run_dir, msg.agent_id, t_unix_ns, msg.rails_w, msg.source)
        self.timelines[msg.agent_id] = {"file": path.name, "source": msg.source, "samples": len(msg.times_s),
                                        "rails": sorted(msg.rails_w)}

    def thermal(self, msg: p.Thermal) -> None:
        """Write a device's temperatures and throttle flags beside the rows, on the controller's clock."""
        offset = self.offsets.get(msg.agent_id, 0)
        t_unix_ns = (msg.times_s * 1e9).astype(np.int64) + msg.wall_minus_mono_ns - offset
        path = write_thermal(self.writer.run_dir, msg.agent_id, t_unix_ns, msg.temps_c, msg.throttled)
        flags = [int(f) for f in msg.throttled if f >= 0]
        hottest = {z: float(np.nanmax(v)) for z, v in msg.temps_c.items() if len(v) and not np.isnan(v).all()}
        self.thermals[msg.agent_id] = {
            "file": path.name, "samples": len(msg.times_s), "max_temp_c": hottest,
            "throttled_samples": sum(1 for f in flags if f & p.THROTTLED_NOW),
            "flags_seen": f"0x{functools.reduce(operator.or_, flags):x}" if flags else None}

    def late(self, got: Received) -> None:
        """A message that arrived while the agents were stopping."""
        if isinstance(got.msg, p.Timeline):
            self.timeline(got.msg)
        elif isinstance(got.msg, p.Thermal):
            self.thermal(got.msg)
        elif isinstance(got.msg, p.EnergyWindow):
            self.window(got.msg)

    def finish(self) -> dict[str, Any] | None:
        """Rows still waiting for a window go out with that energy null; the raw windows go beside the rows.

        Returns the manifest's ``energy.batch_windows`` record, or None when there were no windows.
        """
        left = self.ledger.drain()
        self._write(left)
        if not self.windows and not left:
            return None
        rec: dict[str, Any] = {"count": len(self.windows), "rows_without_their_window": len(left)}
        if self.windows:
            rec["file"] = write_energy_windows(self.writer.run_dir, self.windows).name
        return rec
