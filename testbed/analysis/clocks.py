"""Hop times derived again from the rows' raw stamps, with clock offsets that follow the drift.

A run measures each agent's clock offset before the samples (the rows' hop times use it) and
again after them. Where the two differ, the offset at a moment in between is the straight line
between the two measurements; :func:`drift_corrected` derives every ``net_ms_<hop>`` again from
the raw agent stamps (``t_recv_agent_ns_<tier>``, ``t_send_agent_ns_<tier>``, schema 6) with
that offset. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from testbed.core.hops import CONTROLLER, Hop
from testbed.formats import schema


@dataclass(frozen=True)
class OffsetLine:
    """A device's clock offset (agent minus controller, ns) as a line through two measurements."""

    t0_unix_ns: int
    offset0_ns: int
    t1_unix_ns: int
    offset1_ns: int

    def at(self, t_unix_ns: np.ndarray) -> np.ndarray:
        """The offset at these controller times (held at the ends outside the two measurements)."""
        return np.interp(t_unix_ns.astype(float), [self.t0_unix_ns, self.t1_unix_ns],
                         [self.offset0_ns, self.offset1_ns])


def offset_lines(agents: dict[str, dict[str, Any]]) -> dict[str, OffsetLine]:
    """Per device, the line through its two offset measurements (devices measured once are left out)."""
    out = {}
    for device, rec in agents.items():
        keys = ("clock_measured_unix_ns", "clock_offset_ns", "clock_measured_end_unix_ns", "clock_offset_end_ns")
        if all(rec.get(k) is not None for k in keys) and rec["clock_measured_end_unix_ns"] > rec[keys[0]]:
            out[device] = OffsetLine(*(int(rec[k]) for k in keys))
    return out


def drift_corrected(df: pd.DataFrame, lines: dict[str, OffsetLine]) -> pd.DataFrame:
    """A copy of ``df`` whose ``net_ms_<hop>`` come from the raw stamps and the drifting offsets.

    Hops of devices without a line keep their times; so does a frame without raw stamps
    (written before schema 6).
    """
    tiers = schema.tiers_in(df.columns)
    if not lines or not len(df) or f"t_recv_agent_ns_{tiers[0]}" not in df.columns:
        return df
    out = df.copy()
    for path, rows in df.groupby("tier_path", sort=False):
        prev_send = rows["t_issue_unix_ns"].to_numpy(dtype=float)
        prev_tier = CONTROLLER
        for tier in str(path).split(">"):
            recv = rows[f"t_recv_agent_ns_{tier}"].to_numpy(dtype=float)
            offset = _offsets(rows[f"device_{tier}"].to_numpy(), recv, lines)
            col = f"net_ms_{Hop(prev_tier, tier).column}"
            fixed = ~np.isnan(offset) & ~np.isnan(prev_send)
            if col in out.columns and fixed.any():
                out.loc[rows.index[fixed], col] = ((recv - offset) - prev_send)[fixed] / 1e6
            prev_send = rows[f"t_send_agent_ns_{tier}"].to_numpy(dtype=float) - offset
            prev_tier = tier
        ret = rows["t_return_unix_ns"].to_numpy(dtype=float) if "t_return_unix_ns" in rows else None
        if ret is not None:
            fixed = ~np.isnan(prev_send) & ~np.isnan(ret)
            out.loc[rows.index[fixed], "net_ms_return"] = (ret - prev_send)[fixed] / 1e6
    return out


def _offsets(devices: np.ndarray, stamps: np.ndarray, lines: dict[str, OffsetLine]) -> np.ndarray:
    """Each row's offset at its stamp (an agent's stamp is within ms of the controller's: the line is flat there)."""
    offset = np.full(len(devices), np.nan)
    for device, line in lines.items():
        mine = devices == device
        offset[mine] = line.at(stamps[mine])
    return offset
