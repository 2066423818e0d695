"""The papers' cost model as code: pure, no I/O.

A sample's route says how many layers each tier ran and which hops it crossed. Its cost
in the paper's abstract units is

    sum over tiers it ran on of  lambda[tier] * layers run there
  + sum over hops it crossed of  o[hop]

so a sample that exits on mobile after k layers costs ``lambda_m * k``; one that exits at
edge adds ``o_me`` and the edge layers; one that reaches the cloud adds ``o_ec`` and the
cloud layers. Presets state where a paper's convention differs:

- ``dimee`` / ``dimec-dc``: every tier's processing and every offload are charged;
- ``splitee``: the authors' code charges ``lambda * split_layer`` on the device and a flat
  ``o`` for an offload, and **no processing on the cloud** for offloaded samples
  (``charge`` leaves the cloud out). The paper's device is our mobile+edge pair (the split
  can sit at either boundary), so the mobile-edge hop is free and edge-cloud costs ``o``;
  in a two-tier run (the paper's own setting) the device is mobile and mobile-cloud costs ``o``.

A run's tiers come from its bundle; the presets have values for the default tiers (mobile,
edge, cloud) and for the two-tier run of mobile and cloud. Other tiers take their values from
the experiment (``cost.lam``, ``cost.o``); :meth:`CostModel.missing` names what is missing.

The numbers are the defaults of a sweep, not measurements (``lambda = 1/10`` per layer and
``o`` in 0.1..0.6 are SplitEE's values); ``testbed calibrate`` fits measured ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from testbed.core.hops import offload_hops

if TYPE_CHECKING:
    from testbed.core.config import CostSpec


def offload_links(tiers: Sequence[str]) -> list[str]:
    """The links a run with these tiers charges ``o`` on, in order (``mobile-edge``, ``edge-cloud``)."""
    return [h.link for h in offload_hops(tiers)]


@dataclass(frozen=True)
class CostModel:
    """Per-layer processing cost per tier, per-offload cost per link, and which tiers are charged.

    The route functions take ``layers``: the run's tiers in order, each with the layers a full
    pass runs there (the bundle's); ``charge`` None charges every tier's layers.
    """

    name: str
    lam: dict[str, float]
    o: dict[str, float]
    charge: tuple[str, ...] | None = None
    unit: str = "paper cost units"
    paper_layers: int | None = None  # the depth the paper states its constants for (12: BERT-base)
    # every charged layer after the first costs lambda x this (splitee.py reports 0.8*lambda*(i-1) + lambda)
    layer_factor: float = 1.0
    source: str = ""
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = [f"lambda.{t}={v}" for t, v in self.lam.items() if v < 0] + [
            f"o.{h}={v}" for h, v in self.o.items() if v < 0]
        if bad:
            raise ValueError(f"cost model {self.name}: negative costs {bad}; costs are >= 0")

    def missing(self, tiers: Sequence[str]) -> list[str]:
        """What a run with these tiers needs and this model has no value for (``lam.<tier>``, ``o.<link>``)."""
        return ([f"lam.{t}" for t in tiers if t not in self.lam]
                + [f"o.{h}" for h in offload_links(tiers) if h not in self.o])

    def charges(self, tier: str) -> bool:
        """Whether the layers run on ``tier`` are charged."""
        return self.charge is None or tier in self.charge

    def route_cost(self, layers: dict[str, int], exit_tier: str) -> float:
        """Cost of one sample that ran ``layers[tier]`` layers on each tier up to ``exit_tier``."""
        tiers = list(layers)
        missing = self.missing(tiers)
        if missing:
            raise ValueError(f"cost model {self.name}: no value for {', '.join(missing)} (tiers {tiers}); give them "
                             "under cost.lam / cost.o in the experiment")
        last = tiers.index(exit_tier)
        charged = [t for t in tiers[:last + 1] if self.charges(t) and layers[t] > 0]
        cost = sum(self.lam[t] * layers[t] for t in charged)
        if self.layer_factor != 1.0 and charged:  # the first charged layer in full, the others scaled
            cost = self.lam[charged[0]] + self.layer_factor * (cost - self.lam[charged[0]])
        return cost + sum(self.o[h] for h in offload_links(tiers)[:last])

    def costs(self, exit_tiers: np.ndarray | list[str], layers: dict[str, int]) -> np.ndarray:
        """Vector of route costs; ``layers`` is the per-tier layer count of a full pass (the bundle's), in order."""
        table = {t: self.route_cost(layers, t) for t in layers}
        return np.array([table[str(t)] for t in exit_tiers], np.float64)

    def costs_of(self, rows: pd.DataFrame, layers: dict[str, int]) -> np.ndarray:
        """Route costs of result rows: each row's own layers per tier (``layers_<tier>``) where it has them.

        A split inside a tier makes the layers a sample ran its own; rows without those columns (runs
        before schema 5) cost their exit tier's route at the bundle's ``layers`` per tier.
        """
        cols = [f"layers_{t}" for t in layers]
        by_tier = self.costs(rows["exit_tier"].to_numpy(), layers)
        if not all(c in rows.columns for c in cols):
            return by_tier
        known = rows[cols].notna().any(axis=1).to_numpy()
        counts = rows[cols].fillna(0).astype(int).to_numpy()
        tiers, exits = list(layers), rows["exit_tier"].to_numpy()
        cache: dict[tuple[Any, ...], float] = {}
        for i in np.flatnonzero(known):
            key = (*counts[i].tolist(), str(exits[i]))
            if key not in cache:
                cache[key] = self.route_cost(dict(zip(tiers, key[:-1], strict=True)), key[-1])
            by_tier[i] = cache[key]
        return by_tier

    def with_values(self, lam: dict[str, float] | None = None, o: dict[str, float] | None = None) -> CostModel:
        """A copy with some lambdas or offload costs replaced (a sweep point, or an experiment override)."""
        return replace(self, lam=self.lam | (lam or {}), o=self.o | (o or {}))

    def offload_ratio(self) -> float | None:
        """An offload's cost as a fraction of a full pass on the paper's model: o / (lambda * L)."""
        lam = max(self.lam.values(), default=0.0)
        o = max(self.o.values(), default=0.0)
        if not self.paper_layers or lam <= 0:
            return None
        return o / (lam * self.paper_layers)

    def for_depth(self, num_layers: int) -> CostModel:
        """The preset on a model of ``num_layers`` layers, keeping the paper's ratios instead of its constants.

        lambda stays per layer; every o is scaled by num_layers / paper_layers, so an offload is
        worth the same fraction of a full pass as in the paper. The paper's constants and the ratio
        go to ``extra``. A preset with no stated depth, or one already at it, is returned as it is.
        """
        if not self.paper_layers or num_layers == self.paper_layers:
            return self
        scale = num_layers / self.paper_layers
        return replace(self, o={h: v * scale for h, v in self.o.items()}, extra=self.extra | {
            "paper_constants": {"lam": dict(self.lam), "o": dict(self.o), "layers": self.paper_layers},
            "offload_ratio": self.offload_ratio(), "scaled_to_layers": num_layers})

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> CostModel:
        """The model a manifest or a calibrated presets file recorded (:meth:`record`)."""
        charge = rec.get("charge")
        return cls(rec["name"], rec["lam"], rec["o"], None if charge is None else tuple(charge),
                   rec.get("unit", "paper cost units"), rec.get("paper_layers"), rec.get("layer_factor", 1.0),
                   rec.get("source", ""), rec.get("notes", ""), rec.get("extra", {}))

    def record(self) -> dict[str, Any]:
        """What the manifest stores."""
        d = asdict(self)
        d["charge"] = None if self.charge is None else list(self.charge)
        return d


PRESETS: dict[str, CostModel] = {
    "dimee": CostModel(
        "dimee", {"mobile": 0.1, "edge": 0.1, "cloud": 0.1},
        {"mobile-edge": 0.3, "edge-cloud": 0.3, "mobile-cloud": 0.3}, paper_layers=12,
        source="DIMEE: early exits after the mobile and edge partitions; every tier's layers and every offload "
               "are charged", notes="lambda and o are sweep defaults, not the paper's measured values, stated for "
               "a 12-layer BERT-base"),
    "dimec-dc": CostModel(
        "dimec-dc", {"mobile": 0.1, "edge": 0.1, "cloud": 0.1},
        {"mobile-edge": 0.3, "edge-cloud": 0.3, "mobile-cloud": 0.3}, paper_layers=12,
        source="DIMEC-DC: same convention as DIMEE; the reward is accuracy minus the weighted cost",
        notes="lambda and o are sweep defaults, not the paper's measured values, stated for a 12-layer BERT-base"),
    "splitee": CostModel(
        "splitee", {"mobile": 0.1, "edge": 0.1, "cloud": 0.0},
        {"mobile-edge": 0.0, "edge-cloud": 0.3, "mobile-cloud": 0.3}, paper_layers=12,
        charge=("mobile", "edge"),
        source="SplitEE (Div290/SplitEE, splitee_s.py, and the reward of both scripts): cost = lambda*i for a "
               "split at layer i on the device, + o when offloaded; the cloud's layers are not charged",
        notes="lambda = 1/10 as in the authors' code on 12-layer BERT/ElasticBERT; o swept over 0.1..0.6 there"),
    "splitee-py": CostModel(
        "splitee-py", {"mobile": 0.1, "edge": 0.1, "cloud": 0.0},
        {"mobile-edge": 0.0, "edge-cloud": 0.3, "mobile-cloud": 0.3}, paper_layers=12,
        charge=("mobile", "edge"), layer_factor=0.8,
        source="SplitEE (Div290/SplitEE, splitee.py): its report's cost is 0.8*lambda*(i-1) + lambda for a split at "
               "layer i, + o when offloaded, while its reward charges lambda*i: the report's convention differs from "
               "the reward's in the authors' own script",
        notes="the other reporting convention of the authors' code; lambda = 1/10, o swept over 0.1..0.6 there"),
}


@dataclass(frozen=True)
class Claim:
    """What a paper claims against all-cloud: at least this cost reduction at less than this accuracy drop."""

    paper: str
    min_cost_reduction: float
    max_drop_pt: float


def preset(name: str) -> CostModel:
    """A named preset; raises KeyError with the choices."""
    if name not in PRESETS:
        raise KeyError(f"unknown cost preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def reduction(value: float, baseline: float) -> float:
    """Relative reduction against a baseline (0.43 = 43% lower); NaN without a positive baseline."""
    if not baseline or baseline <= 0 or np.isnan(baseline):
        return float("nan")
    return 1.0 - value / baseline


def paper_costs(df: pd.DataFrame, layers: dict[str, int], cost: CostModel) -> pd.DataFrame:
    """Per policy: accuracy, cost in paper units, and both against all samples to the last tier (``all-cloud``).

    ``layers``: the run's tiers in order with their layers; measure rows only when ``phase`` exists.
    """
    m = df[df["phase"] == "measure"] if "phase" in df.columns else df
    out = []
    for policy, g in m.groupby("policy", sort=False):
        c = cost.costs_of(g, layers)
        out.append({"policy": policy, "samples": len(g), "accuracy": float(g["correct"].mean()),
                    "cost_paper": float(c.mean()),
                    **{f"share_{t}": float((g["exit_tier"] == t).mean()) for t in layers}})
    res = pd.DataFrame(out)
    ref = res[res["policy"] == f"all-{list(layers)[-1]}"]
    if len(ref):
        res["accuracy_drop_pt"] = (float(ref["accuracy"].iloc[0]) - res["accuracy"]) * 100
        res["cost_reduction"] = [reduction(v, float(ref["cost_paper"].iloc[0])) for v in res["cost_paper"]]
    else:
        res["accuracy_drop_pt"] = np.nan
        res["cost_reduction"] = np.nan
    return res


def from_spec(spec: CostSpec) -> CostModel:
    """The experiment's cost model: its preset (built in, or from a calibrated file) with any values it replaces."""
    if spec.file:
        import yaml

        rec = yaml.safe_load(Path(spec.file).read_text())["presets"][spec.preset]
        base = CostModel.from_record(rec)
    else:
        base = preset(spec.preset)
    return base.with_values(spec.lam, spec.o)
