"""Policies that learn: random and oracle baselines, data cartography (DIMEC-DC), SplitEE and SplitEE-S.

All are pure: they see confidences and, where the paper allows it, labels from the bundle's
tables; randomness derives from the experiment seed and the sample id, so a replay and a
live run make the same choices for the same samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from agents.protocol import TIERS
from testbed.core.costmodel import CostModel
from testbed.policies.context import PolicyContext

NEVER = float("inf")
ALWAYS = 0.0


def at_tier(tier: str) -> dict[str, float]:
    """Thresholds that make a sample exit at ``tier``."""
    t = TIERS.index(tier)
    return {name: (ALWAYS if i == t else NEVER) for i, name in enumerate(TIERS[:-1]) if i <= t}


class RandomPolicy:
    """Each sample goes to a tier drawn with the given shares (seeded by experiment seed and sample id)."""

    def __init__(self, name: str, shares: dict[str, float], seed: int):
        self.name = name
        self.tiers = list(shares)
        p = np.array([shares[t] for t in self.tiers], np.float64)
        self.cum = np.cumsum(p / p.sum())
        self.seed = seed
        self._choice: dict[int, str] = {}

    def _tier(self, sample_id: int) -> str:
        u = np.random.default_rng([self.seed, sample_id]).random()
        return self.tiers[int(np.searchsorted(self.cum, u, side="right").clip(max=len(self.tiers) - 1))]

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the drawn tier."""
        tier = self._tier(sample_id)
        self._choice[sample_id] = tier
        return at_tier(tier)

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Random does not learn."""

    def choice(self, sample_id: int) -> str | None:
        """The drawn tier."""
        return self._choice.get(sample_id)


class OraclePolicy:
    """Upper bound: the cheapest tier whose exit is right, from the labels (mobile when none is).

    It reads the labels, which no deployable policy can; the report marks it as an upper bound.
    """

    upper_bound = True

    def __init__(self, name: str, exits: pd.DataFrame):
        self.name = name
        right = np.stack([(exits[f"prediction_{t}"] == exits["label"]).to_numpy() for t in TIERS], axis=1)
        first = np.where(right.any(axis=1), right.argmax(axis=1), 0)
        self._tier = dict(zip(exits["sample_id"].astype(int), (TIERS[i] for i in first), strict=True))

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the cheapest correct tier."""
        return at_tier(self._tier[sample_id])

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """The oracle already knows."""

    def choice(self, sample_id: int) -> str | None:
        """The tier it picked."""
        return self._tier.get(sample_id)


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
    """Cluster training samples into easy / medium / hard on confidence and variability at the mobile and edge exits.

    Returns the cluster of each sample id and, per cluster, its size and centroid. Clusters are
    named by mean confidence: highest easy, lowest hard.
    """
    cols = []
    wide = None
    for tier in TIERS[:-1]:
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
                    grid: np.ndarray | None = None) -> dict[str, Any]:
    """Mobile and edge thresholds maximising accuracy - mu * cost / cost(all-cloud) on a validation table."""
    grid = np.round(np.arange(0.30, 1.0001, 0.01), 2) if grid is None else grid
    grid = np.append(grid, NEVER)
    cm, ce = val["confidence_mobile"].to_numpy(), val["confidence_edge"].to_numpy()
    right = {t: (val[f"prediction_{t}"] == val["label"]).to_numpy() for t in TIERS}
    route_cost = {t: cost.route_cost(layers, t) for t in TIERS}
    full = route_cost[TIERS[-1]]
    best: dict[str, Any] = {"reward": -math.inf}
    for tm in grid:
        at_m = cm >= tm
        for te in grid:
            at_e = ~at_m & (ce >= te)
            at_c = ~at_m & ~at_e
            acc = float((right["mobile"] & at_m).sum() + (right["edge"] & at_e).sum() + (right["cloud"] & at_c).sum()
                        ) / len(val)
            c = float(at_m.sum() * route_cost["mobile"] + at_e.sum() * route_cost["edge"]
                      + at_c.sum() * route_cost["cloud"]) / len(val)
            reward = acc - mu * c / full
            if reward > best["reward"] + 1e-12:
                best = {"reward": reward, "accuracy": acc, "cost": c, "thresholds": {"mobile": float(tm),
                        "edge": float(te)}, "shares": {"mobile": float(at_m.mean()), "edge": float(at_e.mean()),
                                                       "cloud": float(at_c.mean())}}
    return best


class CartographyPolicy:
    """DIMEC-DC: thresholds fitted offline from the training dynamics and the validation split.

    Training samples are clustered into easy / medium / hard (:func:`cartography_clusters`);
    the mobile and edge thresholds are those that maximise the expected reward on the
    validation split (:func:`best_thresholds`), so confident (easy) samples stop on mobile,
    medium ones at edge and the rest reach the cloud. ``record`` holds the clusters, the
    thresholds and the expected reward.
    """

    def __init__(self, name: str, ctx: PolicyContext, cost: CostModel, mu: float):
        assert ctx.cartography is not None and ctx.val_exits is not None
        self.name = name
        clusters = cartography_clusters(ctx.cartography, ctx.exit_layers, ctx.seed)
        fit = best_thresholds(ctx.val_exits, cost, ctx.layers, mu)
        self._thresholds = fit["thresholds"]
        self.record = {"clusters": clusters["clusters"], "cost_preset": cost.name, "mu": mu,
                       "thresholds": fit["thresholds"], "expected": {k: fit[k] for k in ("reward", "accuracy", "cost",
                                                                                         "shares")}}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """The fitted thresholds."""
        return dict(self._thresholds)

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Fitted offline; does not learn during the run."""

    def choice(self, sample_id: int) -> str | None:
        """Nothing per sample."""
        return None


class SplitEEPolicy:
    """SplitEE (UCB over the split layer), online and unsupervised; ``side_info`` gives SplitEE-S.

    Arms are the exits at the mobile and edge boundaries. A sample sent with arm i exits at
    its tier when the confidence C_i >= alpha, else goes on to the cloud. Rewards follow the
    authors' code: C_i - lam*i on exit, C_L - o - lam*i on offload, C_L being the final
    exit's confidence. Each arm is played once, then the arm with the largest
    mean + c*sqrt(ln(t+1)/n) is chosen. SplitEE-S also updates the shallower arms from the
    confidences the sample produced on its way; when a shallower arm would have offloaded
    and the sample never reached the cloud, the deepest confidence seen stands in for C_L
    (the strong-dominance assumption SplitEE relies on).
    """

    def __init__(self, name: str, ctx: PolicyContext, alpha: float, c: float, lam: float, o: float,
                 side_info: bool, measure: str = "max"):
        self.name = name
        self.measure = measure
        self.arms = [t for t in TIERS[:-1]]
        self.layer = {t: ctx.exit_layers[t] for t in TIERS}
        self.alpha, self.c, self.lam, self.o, self.side_info = alpha, c, lam, o, side_info
        self.sum = np.zeros(len(self.arms))
        self.n = np.zeros(len(self.arms), np.int64)
        self.t = 0
        self._pending: dict[int, int] = {}
        self._issued = 0
        self._choice: dict[int, str] = {}

    def _pick(self) -> int:
        if self._issued < len(self.arms) and self.n.min() == 0:
            return self._issued  # play every arm once first
        n = np.maximum(self.n, 1)
        ucb = self.sum / n + self.c * np.sqrt(math.log(self.t + 1) / n)
        ucb[self.n == 0] = math.inf
        return int(np.argmax(ucb))

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the chosen arm's tier when confident enough, else straight on to the cloud."""
        arm = self._pick()
        self._issued += 1
        self._pending[sample_id] = arm
        self._choice[sample_id] = f"L{self.layer[self.arms[arm]]}"
        return {t: (self.alpha if t == self.arms[arm] else NEVER) for t in TIERS[:-1]}

    def reward(self, arm: int, confidences: dict[str, float]) -> float:
        """The authors' reward for ``arm`` given the confidences the sample produced."""
        tier = self.arms[arm]
        conf = confidences[tier]
        cost = self.lam * self.layer[tier]
        if conf >= self.alpha:
            return conf - cost
        final = confidences.get(TIERS[-1])
        if final is None:  # never reached the cloud: the deepest confidence seen stands in
            final = confidences[max(confidences, key=TIERS.index)]
        return final - self.o - cost

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Update the played arm (and with side information the shallower ones) from the agents' confidences."""
        arm = self._pending.pop(sample_id, None)
        if arm is None:
            return
        self.t += 1
        self.sum[arm] += self.reward(arm, confidences)
        self.n[arm] += 1
        if self.side_info:
            for j in range(arm):
                if self.arms[j] in confidences:
                    self.sum[j] += self.reward(j, confidences)
                    self.n[j] += 1

    def choice(self, sample_id: int) -> str | None:
        """The arm (split layer) chosen for the sample."""
        return self._choice.get(sample_id)

    @property
    def best_arm(self) -> str:
        """The arm with the best mean reward so far."""
        means = np.where(self.n > 0, self.sum / np.maximum(self.n, 1), -math.inf)
        return self.arms[int(np.argmax(means))]


class AdaptiveResNetPolicy:
    """Adaptive ResNet (paper 4): the variant and exit tier that minimise the weighted latency/accuracy objective.

    ``plan`` takes the resources measured on the devices during the policy's warmup (ms per
    multiply-accumulate on each tier, ms per byte and per offload on each hop) and predicts,
    for every variant in the bundle and every tier it could stop at, the latency of one
    sample; it picks the pair minimising ``w * latency / latency(full, cloud) - (1 - w) *
    accuracy`` (validation accuracy of that variant's exit). Every sample then exits at the
    chosen tier, on the chosen variant's partitions.
    """

    needs_resources = True

    def __init__(self, name: str, variants: list[dict[str, Any]], w: float):
        self.name = name
        self.variants = variants
        self.w = w
        self.variant: dict[str, Any] = variants[0]
        self.tier: str = TIERS[-1]
        self.record: dict[str, Any] = {}

    def predict_ms(self, variant: dict[str, Any], tier: str, res: dict[str, dict[str, float]]) -> float:
        """Predicted latency of one sample on ``variant`` stopping at ``tier``, from measured resources."""
        last = TIERS.index(tier)
        ms = sum(variant["macs"][t] * res["ms_per_mac"][t] for t in TIERS[:last + 1])
        for hop in list(variant["bytes_per_offload"])[:last]:
            ms += res["ms_per_offload"].get(hop, 0.0) + variant["bytes_per_offload"][hop] * res["ms_per_byte"].get(
                hop, 0.0)
        return ms

    def plan(self, resources: dict[str, dict[str, float]]) -> None:
        """Choose the variant and exit tier for the measured ``resources``; fills ``record``."""
        ref = self.predict_ms(self.variants[0], TIERS[-1], resources)
        options = []
        for v in self.variants:
            for i, tier in enumerate(TIERS):
                lat = self.predict_ms(v, tier, resources)
                acc = v["exits"][i]["val_accuracy"]
                options.append({"variant": v["name"], "tier": tier, "latency_ms": lat, "val_accuracy": acc,
                                "objective": self.w * lat / ref - (1 - self.w) * acc})
        best = min(options, key=lambda o: (o["objective"], o["latency_ms"]))
        self.variant = next(v for v in self.variants if v["name"] == best["variant"])
        self.tier = best["tier"]
        self.record = {"w": self.w, "resources": resources, "chosen": best, "options": options}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the chosen tier."""
        return at_tier(self.tier)

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Chosen per run from the resources, not per sample."""

    def choice(self, sample_id: int) -> str | None:
        """``<variant>@<tier>``."""
        return f"{self.variant['name']}@{self.tier}"
