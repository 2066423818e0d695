"""Verdicts on the papers' claims: paired 95% intervals, and meets / does not meet / cannot tell. Pure.

A claim says: at least ``min_cost_reduction`` lower cost than the baseline (every sample
to the last tier) at an accuracy drop under ``max_drop_pt``. Both figures are differences
between a policy and the baseline *on the same samples*, so their intervals are paired: a
bootstrap (:func:`scipy.stats.bootstrap`, ``paired=True``, percentile method) resamples
sample ids and recomputes both the drop and the reduction. The verdict is

- **meets** when the interval's upper bound on the drop is under the budget and its lower
  bound on the cost reduction is above the claimed figure;
- **does not meet** when the interval lies wholly on the wrong side of either;
- **cannot tell** otherwise, with about how many samples would decide it: the interval's
  half-width shrinks as 1/sqrt(n), so the undecided figure needs
  ``n * (half-width / distance of its point from the threshold)^2`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from testbed import policies
from testbed.core.config import PolicySpec
from testbed.core.costmodel import Claim, CostModel

LEVEL = 0.95
RESAMPLES = 4000
Outcome = Literal["meets", "does not meet", "cannot tell"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval (``level``)."""

    point: float
    low: float
    high: float

    def text(self, kind: str = "pt") -> str:
        """``+0.11 pt [-0.04, +0.27]`` or ``43.4% [41.0%, 45.9%]``."""
        if kind == "pct":
            return f"{self.point:.1%} [{self.low:.1%}, {self.high:.1%}]"
        return f"{self.point:+.2f} pt [{self.low:+.2f}, {self.high:+.2f}]"


def _drop_pt(correct_p: np.ndarray, correct_b: np.ndarray, axis: int = -1) -> np.ndarray:
    return (np.mean(correct_b, axis=axis) - np.mean(correct_p, axis=axis)) * 100.0


def _reduction(value_p: np.ndarray, value_b: np.ndarray, axis: int = -1) -> np.ndarray:
    base = np.mean(value_b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 0, 1.0 - np.mean(value_p, axis=axis) / base, np.nan)


def paired_interval(kind: Literal["drop", "reduction"], policy: np.ndarray, baseline: np.ndarray,
                    seed: int = 0, level: float = LEVEL) -> Interval:
    """The paired bootstrap interval of the accuracy drop (pt) or the relative reduction of a mean.

    ``policy`` and ``baseline`` are per-sample values on the same samples, in the same order.
    Where every paired difference is the same (e.g. a policy against itself) the interval is the point.
    """
    p, b = np.asarray(policy, np.float64), np.asarray(baseline, np.float64)
    if p.shape != b.shape or p.ndim != 1 or not len(p):
        raise ValueError(f"paired samples must be two equal, non-empty 1-d arrays; got {p.shape} and {b.shape}")
    stat = _drop_pt if kind == "drop" else _reduction
    point = float(stat(p, b))
    if np.ptp(p) == 0 and np.ptp(b) == 0 or np.ptp(p - b) == 0 and kind == "drop" or math.isnan(point):
        return Interval(point, point, point)
    res = sps.bootstrap((p, b), stat, paired=True, vectorized=True, n_resamples=RESAMPLES, batch=500,
                        confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return Interval(point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def samples_needed(n: int, iv: Interval, threshold: float) -> float:
    """About how many samples put ``iv``'s threshold outside it (inf when the point sits on the threshold)."""
    margin = abs(iv.point - threshold)
    half = (iv.high - iv.low) / 2
    if margin == 0:
        return math.inf
    return n * (half / margin) ** 2


def decide(claim: Claim, n: int, drop: Interval, reduction: Interval) -> tuple[Outcome, float | None]:
    """The verdict, and for *cannot tell* about how many samples would decide it."""
    budget, claimed = claim.max_drop_pt, claim.min_cost_reduction
    if drop.high < budget and reduction.low > claimed:
        return "meets", None
    if drop.low > budget or reduction.high < claimed:
        return "does not meet", None
    needs = []
    if not drop.high < budget:
        needs.append(samples_needed(n, drop, budget))
    if not reduction.low > claimed:
        needs.append(samples_needed(n, reduction, claimed))
    return "cannot tell", max(needs)


@dataclass(frozen=True)
class Verdict:
    """A policy's figures against its paper's claim, with intervals, n and the settings behind them."""

    policy: str
    claim: Claim
    preset: str
    baseline: str
    n: int
    drop_pt: Interval
    cost_reduction: Interval
    outcome: Outcome
    needed: float | None
    settings: str = ""

    def line(self) -> str:
        """One line for the report: the claim, our figures with intervals and n, the verdict."""
        c = self.claim
        head = (f"{self.policy}: {c.paper} claims >{c.min_cost_reduction:.0%} lower cost at <{c.max_drop_pt:g} pt "
                f"accuracy drop against {self.baseline}; here (preset {self.preset}, n = {self.n}, paired 95% "
                f"intervals) cost reduction {self.cost_reduction.text('pct')}, accuracy drop {self.drop_pt.text()}: ")
        if self.outcome == "cannot tell":
            need = "no n decides it at this point estimate" if self.needed is None or math.isinf(self.needed) \
                else f"about {_round_up(self.needed):,} samples needed"
            verdict = f"CANNOT TELL at n = {self.n} ({need})"
        else:
            verdict = "MEETS the claim" if self.outcome == "meets" else "DOES NOT MEET the claim"
        return head + verdict + (f"; {self.settings}" if self.settings else "")


def _round_up(x: float) -> int:
    if x < 100:
        return int(math.ceil(x))
    digits = 10 ** (int(math.log10(x)) - 1)
    return int(math.ceil(x / digits) * digits)


def pair(df: pd.DataFrame, policy: str, baseline: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The measured rows of ``policy`` and ``baseline`` on the samples both ran, aligned by sample id."""
    m = df[df["phase"] == "measure"] if "phase" in df.columns else df
    p = m[m["policy"] == policy].drop_duplicates("sample_id").set_index("sample_id")
    b = m[m["policy"] == baseline].drop_duplicates("sample_id").set_index("sample_id")
    common = p.index.intersection(b.index).sort_values()
    return p.loc[common], b.loc[common]


def judge(df: pd.DataFrame, policy: str, claim: Claim, cost: CostModel, layers: dict[str, int],
          settings: str = "", seed: int = 0, on_device: int = 0) -> Verdict | None:
    """The verdict on ``policy``'s rows against all samples to the last tier, in ``cost``'s units.

    ``layers``: the run's tiers in order with their layers. None when the baseline is not in ``df``.
    ``on_device``: the model's depth where the paper's baseline is every sample at the final layer
    on the device (SplitEE's): its answers are the last tier's (the same final layer), its cost
    the device running every layer.
    """
    baseline = f"all-{list(layers)[-1]}"
    p, b = pair(df, policy, baseline)
    if not len(p):
        return None
    drop = paired_interval("drop", p["correct"].to_numpy(float), b["correct"].to_numpy(float), seed)
    tiers = list(layers)
    if on_device:
        device = {t: (on_device if t == tiers[0] else 0) for t in tiers}
        base_cost = np.full(len(b), cost.route_cost(device, tiers[0]))
        baseline = f"every sample at the final layer (L{on_device}) on the device, answers from {baseline}"
    else:
        base_cost = cost.costs_of(b, layers)
    red = paired_interval("reduction", cost.costs_of(p, layers), base_cost, seed)
    outcome, needed = decide(claim, len(p), drop, red)
    return Verdict(policy, claim, _preset_text(cost), baseline, len(p), drop, red, outcome, needed, settings)


def measured_reductions(df: pd.DataFrame, policy: str, baseline: str, seed: int = 0) -> dict[str, Interval]:
    """Paired intervals of the reduction of mean latency, energy and offload bytes against ``baseline``.

    A figure is left out where some paired sample lacks it (no meter: energy is null).
    """
    p, b = pair(df, policy, baseline)
    out: dict[str, Interval] = {}
    if not len(p):
        return out
    wire = [c for c in df.columns if c.startswith("bytes_") and c.count("_") == 2 and not c.startswith(
        ("bytes_msg_", "bytes_wire_", "bytes_controller_"))]
    series = {c: (p[c], b[c]) for c in ("latency_ms", "energy_j") if c in p}
    if wire:
        series["offload_bytes"] = (p[wire].sum(axis=1), b[wire].sum(axis=1))
    for name, (xs, ys) in series.items():
        x, y = xs.to_numpy(float), ys.to_numpy(float)
        if np.isnan(x).any() or np.isnan(y).any():
            continue
        out[name] = paired_interval("reduction", x, y, seed)
    return out


def paper_cost(spec: PolicySpec, experiment: CostModel, layers: dict[str, int]) -> tuple[CostModel, str]:
    """The cost model a policy's verdict uses, and why where it is not its paper's.

    Its paper's preset, kept at the paper's ratios on this model's depth and with the entry's
    own constants; else the experiment's.
    """
    tiers = list(layers)
    paper = policies.paper_cost(spec, sum(layers.values()))
    if paper is None:
        return experiment, "no paper preset: the experiment's"
    missing = paper.missing(tiers)
    if missing:
        return experiment, f"paper preset {paper.name} has no {', '.join(missing)} for these tiers: the experiment's"
    return paper, ""


def paper_table(df: pd.DataFrame, specs: list[PolicySpec], layers: dict[str, int], experiment: CostModel,
                settings: dict[str, str], seed: int = 0,
                records: dict[str, dict[str, Any]] | None = None) -> tuple[list[Verdict], pd.DataFrame]:
    """Per policy with a paper claim: its verdict in its paper's preset, and the figures beside it.

    Beside it: the cost reduction in the experiment's preset, and the measured latency, energy and
    bytes reductions, each with its paired interval. ``settings``: policy key -> how its knobs were set;
    ``records``: what each policy recorded (a SplitEE over every layer is judged against its paper's
    baseline, every sample at the final layer on the device).
    """
    verdicts, rows = [], []
    for spec in specs:
        key, claim = spec.key, policies.claim_of(spec.name)
        if claim is None:
            continue
        cost, why = paper_cost(spec, experiment, layers)
        rec = (records or {}).get(key, {})
        depth = len(rec.get("arms", [])) if rec.get("arms_are") == "layers" else 0
        v = judge(df, key, claim, cost, layers, "; ".join(x for x in (settings.get(key, ""), why) if x), seed, depth)
        if v is None:
            continue
        verdicts.append(v)
        p, b = pair(df, key, f"all-{list(layers)[-1]}")  # the experiment's preset: the cost reduction alone
        here = paired_interval("reduction", experiment.costs_of(p, layers), experiment.costs_of(b, layers), seed)
        row: dict[str, object] = {
            "policy": key, "paper": claim.paper,
            "claim": f">{claim.min_cost_reduction:.0%} at <{claim.max_drop_pt:g} pt",
            "preset": v.preset, "n": v.n, "cost_reduction": v.cost_reduction, "drop_pt": v.drop_pt,
            "verdict": v.outcome if v.needed is None else f"{v.outcome} (~{_needed_text(v.needed)} needed)",
            f"cost_reduction_{experiment.name}": here, "settings": v.settings}
        for what, iv in measured_reductions(df, key, f"all-{list(layers)[-1]}", seed).items():
            row[f"{what}_reduction"] = iv
        rows.append(row)
    return verdicts, pd.DataFrame(rows)


def _preset_text(cost: CostModel) -> str:
    """The preset's name and its constants (lambda per layer, o per offload), as the verdict used them."""
    lam = sorted({v for v in cost.lam.values() if v > 0})
    o = sorted({v for v in cost.o.values() if v > 0})
    text = f"{cost.name} (lambda {'/'.join(f'{v:g}' for v in lam)}, o {'/'.join(f'{v:.3g}' for v in o)}"
    paper = cost.extra.get("paper_constants")
    if paper:
        po = sorted({v for v in paper["o"].values() if v > 0})
        text += (f"; the paper's o {'/'.join(f'{v:g}' for v in po)} on {paper['layers']} layers, kept at "
                 f"{cost.extra['offload_ratio']:.3g} of a full pass on {cost.extra['scaled_to_layers']}")
    return text + ")"


def _needed_text(n: float) -> str:
    return "no n" if math.isinf(n) else f"{_round_up(n):,}"
