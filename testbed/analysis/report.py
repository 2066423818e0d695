"""The report of a run: tables built from its rows and manifest. Pure: no printing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from testbed.analysis import clocks, load, shortage, stats, verdict
from testbed.core.config import PolicySpec
from testbed.core.costmodel import CostModel
from testbed.formats.manifest import RunManifest


@dataclass(frozen=True)
class Report:
    """Everything ``testbed report`` shows."""

    title: str
    summary: pd.DataFrame
    hops: pd.DataFrame
    advice: list[str]
    notes: list[str]
    paper: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    energy: pd.DataFrame | None = None
    bytes: pd.DataFrame | None = None
    papers: pd.DataFrame | None = None
    latency: pd.DataFrame | None = None
    links: tuple[str, ...] = ()  # per shaped link: configured against measured (also among the notes)
    scenarios: pd.DataFrame | None = None  # per policy: load scenario, rates, bounded percentiles, queueing
    shortage: pd.DataFrame | None = None  # per policy, between link and CPU schedule steps: figures with intervals
    plans: pd.DataFrame | None = None  # every plan of a policy that plans from measured resources (adaptive ResNet)


def build(df: pd.DataFrame, manifest: RunManifest, complete: bool) -> Report:
    """Summaries, hop medians, quality advice and notes about where numbers come from."""
    notes = _run_notes(df, manifest, complete)
    summary = stats.summarise(df)
    paper, sweep, papers = None, None, None
    cm = manifest.cost_model
    if cm:
        paper = paper_vs_measured(df, cm, summary)
        verdicts, papers = _verdicts(df, manifest)
        notes += [v.line() for v in verdicts]
        notes.append(f"cost model: preset {cm['name']} (lambda per layer {cm['lam']}, o per offload {cm['o']}, "
                     f"processing charged on {cm['charge'] or 'every tier'}); {cm.get('notes', '')}")
        cost_spec = manifest.experiment.resolved.get("cost") or {}
        if cost_spec.get("sweep_o") or cost_spec.get("sweep_lam"):
            sweep = cost_sweep(df, cm, cost_spec.get("sweep_o") or [], cost_spec.get("sweep_lam") or [])
    notes += _policy_notes(manifest.policies)
    lines = clocks.offset_lines(manifest.agents)
    hops_df = clocks.drift_corrected(df, lines)
    if hops_df is not df:
        notes.append(f"hop times: derived from the raw agent stamps with each clock offset drawn as a line between "
                     f"its two measurements ({len(lines)} devices), not the start offset alone")
    links = fidelity_lines(hops_df, manifest.shaping)
    notes += links
    by_tier = stats.energy_by_tier(df)
    energy_cols = [c for c in by_tier.columns if c.startswith("energy_")]
    energy = None if not len(by_tier) or by_tier[energy_cols].isna().all().all() else by_tier
    for hop, rec in manifest.bytes_wire.items():
        notes.append(f"bytes on the wire, {hop}: " + (f"rx counter of {rec['interface']} on {rec['device']}"
                                                      if "interface" in rec else f"not counted: {rec['why_not']}"))
    batch = (manifest.energy or {}).get("batch_windows")
    if batch:
        notes.append(f"energy windows: {batch['count']} batch windows shared out by compute time"
                     + (f"; {batch['rows_without_their_window']} rows lost their window (energy null)"
                        if batch.get("rows_without_their_window") else ""))
    title = f"{manifest.experiment.resolved.get('name', '?')} / {manifest.run_id}"
    run = manifest.experiment.resolved.get("run") or {}
    first = (manifest.experiment.resolved.get("devices") or {}).get(manifest.tiers[0])
    sources = len(first) if isinstance(first, list) else 1
    return Report(title, summary, stats.hop_summary(hops_df), stats.quality_checks(df), notes, paper, sweep, energy,
                  stats.bytes_by_hop(df), papers, stats.latency_split(hops_df), tuple(links),
                  load.scenario_table(df, run, sources), shortage.segment_table(df, manifest),
                  shortage.plans_table(manifest))


def _run_notes(df: pd.DataFrame, m: RunManifest, complete: bool) -> list[str]:
    """How the run ended, the bundle's exits, the meters, the shaping backend, the rows."""
    notes = []
    if not complete:
        notes.append("INCOMPLETE run: rows come from parts flushed before the run stopped")
    if m.status != "complete":
        notes.append(f"run status: {m.status}; error: {m.error}")
    if m.bundle.exits:
        notes.append("bundle exit accuracy on its test split: "
                     + ", ".join(f"{t} {e['test_accuracy']:.3f}" for t, e in m.bundle.exits.items()))
    meters = (m.energy or {}).get("meters") or {}
    for device, meter in meters.items():
        notes.append("energy meter " + meter_line(device, meter, df))
    notes.append(f"shaping: {(m.shaping or {}).get('backend', 'none')}")
    for device, rec in m.agents.items():
        gpu = (rec.get("facts") or {}).get("gpu")
        if gpu and rec.get("providers") == ["CPUExecutionProvider"]:
            notes.append(f"CPU ONLY on a GPU board: {device} ({gpu}) ran its graphs on CPUExecutionProvider; "
                         + ("install NVIDIA's onnxruntime-gpu for its JetPack (PyPI's aarch64 onnxruntime is "
                            "CPU-only)" if gpu == "jetson" else "install onnxruntime-gpu")
                         + " and list CUDAExecutionProvider in its inventory providers")
        if rec.get("clock_drift_ppm") is not None:
            moved_ms = (rec["clock_offset_end_ns"] - rec["clock_offset_ns"]) / 1e6
            bound_ms = (rec["clock_rtt_ns"] + rec["clock_rtt_end_ns"]) / 2e6
            if abs(moved_ms) > max(1.0, bound_ms):
                notes.append(f"CLOCK DRIFT {device}: its offset moved {moved_ms:+.2f} ms over "
                             f"{rec['clock_elapsed_s']:.0f} s ({rec['clock_drift_ppm']:+.1f} ppm; measurement bound "
                             f"{bound_ms:.2f} ms); hop times late in the run carry up to that error")
    notes += thermal_notes((m.energy or {}).get("thermal") or {})
    if m.rejected_messages:
        notes.append(f"IGNORED {sum(m.rejected_messages.values())} control messages no agent of the run sent "
                     "(none became a row): " + ", ".join(f"{k} x{n}" for k, n in m.rejected_messages.items()))
    warm, probe = int((df["phase"] == "warmup").sum()), int((df["phase"] == "probe").sum())
    notes.append(f"{len(df) - warm - probe} measured rows, {warm} warmup rows"
                 + (f", {probe} probe rows (an adaptive policy measuring again after a schedule step)" if probe else "")
                 + " (kept in the parquet, left out here)")
    return notes


#: a zone this hot is near where boards start to throttle (a Pi's soft limit is 80 C)
HOT_C = 80.0


def thermal_notes(thermal: dict[str, dict[str, Any]]) -> list[str]:
    """A warning per device that throttled or ran hot during the run (``manifest.energy.thermal``)."""
    notes = []
    for device, rec in thermal.items():
        if rec.get("throttled_samples"):
            notes.append(f"THROTTLED {device}: limited in {rec['throttled_samples']} of {rec['samples']} thermal "
                         f"samples (firmware flags {rec['flags_seen']}); its latency and energy are not those of "
                         "the board at full speed")
        hot = {z: c for z, c in (rec.get("max_temp_c") or {}).items() if c >= HOT_C}
        if hot:
            notes.append(f"HOT {device}: " + ", ".join(f"{z} reached {c:.0f} C" for z, c in hot.items())
                         + f" (>= {HOT_C:.0f} C); see {rec['file']}")
    return notes


def policy_settings(entry: dict[str, Any], record: dict[str, Any]) -> str:
    """How a policy's knobs were set: chosen on validation (what its record says), else hand-set or defaults."""
    if record.get("chosen"):
        return str(record["chosen"])
    given = {k: v for k, v in entry.items() if k not in ("name", "label") and v is not None}
    if not given:
        return "defaults"
    return "hand-set: " + ", ".join(f"{k}={v}" for k, v in given.items())


def _verdicts(df: pd.DataFrame, m: RunManifest) -> tuple[list[verdict.Verdict], pd.DataFrame]:
    """Each policy with a paper claim, judged in its paper's units with paired intervals."""
    specs = [PolicySpec.model_validate(p) for p in m.experiment.resolved.get("policies", [])]
    settings = {s.key: policy_settings(s.model_dump(), m.policies.get(s.key, {})) for s in specs}
    return verdict.paper_table(df, specs, m.cost_model["layers"], CostModel.from_record(m.cost_model), settings,
                               int(m.experiment.resolved.get("seed", 0)), m.policies)


def _policy_notes(records: dict[str, dict[str, Any]]) -> list[str]:
    """What each policy recorded: an upper bound, a bandit's best arm, fitted thresholds."""
    notes = []
    for key, rec in records.items():
        if rec.get("upper_bound"):
            notes.append(f"{key}: UPPER BOUND ({rec['upper_bound']})")
        if "best_arm" in rec:
            notes.append(f"{key}: best arm {rec['best_arm']} (layer {rec['arm_layers'][rec['best_arm']]}), pulls "
                         f"{dict(zip(rec['arms'], rec['pulls'], strict=True))}")
        if "expected" in rec:
            e = rec["expected"]
            notes.append(f"{key}: pool thresholds {rec['pool_thresholds']} fitted on val (expected accuracy "
                         f"{e['accuracy']:.3f}, cost {e['cost']:.3f}, reward {e['reward']:.4f}); training pools "
                         + ", ".join(f"{k} {v['size']:.0f}" for k, v in rec["pools"].items())
                         + (f"; {rec['note']}" if "note" in rec else ""))
    return notes


def cost_sweep(df: pd.DataFrame, cost_record: dict[str, Any], sweep_o: list[float],
               sweep_lam: list[float]) -> pd.DataFrame:
    """Cost reduction against all-cloud per policy, with every o (or every lambda) set to each swept value.

    Routes are the measured ones: a policy that would have routed differently under another
    cost (SplitEE learns from o and lambda) needs its own run or ``testbed replay`` per point.
    """
    from testbed.core.costmodel import CostModel, paper_costs

    base = CostModel.from_record(cost_record)
    rows = []
    points = [("o", v, base.with_values(o={h: v for h in base.o})) for v in sweep_o] + [
        ("lambda", v, base.with_values(lam={t: v for t in base.lam})) for v in sweep_lam]
    for what, v, cm in points:
        pc = paper_costs(df, cost_record["layers"], cm)
        rows += [{"swept": what, "value": v, "policy": r["policy"], "cost_paper": r["cost_paper"],
                  "cost_reduction": r["cost_reduction"], "accuracy_drop_pt": r["accuracy_drop_pt"]}
                 for _, r in pc.iterrows()]
    return pd.DataFrame(rows)


def paper_vs_measured(df: pd.DataFrame, cost_record: dict[str, Any], summary: pd.DataFrame) -> pd.DataFrame:
    """Per policy: accuracy and paper-unit cost beside measured latency, energy and bytes, each against all-cloud.

    ``summary`` is :func:`testbed.analysis.stats.summarise` of the same rows (computed once by :func:`build`).
    """
    from testbed.core.costmodel import CostModel, paper_costs, reduction

    cm = CostModel.from_record(cost_record)
    paper = paper_costs(df, cost_record["layers"], cm)
    allrow = summary[summary["tier"] == "all"].set_index("policy")
    cols = ["latency_ms_mean", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "energy_j_per_sample",
            "offload_bytes_per_sample"]
    out = paper.join(allrow[cols], on="policy")
    ref = out[out["policy"] == stats.reference(tuple(cost_record["layers"]))]
    for c, name in (("latency_ms_mean", "latency_reduction"), ("energy_j_per_sample", "energy_reduction"),
                    ("offload_bytes_per_sample", "bytes_reduction")):
        base = float(ref[c].iloc[0]) if len(ref) else float("nan")
        out[name] = [reduction(v, base) for v in out[c]]
    return out


def fidelity_lines(df: pd.DataFrame, shaping: dict[str, Any] | None) -> list[str]:
    """Configured vs measured, per shaped hop and per schedule segment (``shaping``: the manifest's section).

    The hop's median net time over the measured rows issued while that profile was in force,
    beside the probes' throughput (measured before the samples).
    """
    shaping = shaping or {}
    links = shaping.get("links") or {}
    if shaping.get("backend") in (None, "none", "pending") or not links:
        return []
    applied = shaping.get("schedule_applied") or []
    lines = []
    probed: set[str] = set()  # hops whose probes are printed already (on their first line)
    measured = []  # (hop, label, column, rows it applies to)
    for hop in links:
        # controller-edge and controller-cloud carry no Work, only the answers: no column of their own
        measured.append((hop, hop, f"net_ms_{hop.replace('-', '_')}", None))
        if hop.startswith("controller-"):  # its other direction: the answers of the samples that exited there
            measured.append((hop, f"{hop} (answers back)", "net_ms_return", hop.split("-", 1)[1]))
    for hop, label, col, exit_tier in measured:
        base = links[hop]
        if col not in df:
            continue
        segments = [(0, base)] + [(int(a["unix_ns"]), a["profile"]) for a in applied if a["hop"] == hop]
        for k, (t0, prof) in enumerate(segments):
            t1 = segments[k + 1][0] if k + 1 < len(segments) else None
            sel = (df["phase"] == "measure") & (df["t_issue_unix_ns"] >= t0) & df[col].notna()
            if exit_tier is not None:
                sel &= df["exit_tier"] == exit_tier
            if t1 is not None:
                sel &= df["t_issue_unix_ns"] < t1
            net = df.loc[sel, col]
            conf = f"{prof.get('delay_ms', 0):g}" + (f" +- {prof['jitter_ms']:g}" if prof.get("jitter_ms") else "")
            rate = f", {prof['rate_mbit']:g} Mbit/s" if prof.get("rate_mbit") else ""
            if len(segments) == 1:
                when = ""
            else:
                when = " (as the run started)" if k == 0 else f" (schedule step from {applied_at(applied, hop, t0)})"
            text = f"fidelity {label}{when}: configured {conf} ms{rate}; "
            text += (f"measured net median {net.median():.2f} ms (p5 {net.quantile(0.05):.2f}, p95 "
                     f"{net.quantile(0.95):.2f}) over {len(net)} rows" if len(net) else "no measured rows crossed it")
            probes = (shaping.get("probes") or {}).get(hop) or {}
            if k == 0 and probes and hop not in probed:
                probed.add(hop)
                text += "; probes " + ", ".join(probe_text(d, v) for d, v in probes.items())
            lines.append(text)
    return lines


def probe_text(direction: str, probe: dict[str, Any]) -> str:
    """One probe on a fidelity line: the link's capacity, its mean rate, the payload's, and CPU steal if any."""
    steal = max((probe.get(k) or 0.0 for k in ("sender_steal_pct", "receiver_steal_pct")), default=0.0)
    stolen = f", the host stole {steal:.1f}% of an end's CPU meanwhile" if steal >= 1.0 else ""
    if "link_mbit" not in probe:
        return f"{direction} {probe['throughput_mbit']:.2f} Mbit/s{stolen}"
    if "link_capacity_mbit" not in probe:
        return (f"{direction} {probe['link_mbit']:.2f} Mbit/s on the link ({probe['throughput_mbit']:.2f} of "
                f"payload{stolen})")
    return (f"{direction} {probe['link_capacity_mbit']:.2f} Mbit/s on the link at its fastest 30% (mean "
            f"{probe['link_mbit']:.2f}; {probe['throughput_mbit']:.2f} of payload{stolen})")


def applied_at(applied: list[dict[str, Any]], hop: str, unix_ns: int) -> str:
    """How far into the samples a schedule step of ``hop`` was applied, for the fidelity line."""
    for a in applied:
        if a["hop"] == hop and int(a["unix_ns"]) == unix_ns:
            if a.get("step", 0) < 0:  # run.schedule_clock: policy put the link back before a policy
                return f"{a['applied_at_s']:.2f} s: back as configured for {a.get('policy', 'the next policy')}"
            return f"{a['applied_at_s']:.2f} s, step at_s {a['at_s']:g}" + (
                f" of {a['policy']}" if a.get("policy") else "")
    return "?"


def meter_line(device: str, meter: dict[str, Any], df: pd.DataFrame) -> str:
    """One line per meter: source, update period, share of its windows that were approximate."""
    source = meter.get("source", "none")
    text = f"{device}: {source}" + (" (MODELLED, not measured)" if source == "model" else "")
    period = meter.get("update_period_s")
    if period:
        text += f", update period {period * 1e3:.2f} ms"
    flags = []
    for t in [c.removeprefix("energy_approx_") for c in df.columns if c.startswith("energy_approx_")]:
        mine = df[df[f"device_{t}"] == device]
        batch = mine.get(f"energy_batch_{t}")
        if batch is not None and batch.notna().any():  # batch windows: one flag per window, not per sample
            mine = mine[batch.notna()].drop_duplicates(f"energy_batch_{t}")
        flags.append(mine[f"energy_approx_{t}"])
    windows = pd.concat(flags).dropna() if flags else pd.Series(dtype=bool)
    if source != "none" and len(windows):
        text += f", {windows.astype(bool).mean():.1%} of {len(windows)} windows approximate"
    return text
