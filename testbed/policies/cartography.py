"""``cartography`` (DIMEC-DC): thresholds fitted offline from the training dynamics and the validation split."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from testbed.core import costmodel
from testbed.core.config import suggest
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.base import Params, Policy, PolicyType
from testbed.policies.context import PolicyContext
from testbed.policies.fitting import Route, routes

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


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd's k-means with k-means++ seeding; returns (labels, centroids)."""
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centroids], axis=0)
        centroids.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    cent = np.array(centroids)
    labels = np.zeros(len(x), np.int64)
    for _ in range(iters):
        labels = ((x[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        new = np.array([x[labels == j].mean(0) if (labels == j).any() else cent[j] for j in range(k)])
        if np.allclose(new, cent):
            break
        cent = new
    return labels, cent


def cartography_clusters(carto: pd.DataFrame, exit_layers: dict[str, int], seed: int) -> dict[str, Any]:
    """Cluster training samples into easy / medium / hard on confidence and variability at the exits.

    The exits are those of every tier but the last (``exit_layers``: the run's tiers in order,
    each with its exit's layer). Returns the cluster of each sample id and, per cluster, its size
    and centroid. Clusters are named by mean confidence: highest easy, lowest hard.
    """
    cols = []
    wide = None
    for tier in list(exit_layers)[:-1]:
        sub = carto[carto["exit_layer"] == exit_layers[tier]].set_index("sample_id")[["confidence", "variability"]]
        sub = sub.rename(columns={"confidence": f"confidence_{tier}", "variability": f"variability_{tier}"})
        wide = sub if wide is None else wide.join(sub, how="inner")
        cols += [f"confidence_{tier}", f"variability_{tier}"]
    assert wide is not None
    x = wide[cols].to_numpy(np.float64)
    labels, cent = kmeans(x, 3, seed)
    conf_cols = [i for i, c in enumerate(cols) if c.startswith("confidence")]
    order = np.argsort(-cent[:, conf_cols].mean(1))
    names = {int(j): n for j, n in zip(order, ("easy", "medium", "hard"), strict=True)}
    return {
        "sample_cluster": {int(s): names[int(lab)] for s, lab in zip(wide.index, labels, strict=True)},
        "clusters": {names[j]: {"size": int((labels == j).sum()), **{c: float(cent[j][i]) for i, c in enumerate(cols)}}
                     for j in range(3)},
    }


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


def choose_mu(val: pd.DataFrame, cost: CostModel, layers: dict[str, int],
              budget_pt: float) -> tuple[float, dict[str, Any]]:
    """The cost weight whose reward-maximising thresholds are the cheapest on ``val`` within ``budget_pt``.

    Each weight's thresholds come from the reward mechanism (:func:`best_thresholds`); among those whose
    validation accuracy drop against the last tier stays within the budget, the cheapest wins (ties:
    the smaller weight). Where none does, the weight 0 (accuracy alone).
    """
    last = list(layers)[-1]
    full = float((val[f"prediction_{last}"] == val["label"]).mean())
    candidates = list(routes(val, cost, layers))
    tried = []
    for mu in MU_GRID:
        fit = best_thresholds(val, cost, layers, mu, candidates)
        tried.append({"mu": mu, "val_accuracy": fit["accuracy"], "val_cost": fit["cost"],
                      "val_drop_pt": (full - fit["accuracy"]) * 100})
    ok = [t for t in tried if t["val_drop_pt"] <= budget_pt + 1e-9] or tried[:1]
    chosen = min(ok, key=lambda t: (t["val_cost"], t["mu"]))
    return float(chosen["mu"]), {"tried": tried, "val_accuracy_last_tier": full, "budget_pt": budget_pt}


class CartographyPolicy(Policy):
    """DIMEC-DC: thresholds fitted offline from the training dynamics and the validation split.

    Training samples are clustered into easy / medium / hard (:func:`cartography_clusters`);
    the mobile and edge thresholds are those that maximise the expected reward on the
    validation split (:func:`best_thresholds`), so confident (easy) samples stop on mobile,
    medium ones at edge and the rest reach the cloud. ``record`` holds the clusters, the
    thresholds and the expected reward.
    """

    def __init__(self, name: str, ctx: PolicyContext, cost: CostModel, mu: float | str):
        assert ctx.cartography is not None and ctx.val_exits is not None
        super().__init__(name)
        clusters = cartography_clusters(ctx.cartography, ctx.exit_layers, ctx.seed)
        chosen: dict[str, Any] = {}
        if mu == "auto":
            mu, chosen = choose_mu(ctx.val_exits, cost, ctx.layers, CLAIM.max_drop_pt)
        fit = best_thresholds(ctx.val_exits, cost, ctx.layers, float(mu))
        self._thresholds = fit["thresholds"]
        self.record = {"clusters": clusters["clusters"], "cost_preset": cost.name, "mu": mu,
                       "thresholds": fit["thresholds"], "expected": {k: fit[k] for k in ("reward", "accuracy", "cost",
                                                                                         "shares")}}
        if chosen:
            self.record |= {"chosen": f"auto on val (n={len(ctx.val_exits)}): mu={mu}, the weight whose reward-chosen "
                                      f"thresholds are the cheapest within {CLAIM.paper}'s {CLAIM.max_drop_pt} pt "
                                      "budget", "mu_search": chosen}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """The fitted thresholds."""
        return dict(self._thresholds)




def _build(label: str, p: CartographyParams, ctx: PolicyContext) -> CartographyPolicy:
    return CartographyPolicy(label, ctx, costmodel.preset(p.cost).for_depth(sum(ctx.layers.values())), p.mu)


POLICIES = [PolicyType(
    name="cartography", summary="DIMEC-DC: thresholds fitted on validation against a reward over accuracy and cost, "
    "training samples clustered easy / medium / hard by their training dynamics",
    params=CartographyParams, needs=frozenset({"val_exits", "cartography"}), build=_build,
    claim=CLAIM, cost_preset="dimec-dc")]
