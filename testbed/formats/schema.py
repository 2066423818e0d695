"""The result schema: one column registry, defined once, versioned.

Units live in column names (``_ms``, ``_bytes``, ``_j``); a converted value gets a
new name. The parquet schema, the row check and the docs table are generated from
:data:`COLUMNS`. Pure: no I/O.

Hops: ``controller_mobile`` (sample issued), ``mobile_edge`` and ``edge_cloud``
(offloads, device to device), ``return`` (the finishing tier's answer back to the
controller). Per-tier columns are null for tiers a sample did not visit.

Format history:
    1: first version (2026-11-23).
    2: ``policy_choice`` (the arm or tier a learning or random policy chose).
    3: ``bytes_msg_<hop>`` (whole message), ``bytes_wire_<hop>`` (interface counters) and
       ``energy_batch_<tier>`` (the energy window a sample's energy was shared out of).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from agents.protocol import TIERS
from testbed.core.hops import data_hops, offload_hops

SCHEMA_VERSION = 3
HOPS = tuple(h.column for h in data_hops(TIERS))
# hops whose Work message an agent receives (bytes_msg), and those between devices (bytes_wire)
MSG_HOPS = tuple(h.column for h in data_hops(TIERS) if h.kind != "return")
WIRE_HOPS = tuple(h.column for h in offload_hops(TIERS))
PHASES = ("warmup", "measure")


@dataclass(frozen=True)
class Column:
    """One column: name (with its unit), arrow type, unit, meaning."""

    name: str
    type: pa.DataType
    unit: str
    doc: str
    nullable: bool = False


def _columns() -> list[Column]:
    c = [
        Column("run_id", pa.string(), "", "run directory name"),
        Column("experiment", pa.string(), "", "experiment name"),
        Column("policy", pa.string(), "", "policy key (its label, else its name)"),
        Column("policy_choice", pa.string(), "", "what the policy chose for this sample: SplitEE's arm (L<layer>), "
               "random's or oracle's tier; null for threshold policies", True),
        Column("seq", pa.int64(), "", "issue order within the run"),
        Column("sample_id", pa.int64(), "", "index in the bundle split"),
        Column("split", pa.string(), "", "bundle split the sample comes from"),
        Column("phase", pa.string(), "", "warmup or measure; warmups are kept, never dropped"),
        Column("exit_tier", pa.string(), "", "tier that finished the sample"),
        Column("exit_layer", pa.int64(), "layer", "encoder layer after which it exited (1-based)"),
        Column("tier_path", pa.string(), "", "tiers visited, e.g. mobile>edge"),
        Column("label", pa.int64(), "class", "gold label"),
        Column("prediction", pa.int64(), "class", "predicted class"),
        Column("correct", pa.bool_(), "", "prediction == label"),
        Column("confidence", pa.float64(), "prob", "confidence at the exit: max softmax, or 1 - normalised entropy "
               "for a policy with measure: entropy"),
        Column("latency_ms", pa.float64(), "ms", "end to end as the controller saw it (monotonic clock)"),
        Column("queue_ms", pa.float64(), "ms", "sum over tiers of arrival to compute start (decode + wait)"),
    ]
    for t in TIERS:
        c.append(Column(f"confidence_{t}", pa.float64(), "prob", f"confidence at the {t} exit (the policy's measure)",
                        True))
        c.append(Column(f"compute_ms_{t}", pa.float64(), "ms", f"onnxruntime time on {t}", True))
        c.append(Column(f"queue_ms_{t}", pa.float64(), "ms", f"arrival to compute start on {t}", True))
        c.append(Column(f"device_{t}", pa.string(), "", f"device id of the {t} agent", True))
        c.append(Column(f"energy_j_{t}", pa.float64(), "J", f"energy of the {t} compute window (null: no meter)", True))
        c.append(Column(f"energy_net_j_{t}", pa.float64(), "J",
                        f"energy_j_{t} above the {t} device's measured idle power (null: no baseline)", True))
        c.append(Column(f"energy_approx_{t}", pa.bool_(), "",
                        f"the {t} window was shorter than its meter's update period", True))
        c.append(Column(f"energy_batch_{t}", pa.int64(), "",
                        f"the {t} device's energy window (energy_windows.parquet) this sample's share came from; "
                        "null: a window of its own", True))
    for h in HOPS:
        c.append(Column(f"net_ms_{h}", pa.float64(), "ms",
                        f"hop {h}: send to receive, clocks aligned by the measured offsets", True))
        c.append(Column(f"bytes_{h}", pa.int64(), "bytes", f"tensor payload bytes sent over hop {h}"))
        if h in MSG_HOPS:
            c.append(Column(f"bytes_msg_{h}", pa.int64(), "bytes",
                            f"the whole Work message over hop {h} (tensors and protocol header), as received", True))
        if h in WIRE_HOPS:
            c.append(Column(f"bytes_wire_{h}", pa.int64(), "bytes",
                            f"hop {h}: the receiving device's interface counter (rx bytes) since the previous "
                            "arrival: message, ZMTP framing, TCP/IP and Ethernet headers, retransmits; "
                            "null when that interface also carries other traffic", True))
    c += [
        Column("t_issue_unix_ns", pa.int64(), "ns", "controller wall clock when the sample was issued"),
        Column("energy_j", pa.float64(), "J", "sum of the tiers' compute-window energy (null when no meter)", True),
        Column("energy_net_j", pa.float64(), "J", "sum of the tiers' net energy (null unless every tier has it)", True),
        Column("energy_source", pa.string(), "", "meters of the visited tiers: none, model, rapl; joined by +"),
        Column("energy_approx", pa.bool_(), "", "any tier's window was shorter than its meter's update period"),
    ]
    return c


COLUMNS: list[Column] = _columns()
COLUMN_NAMES: list[str] = [c.name for c in COLUMNS]
ARROW_SCHEMA: pa.Schema = pa.schema(
    [pa.field(c.name, c.type, nullable=c.nullable, metadata={"unit": c.unit, "doc": c.doc}) for c in COLUMNS],
    metadata={"testbed.schema_version": str(SCHEMA_VERSION)},
)


def check_row(row: dict) -> list[str]:
    """Problems with one row: missing or unknown columns, nulls where none are allowed, bad phase."""
    problems = [f"missing column {n}" for n in COLUMN_NAMES if n not in row]
    problems += [f"unknown column {n}" for n in row if n not in COLUMN_NAMES]
    problems += [f"{c.name} is null" for c in COLUMNS if not c.nullable and c.name in row and row[c.name] is None]
    if row.get("phase") not in PHASES:
        problems.append(f"phase {row.get('phase')!r} is not one of {PHASES}")
    return problems


def docs_table() -> str:
    """A Markdown table of the columns, for docs/results.md."""
    lines = ["| column | unit | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{c.name}` | {c.unit} | {c.doc} |" for c in COLUMNS]
    return "\n".join(lines)
