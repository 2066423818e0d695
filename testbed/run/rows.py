"""Turn one finished sample (its stages and the controller's stamps) into a result row.

Pure. Agents stamp with their own wall clock; ``offsets_ns[device]`` (agent clock
minus controller clock, measured by ping at the start of the run) puts every stamp
on the controller's clock before hop times are taken.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any

from agents.protocol import Result, Stage
from testbed.core.hops import CONTROLLER, Hop
from testbed.formats import schema

NS_PER_MS = 1e6


def confidences(stages: list[Stage]) -> dict[str, float]:
    """What a policy learns from an answered sample: each tier's confidence, and each layer's (``L<k>``).

    The layers' confidences come from the tiers that ran a chain of layer graphs.
    """
    out: dict[str, float] = {}
    for s in stages:
        out[s.tier] = s.confidence
        if s.layer_confidences:
            first = s.layer - len(s.layer_confidences) + 1
            out |= {f"L{first + j}": float(c) for j, c in enumerate(s.layer_confidences)}
    return out


@dataclass(frozen=True)
class Issued:
    """What the controller knows of a sample it issued."""

    seq: int
    sample_id: int
    label: int
    phase: str
    policy: str
    issue_mono_ns: int
    issue_wall_ns: int
    bytes_in: int
    choice: str | None = None
    source: str = ""  # the first-tier device it was issued to
    due_mono_ns: int | None = None  # when the load scenario scheduled it (None: when it was issued)


def build_row(
    result: Result,
    issued: Issued,
    recv_mono_ns: int,
    recv_wall_ns: int,
    offsets_ns: dict[str, int],
    exit_layers: dict[str, int],
    context: dict[str, Any],
    tier_layers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One row of the result schema of the run's tiers (``exit_layers``' keys, in order).

    ``tier_layers``: the layers each tier's graph runs (the bundle's), for stages of tier graphs;
    a stage of a chain of layer graphs says itself which layers it ran. ``context`` holds run_id,
    experiment, split and ``energy_sources`` (device -> meter source).
    A row's energy is null unless every tier it visited had a meter.
    """
    stages = result.stages
    last = stages[-1]
    due = issued.issue_mono_ns if issued.due_mono_ns is None else issued.due_mono_ns
    prediction = int(result.logits.argmax(axis=-1)[0])
    row: dict[str, Any] = {
        **{k: context[k] for k in ("run_id", "experiment", "split")},
        "policy": issued.policy, "policy_choice": issued.choice,
        "seq": issued.seq, "sample_id": issued.sample_id, "phase": issued.phase,
        "exit_tier": last.tier, "exit_layer": last.layer or exit_layers[last.tier],
        "tier_path": ">".join(s.tier for s in stages),
        "label": issued.label, "prediction": prediction, "correct": prediction == issued.label,
        "confidence": last.confidence,
        "latency_ms": (recv_mono_ns - issued.issue_mono_ns) / NS_PER_MS,
        "latency_scheduled_ms": (recv_mono_ns - due) / NS_PER_MS,
        "t_issue_unix_ns": issued.issue_wall_ns,
        "t_scheduled_unix_ns": issued.issue_wall_ns - (issued.issue_mono_ns - due),
        "policy_feedback": json.dumps(confidences(stages), separators=(",", ":")),
    }
    row |= _unvisited(tuple(exit_layers))

    def on_ctrl(stamp_ns: int, device: str) -> int:
        return stamp_ns - offsets_ns.get(device, 0)

    prev_send = issued.issue_wall_ns
    queue_total = 0.0
    for i, s in enumerate(stages):
        hop = Hop(CONTROLLER if i == 0 else stages[i - 1].tier, s.tier).column
        row[f"net_ms_{hop}"] = (on_ctrl(s.recv_ns, s.device) - prev_send) / NS_PER_MS
        row[f"bytes_{hop}"] = issued.bytes_in if i == 0 else stages[i - 1].bytes_out
        row[f"bytes_msg_{hop}"] = s.frame_bytes_in
        if i > 0 and s.wire_in_bytes >= 0:
            row[f"bytes_wire_{hop}"] = s.wire_in_bytes
        queue = (s.start_ns - s.recv_ns) / NS_PER_MS
        queue_total += queue
        row[f"confidence_{s.tier}"] = s.confidence
        row[f"compute_ms_{s.tier}"] = (s.end_ns - s.start_ns) / NS_PER_MS
        row[f"queue_ms_{s.tier}"] = queue
        row[f"throttled_ms_{s.tier}"] = None if s.throttled_ms < 0 else s.throttled_ms
        row[f"device_{s.tier}"] = s.device
        row[f"t_recv_agent_ns_{s.tier}"], row[f"t_send_agent_ns_{s.tier}"] = s.recv_ns, s.send_ns
        row[f"layers_{s.tier}"] = len(s.layer_confidences) if s.layer_confidences else (tier_layers or {}).get(
            s.tier)
        row[f"energy_j_{s.tier}"] = None if math.isnan(s.energy_j) else s.energy_j
        row[f"energy_net_j_{s.tier}"] = None if math.isnan(s.energy_net_j) else s.energy_net_j
        row[f"energy_approx_{s.tier}"] = s.energy_approx
        if s.energy_batch >= 0:  # shared out of a batch window later (testbed.run.energy.EnergyLedger)
            row[f"energy_batch_{s.tier}"] = s.energy_batch
            row[f"energy_approx_{s.tier}"] = None
        prev_send = on_ctrl(s.send_ns, s.device)
    row["net_ms_return"] = (recv_wall_ns - prev_send) / NS_PER_MS
    row["t_return_unix_ns"] = recv_wall_ns
    row["bytes_return"] = last.bytes_out
    row["queue_ms"] = queue_total
    sources = context.get("energy_sources", {})
    row["energy_source"] = "+".join(sorted({sources.get(s.device, "none") for s in stages}))
    energy_totals(row)
    return row


@functools.cache
def _unvisited_cached(tiers: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    cols = schema.for_tiers(tiers)
    out: list[tuple[str, Any]] = []
    for tier in cols.tiers:
        out += [(f"{col}_{tier}", None) for col in (
            "confidence", "compute_ms", "queue_ms", "throttled_ms", "device", "layers", "t_recv_agent_ns",
            "t_send_agent_ns", "energy_j", "energy_net_j", "energy_approx", "energy_batch")]
    out += [(f"net_ms_{hop}", None) for hop in cols.hops] + [(f"bytes_{hop}", 0) for hop in cols.hops]
    out += [(f"bytes_msg_{hop}", None) for hop in cols.msg_hops]
    out += [(f"bytes_wire_{hop}", None) for hop in cols.wire_hops]
    return tuple(out)


def _unvisited(tiers: tuple[str, ...]) -> dict[str, Any]:
    """Every per-tier and per-hop column as for a tier the sample did not visit (null; no bytes)."""
    return dict(_unvisited_cached(tiers))


def energy_totals(row: dict[str, Any]) -> None:
    """Set ``energy_j``, ``energy_net_j`` and ``energy_approx`` from the visited tiers' columns."""
    tiers = row["tier_path"].split(">")
    for col in ("energy_j", "energy_net_j"):
        parts = [row[f"{col}_{t}"] for t in tiers]
        row[col] = None if any(e is None for e in parts) else sum(parts)
    row["energy_approx"] = any(bool(row[f"energy_approx_{t}"]) for t in tiers)


def clock_offset_ns(samples: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(offset, rtt) from ping samples (t_send, t_agent, t_recv), all ns: the min-RTT sample wins.

    offset = t_agent - midpoint(t_send, t_recv), the NTP estimate; its error is at most rtt/2.
    """
    if not samples:
        raise ValueError("no ping samples")
    t0, ta, t1 = min(samples, key=lambda s: s[2] - s[0])
    return ta - (t0 + t1) // 2, t1 - t0
