"""``cartography`` (DIMEC-DC): samples routed by their predicted training-dynamics pool, thresholds from a reward."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from testbed.core import costmodel
from testbed.core.config import suggest
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.base import NEVER, Params, Policy, PolicyType
from testbed.policies.context import PolicyContext
from testbed.policies.fitting import POOL_GRID, Route, pool_scores, routes

CLAIM = Claim("DIMEC-DC", 0.43, 0.5)


class CartographyParams(Params):
    """Parameters of ``cartography``."""

    mu: float | Literal["auto"] = Field(0.1, description="weight of the normalised cost against accuracy in the "
                                        "reward the thresholds maximise on the validation split (>= 0); auto: the "
                                        "weight whose thresholds are the cheapest on validation within DIMEC-DC's "
                                        "0.5 pt budget")
    cost: str = Field("dimec-dc", description="the cost preset the thresholds are fitted against")

    @field_validator("mu")
    @classmethod
    def _non_negative(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError(f"{v} is negative; the cost weight is >= 0 (or auto)")
        return v

    @field_validator("cost")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in costmodel.PRESETS:
            raise ValueError(f"unknown cost preset {v!r}{suggest(v, list(costmodel.PRESETS))}")
        return v


def best_thresholds(val: pd.DataFrame, cost: CostModel, layers: dict[str, int], mu: float,
                    candidates: list[Route] | None = None) -> dict[str, Any]:
    """Exit thresholds maximising accuracy - mu * cost / cost(all to the last tier) on a validation table.

    ``layers``: the run's tiers in order with their layers; every tier but the last gets a threshold
    (:func:`testbed.policies.fitting.routes`, or ``candidates`` already computed from it), the first
    combination of the best reward kept.
    """
    full = cost.route_cost(layers, list(layers)[-1])
    best: dict[str, Any] = {"reward": -math.inf}
    for r in candidates if candidates is not None else routes(val, cost, layers):
        reward = r.accuracy - mu * r.cost / full
        if reward > best["reward"] + 1e-12:
            best = {"reward": reward, "accuracy": r.accuracy, "cost": r.cost, "thresholds": r.thresholds,
                    "shares": r.shares}
    return best


#: the cost weights ``mu: auto`` tries
MU_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def choose_mu(val: pd.DataFrame, cost: CostModel, layers: dict[str, int], budget_pt: float,
              candidates: list[Route] | None = None) -> tuple[float, dict[str, Any]]:
    """The cost weight whose reward-maximising thresholds are the cheapest on ``val`` within ``budget_pt``.

    Each weight's thresholds come from the reward mechanism (:func:`best_thresholds`, over
    ``candidates`` when given); among those whose validation accuracy drop against the last
    tier stays within the budget, the cheapest wins (ties: the smaller weight). Where none
    does, the weight 0 (accuracy alone).
    """
    last = list(layers)[-1]
    full = float((val[f"prediction_{last}"] == val["label"]).mean())
    candidates = list(routes(val, cost, layers)) if candidates is None else candidates
    tried = []
    for mu in MU_GRID:
        fit = best_thresholds(val, cost, layers, mu, candidates)
        tried.append({"mu": mu, "val_accuracy": fit["accuracy"], "val_cost": fit["cost"],
                      "val_drop_pt": (full - fit["accuracy"]) * 100})
    ok = [t for t in tried if t["val_drop_pt"] <= budget_pt + 1e-9] or tried[:1]
    chosen = min(ok, key=lambda t: (t["val_cost"], t["mu"]))
    return float(chosen["mu"]), {"tried": tried, "val_accuracy_last_tier": full, "budget_pt": budget_pt}


class CartographyPolicy(Policy):
    """DIMEC-DC: samples routed by the pool the first tier's router predicts, thresholds from a reward.

    The bundle's router (:mod:`testbed.build.router`) was trained on the easy / medium / hard
    pools of the training dynamics; the first tier runs it on each sample and sends the sample
    to the first tier whose pool threshold the probability of the easier pools reaches
    (:func:`agents.protocol.pool_route`). The thresholds are those that maximise accuracy - mu x
    cost / cost(all to the last tier) on the validation split (:func:`best_thresholds`).
    ``record`` holds the pools, the router, the thresholds and the expected reward.
    """

    def __init__(self, name: str, ctx: PolicyContext, cost: CostModel, mu: float | str):
        assert ctx.router is not None and ctx.val_exits is not None
        super().__init__(name)
        self.tiers = ctx.tiers
        router = ctx.router
        candidates = list(routes(ctx.val_exits, cost, ctx.layers, grid=POOL_GRID,
                                 scores=pool_scores(ctx.val_exits, ctx.tiers)))
        chosen: dict[str, Any] = {}
        if mu == "auto":
            mu, chosen = choose_mu(ctx.val_exits, cost, ctx.layers, CLAIM.max_drop_pt, candidates)
        fit = best_thresholds(ctx.val_exits, cost, ctx.layers, float(mu), candidates)
        self._pools = [[t, fit["thresholds"][t]] for t in ctx.tiers[:-1]]
        self.record = {"pools": router["centroids"], "router": {k: router[k] for k in (
            "file", "tier", "layer", "clustered_on", "epochs", "train_samples", "train_accuracy", "method")},
            "cost_preset": cost.name, "mu": mu, "pool_thresholds": fit["thresholds"],
            "expected": {k: fit[k] for k in ("reward", "accuracy", "cost", "shares")}}
        if router["epochs"] < 5:
            self.record["note"] = (f"training dynamics over {router['epochs']} epochs: variability from so few is "
                                   "coarse; the papers bundle records 5 (make papers)")
        if chosen:
            self.record |= {"chosen": f"auto on val (n={len(ctx.val_exits)}): mu={mu}, the weight whose reward-chosen "
                                      f"thresholds are the cheapest within {CLAIM.paper}'s {CLAIM.max_drop_pt} pt "
                                      "budget", "mu_search": chosen}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """No confidence exits: the first tier's router sets the route (:meth:`pools`)."""
        return {t: NEVER for t in self.tiers[:-1]}

    def pools(self, sample_id: int) -> list[list[Any]]:
        """The fitted pool thresholds, per tier but the last, in order."""
        return [list(e) for e in self._pools]


def _build(label: str, p: CartographyParams, ctx: PolicyContext) -> CartographyPolicy:
    return CartographyPolicy(label, ctx, costmodel.preset(p.cost).for_depth(sum(ctx.layers.values())), p.mu)


POLICIES = [PolicyType(
    name="cartography", summary="DIMEC-DC: the first tier predicts each sample's easy / medium / hard pool (training "
    "dynamics) and routes it there; thresholds from a reward over accuracy and cost on validation",
    params=CartographyParams, needs=frozenset({"val_exits", "router"}), build=_build,
    claim=CLAIM, cost_preset="dimec-dc")]
