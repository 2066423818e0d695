"""The result schema: one column registry, defined once per set of tiers, versioned.

Units live in column names (``_ms``, ``_bytes``, ``_j``); a converted value gets a
new name. The parquet schema, the row check and the docs table are generated from
:class:`ResultSchema`. Pure: no I/O.

A run's tiers (its bundle's, in order) decide the per-tier and per-hop columns. With the
default tiers the hops are ``controller_mobile`` (sample issued), ``mobile_edge`` and
``edge_cloud`` (offloads, device to device) and ``return`` (the finishing tier's answer
back to the controller); a two-tier run of ``mobile`` and ``cloud`` has ``mobile_cloud``
instead of the two offloads. Per-tier columns are null for tiers a sample did not visit.

Format history:
    1: first version (2026-11-23).
    2: ``policy_choice`` (the arm or tier a learning or random policy chose).
    3: ``bytes_msg_<hop>`` (whole message), ``bytes_wire_<hop>`` (interface counters) and
       ``energy_batch_<tier>`` (the energy window a sample's energy was shared out of).
    4: the tiers are the run's (two or more, named by the bundle), recorded in the file's metadata
       (``testbed.tiers``); a file without it has the three tiers mobile, edge, cloud.
    5: ``layers_<tier>``: the layers each tier ran for the sample (a split can fall inside a tier);
       ``exit_layer`` is the layer the sample exited at, wherever that is.
    6: raw stamps: ``t_recv_agent_ns_<tier>`` and ``t_send_agent_ns_<tier>`` (the agent's own wall
       clock, uncorrected) and ``t_return_unix_ns`` (the controller's, at the answer), so hop times
       can be derived again with other clock offsets (``testbed.analysis.clocks``); ``policy_feedback``
       (what the policy learned from the sample, so ``testbed run --resume`` can feed it back);
       ``latency_scheduled_ms`` and ``t_scheduled_unix_ns`` (the load scenario's schedule).
    7: ``phase`` may be ``probe``: samples an adaptive policy issues through every tier to measure the
       resources again after a link or CPU schedule step (like warmups, not measured samples);
       ``throttled_ms_<tier>``: the time a CPU cap held that tier's agent throttled since its previous
       sample left (null: the run put no cap on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import pyarrow as pa

from agents.protocol import DEFAULT_TIERS
from testbed.core.hops import data_hops, offload_hops

SCHEMA_VERSION = 7
PHASES = ("warmup", "measure", "probe")
#: parquet metadata keys
VERSION_KEY, TIERS_KEY = "testbed.schema_version", "testbed.tiers"


@dataclass(frozen=True)
class Column:
    """One column: name (with its unit), arrow type, unit, meaning."""

    name: str
    type: pa.DataType
    unit: str
    doc: str
    nullable: bool = False


def _columns(tiers: tuple[str, ...], hops: tuple[str, ...], msg_hops: tuple[str, ...],
             wire_hops: tuple[str, ...]) -> list[Column]:
    c = [
        Column("run_id", pa.string(), "", "run directory name"),
        Column("experiment", pa.string(), "", "experiment name"),
        Column("policy", pa.string(), "", "policy key (its label, else its name)"),
        Column("policy_choice", pa.string(), "", "what the policy chose for this sample: SplitEE's arm (L<layer>), "
               "random's or oracle's tier; null for threshold policies", True),
        Column("seq", pa.int64(), "", "issue order within the run"),
        Column("sample_id", pa.int64(), "", "index in the bundle split"),
        Column("split", pa.string(), "", "bundle split the sample comes from"),
        Column("phase", pa.string(), "", "warmup, measure or probe (an adaptive policy measuring the resources "
               "again); warmups and probes are kept, never dropped"),
        Column("exit_tier", pa.string(), "", "tier that finished the sample"),
        Column("exit_layer", pa.int64(), "layer", "layer after which it exited (1-based)"),
        Column("tier_path", pa.string(), "", "tiers visited, e.g. mobile>edge"),
        Column("label", pa.int64(), "class", "gold label"),
        Column("prediction", pa.int64(), "class", "predicted class"),
        Column("correct", pa.bool_(), "", "prediction == label"),
        Column("confidence", pa.float64(), "prob", "confidence at the exit: max softmax, or 1 - normalised entropy "
               "for a policy with measure: entropy"),
        Column("latency_ms", pa.float64(), "ms", "end to end as the controller saw it (monotonic clock)"),
        Column("latency_scheduled_ms", pa.float64(), "ms", "from the time the load scenario scheduled the sample "
               "to its answer: latency_ms plus any wait at the controller (server: arrivals a busy system could not "
               "take yet); equal to latency_ms when issued on time"),
        Column("policy_feedback", pa.string(), "", "what the policy learned from the sample: the confidence at each "
               "tier and layer it reached, JSON (`testbed run --resume` feeds it back)", True),
        Column("queue_ms", pa.float64(), "ms", "sum over tiers of arrival to compute start (decode + wait)"),
    ]
    for t in tiers:
        c.append(Column(f"confidence_{t}", pa.float64(), "prob", f"confidence at the {t} exit (the policy's measure)",
                        True))
        c.append(Column(f"compute_ms_{t}", pa.float64(), "ms", f"onnxruntime time on {t}", True))
        c.append(Column(f"queue_ms_{t}", pa.float64(), "ms", f"arrival to compute start on {t}", True))
        c.append(Column(f"throttled_ms_{t}", pa.float64(), "ms", f"time a CPU cap held the {t} agent throttled since "
                        "its previous sample left (cgroup cpu.stat; null: no cap opened on it)", True))
        c.append(Column(f"device_{t}", pa.string(), "", f"device id of the {t} agent", True))
        c.append(Column(f"layers_{t}", pa.int64(), "layers", f"layers the {t} tier ran for the sample (null: it "
                        "did not run it)", True))
        c.append(Column(f"t_recv_agent_ns_{t}", pa.int64(), "ns", f"when the {t} agent received the sample, on its "
                        "own wall clock (raw: no offset applied)", True))
        c.append(Column(f"t_send_agent_ns_{t}", pa.int64(), "ns", f"when the {t} agent sent it on or answered, on its "
                        "own wall clock (raw)", True))
        c.append(Column(f"energy_j_{t}", pa.float64(), "J", f"energy of the {t} compute window (null: no meter)", True))
        c.append(Column(f"energy_net_j_{t}", pa.float64(), "J",
                        f"energy_j_{t} above the {t} device's measured idle power (null: no baseline)", True))
        c.append(Column(f"energy_approx_{t}", pa.bool_(), "",
                        f"the {t} window was shorter than its meter's update period", True))
        c.append(Column(f"energy_batch_{t}", pa.int64(), "",
                        f"the {t} device's energy window (energy_windows.parquet) this sample's share came from; "
                        "null: a window of its own", True))
    for h in hops:
        c.append(Column(f"net_ms_{h}", pa.float64(), "ms",
                        f"hop {h}: send to receive, clocks aligned by the measured offsets", True))
        c.append(Column(f"bytes_{h}", pa.int64(), "bytes", f"tensor payload bytes sent over hop {h}"))
        if h in msg_hops:
            c.append(Column(f"bytes_msg_{h}", pa.int64(), "bytes",
                            f"the whole Work message over hop {h} (tensors and protocol header), as received", True))
        if h in wire_hops:
            c.append(Column(f"bytes_wire_{h}", pa.int64(), "bytes",
                            f"hop {h}: the receiving device's interface counter (rx bytes) since the previous "
                            "arrival: message, ZMTP framing, TCP/IP and Ethernet headers, retransmits; "
                            "null when that interface also carries other traffic", True))
    c += [
        Column("t_issue_unix_ns", pa.int64(), "ns", "controller wall clock when the sample was issued"),
        Column("t_return_unix_ns", pa.int64(), "ns", "controller wall clock when the answer arrived", True),
        Column("t_scheduled_unix_ns", pa.int64(), "ns", "controller wall clock when the load scenario scheduled "
               "the sample (at or before t_issue_unix_ns)"),
        Column("energy_j", pa.float64(), "J", "sum of the tiers' compute-window energy (null when no meter)", True),
        Column("energy_net_j", pa.float64(), "J", "sum of the tiers' net energy (null unless every tier has it)", True),
        Column("energy_source", pa.string(), "", "meters of the visited tiers: none, model, rapl; joined by +"),
        Column("energy_approx", pa.bool_(), "", "any tier's window was shorter than its meter's update period"),
    ]
    return c


@dataclass(frozen=True)
class ResultSchema:
    """The columns of a run with these tiers (in the order a sample crosses them).

    ``hops``: every hop's column stem; ``msg_hops``: those whose Work message an agent receives
    (``bytes_msg_*``); ``wire_hops``: those between devices (``bytes_wire_*``).
    """

    tiers: tuple[str, ...]
    hops: tuple[str, ...] = field(init=False)
    msg_hops: tuple[str, ...] = field(init=False)
    wire_hops: tuple[str, ...] = field(init=False)
    columns: tuple[Column, ...] = field(init=False)
    name_set: frozenset[str] = field(init=False, repr=False, compare=False)
    required: tuple[str, ...] = field(init=False, repr=False, compare=False)  # columns that may not be null

    def __post_init__(self) -> None:
        if len(self.tiers) < 2 or len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"tiers {list(self.tiers)}: a run needs two or more distinct tiers")
        hops = data_hops(self.tiers)
        set_ = object.__setattr__  # a frozen dataclass sets its derived fields once, here
        set_(self, "hops", tuple(h.column for h in hops))
        set_(self, "msg_hops", tuple(h.column for h in hops if h.kind != "return"))
        set_(self, "wire_hops", tuple(h.column for h in offload_hops(self.tiers)))
        set_(self, "columns", tuple(_columns(self.tiers, self.hops, self.msg_hops, self.wire_hops)))
        set_(self, "name_set", frozenset(c.name for c in self.columns))
        set_(self, "required", tuple(c.name for c in self.columns if not c.nullable))

    @property
    def names(self) -> list[str]:
        """Column names, in order."""
        return [c.name for c in self.columns]

    @property
    def arrow(self) -> pa.Schema:
        """The parquet schema, with each column's unit and meaning, the schema version and the tiers."""
        return pa.schema(
            [pa.field(c.name, c.type, nullable=c.nullable, metadata={"unit": c.unit, "doc": c.doc})
             for c in self.columns],
            metadata={VERSION_KEY: str(SCHEMA_VERSION), TIERS_KEY: ",".join(self.tiers)})

    def check_row(self, row: dict) -> list[str]:
        """Problems with one row: missing or unknown columns, nulls where none are allowed, bad phase.

        The common case (a good row) costs one comparison of key sets and one pass over the
        columns that may not be null; the problems are spelled out only when there are some.
        """
        names, required = self.name_set, self.required
        problems: list[str] = []
        if row.keys() != names:
            problems += [f"missing column {n}" for n in self.names if n not in row]
            problems += [f"unknown column {n}" for n in row if n not in names]
        problems += [f"{n} is null" for n in required if n in row and row[n] is None]
        if row.get("phase") not in PHASES:
            problems.append(f"phase {row.get('phase')!r} is not one of {PHASES}")
        return problems

    def docs_table(self) -> str:
        """A Markdown table of the columns, for docs/results.md."""
        lines = ["| column | unit | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{c.name}` | {c.unit} | {c.doc} |" for c in self.columns]
        return "\n".join(lines)


def for_tiers(tiers: Sequence[str]) -> ResultSchema:
    """The schema of a run with these tiers (one object per set of tiers)."""
    return _schema(tuple(tiers))


@cache
def _schema(tiers: tuple[str, ...]) -> ResultSchema:
    return ResultSchema(tiers)


def tiers_of(metadata: dict[bytes, bytes] | None) -> tuple[str, ...]:
    """The tiers a parquet file's metadata names; mobile, edge, cloud for a file from before format 4."""
    raw = (metadata or {}).get(TIERS_KEY.encode())
    return tuple(raw.decode().split(",")) if raw else DEFAULT_TIERS


def tiers_in(columns: Iterable[str]) -> tuple[str, ...]:
    """The tiers of a results frame, in order, read off its hop columns.

    ``bytes_controller_<first>`` names the first tier and each ``bytes_<a>_<b>`` the next; a frame
    without them falls back on its per-tier columns (``device_<tier>``, in column order).
    """
    names = list(columns)
    present = set(names)
    firsts = [c.removeprefix("bytes_controller_") for c in names if c.startswith("bytes_controller_")]
    tiers = firsts[:1]
    while tiers:
        after = [c.split("_")[2] for c in present if c.startswith(f"bytes_{tiers[-1]}_") and c.count("_") == 2]
        if len(after) != 1 or after[0] in tiers:
            break
        tiers.append(after[0])
    if len(tiers) >= 2:
        return tuple(tiers)
    return tuple(c.removeprefix("device_") for c in names if c.startswith("device_"))
