"""Exit thresholds fitted on a validation exit table: every combination on a grid, scored as the agents route.

A sample stops at the first tier whose confidence reaches that tier's threshold; the last
tier finishes the rest (:func:`testbed.policies.decide`). :func:`routes` walks a grid of
thresholds and says, for each combination, what accuracy and cost the validation split
would have had; the policies pick from it by their own rule (a reward for cartography,
the cheapest setting within the claim's accuracy budget for ``early-exit: auto``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from testbed.core.costmodel import CostModel
from testbed.policies.base import NEVER

#: thresholds searched: 0.30..1.00 by 0.01, and never (the tier does not exit)
GRID = np.append(np.round(np.arange(0.30, 1.0001, 0.01), 2), NEVER)
#: pool-router thresholds (probability of the easier pools): 0.05..1.00 by 0.05, and never
POOL_GRID = np.append(np.round(np.arange(0.05, 1.0001, 0.05), 2), NEVER)
#: with three exits or more, a coarser grid keeps the search exhaustive (0.30..1.00 by 0.05)
COARSE = np.append(np.round(np.arange(0.30, 1.0001, 0.05), 2), NEVER)


@dataclass(frozen=True)
class Route:
    """One combination of thresholds on the validation split: accuracy, mean cost, share per tier."""

    thresholds: dict[str, float]
    accuracy: float
    cost: float
    shares: dict[str, float]


def pool_scores(val: pd.DataFrame, tiers: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per tier but the last, what its pool threshold applies to (:func:`agents.protocol.pool_route`).

    Tier i's score is the router's probability that the sample is in one of the i+1 easiest
    pools (``pool_<name>`` columns of the exit table, easiest first), summed in that order.
    """
    cols = [c for c in val.columns if c.startswith("pool_")]
    if not cols:
        raise ValueError("the exit table has no pool_<name> columns: the bundle has no pool router")
    cumulative = np.cumsum(val[cols].to_numpy(np.float64), axis=1)
    return {t: cumulative[:, i] if i < len(cols) else cumulative[:, -1] for i, t in enumerate(tiers[:-1])}


def routes(val: pd.DataFrame, cost: CostModel, layers: dict[str, int], measure: str = "max",
           grid: np.ndarray | None = None, scores: dict[str, np.ndarray] | None = None) -> Iterator[Route]:
    """Every threshold combination on ``grid`` (the first exit's outermost) and what it does on ``val``.

    ``layers``: the run's tiers in order with their layers (the cost of each route);
    ``measure``: the confidence the thresholds apply to (``max`` or ``entropy``); ``scores``: per
    tier but the last, what the thresholds apply to instead of a confidence (:func:`pool_scores`).
    """
    tiers = list(layers)
    exits, last = tiers[:-1], tiers[-1]
    grid = (GRID if len(exits) <= 2 else COARSE) if grid is None else grid
    col = "confidence_entropy_{}" if measure == "entropy" else "confidence_{}"
    conf = scores if scores is not None else {t: val[col.format(t)].to_numpy() for t in exits}
    right = {t: (val[f"prediction_{t}"] == val["label"]).to_numpy() for t in tiers}
    route_cost = {t: cost.route_cost(layers, t) for t in tiers}
    n = len(val)
    for combo in itertools.product(grid, repeat=len(exits)):
        left = np.ones(n, bool)
        at: dict[str, np.ndarray] = {}
        for t, th in zip(exits, combo, strict=True):
            at[t] = left & (conf[t] >= th)
            left = left & ~at[t]
        at[last] = left
        yield Route({t: float(th) for t, th in zip(exits, combo, strict=True)},
                    float(sum((right[t] & at[t]).sum() for t in tiers)) / n,
                    float(sum(at[t].sum() * route_cost[t] for t in tiers)) / n,
                    {t: float(at[t].mean()) for t in tiers})


def cheapest_within(val: pd.DataFrame, cost: CostModel, layers: dict[str, int], budget_pt: float,
                    measure: str = "max") -> tuple[Route, float]:
    """The cheapest thresholds whose validation accuracy drop against the last tier stays within ``budget_pt``.

    Ties in cost go to the more accurate. Returns the route and the last tier's validation
    accuracy (all-to-the-last-tier always qualifies, so there is always an answer).
    """
    last = list(layers)[-1]
    full = float((val[f"prediction_{last}"] == val["label"]).mean())
    best: Route | None = None
    for r in routes(val, cost, layers, measure):
        if (full - r.accuracy) * 100 > budget_pt + 1e-9:
            continue
        if best is None or r.cost < best.cost - 1e-12 or (abs(r.cost - best.cost) <= 1e-12
                                                           and r.accuracy > best.accuracy):
            best = r
    assert best is not None, "thresholds of never always qualify"
    return best, full
