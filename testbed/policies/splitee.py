"""``splitee`` and ``splitee-s``: the split layer chosen online, without labels, by a UCB bandit."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from testbed.core import costmodel
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.base import NEVER, Measured, Policy, PolicyType
from testbed.policies.context import PolicyContext


class SplitEEParams(Measured):
    """Parameters of ``splitee`` and ``splitee-s``."""

    alpha: float = Field(0.8, ge=0, le=1, description="the exit confidence: a sample exits at the chosen arm when "
                         "its confidence reaches it")
    c: float = Field(1.0, ge=0, description="the UCB exploration constant")
    lam: float = Field(0.1, ge=0, description="the cost per layer in the reward")
    o: float | None = Field(None, ge=0, description="the cost per offload in the reward; default: the splitee "
                            "preset's 0.3 on 12 layers kept at its ratio to a full pass (o / (lam * L) = 0.25) on "
                            "this model's depth (0.15 on 6 layers)")


class SplitEEPolicy(Policy):
    """SplitEE (UCB over the split layer), online and unsupervised; ``side_info`` gives SplitEE-S.

    Arms are the exits at the tier boundaries (every tier but the last). A sample sent with arm i
    exits at its tier when the confidence C_i >= alpha, else goes on to the cloud. Rewards follow
    the authors' code: C_i - lam*i on exit, C_L - o - lam*i on offload, C_L being the final exit's
    confidence, with one correction where a run has more than two tiers: an offloaded sample runs
    every layer before the cloud (from the mobile arm it also runs the edge's), so its reward
    charges lam times the last of those layers, as the report's cost does; in a two-tier run (the
    paper's device and cloud) that is the arm's own layer, exactly the authors' reward. Each arm
    is played once, then the arm with the largest mean + c*sqrt(ln(t+1)/n) is chosen. SplitEE-S
    also updates the shallower arms from the confidences the sample produced on its way; when a
    shallower arm would have offloaded and the sample never reached the cloud, the deepest
    confidence seen stands in for C_L (the strong-dominance assumption SplitEE relies on).
    """

    def __init__(self, name: str, ctx: PolicyContext, alpha: float, c: float, lam: float, o: float,
                 side_info: bool, measure: str = "max"):
        super().__init__(name)
        self.measure = measure
        self.tiers = ctx.tiers
        self.arms = list(ctx.tiers[:-1])
        self.layer = {t: ctx.exit_layers[t] for t in ctx.tiers}
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
        return {t: (self.alpha if t == self.arms[arm] else NEVER) for t in self.arms}

    def reward(self, arm: int, confidences: dict[str, float]) -> float:
        """The authors' reward for ``arm`` given the confidences the sample produced."""
        tier = self.arms[arm]
        conf = confidences[tier]
        if conf >= self.alpha:
            return conf - self.lam * self.layer[tier]
        cost = self.lam * self.layer[self.tiers[-2]]  # every layer before the cloud ran (the arm's own in 2 tiers)
        final = confidences.get(self.tiers[-1])
        if final is None:  # never reached the cloud: the deepest confidence seen stands in
            final = confidences[max(confidences, key=self.tiers.index)]
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

    def summary(self) -> dict[str, Any]:
        """The bandit's state: arms, pulls, mean rewards, the best arm, its parameters."""
        return {"arms": self.arms, "arm_layers": {a: self.layer[a] for a in self.arms}, "pulls": self.n.tolist(),
                "mean_reward": [float(s / n) if n else None for s, n in zip(self.sum, self.n, strict=True)],
                "best_arm": self.best_arm,
                "params": {"alpha": self.alpha, "c": self.c, "lam": self.lam, "o": self.o, "side_info": self.side_info}}


def default_o(num_layers: int) -> float:
    """The splitee preset's offload cost on a model of ``num_layers`` layers, at the paper's ratio."""
    return max(costmodel.PRESETS["splitee"].for_depth(num_layers).o.values())


def scored_by(p: SplitEEParams, preset: CostModel) -> CostModel:
    """The splitee preset (at this depth) with the entry's own lam and o: it is scored in what it learned from."""
    return preset.with_values(lam={t: p.lam for t, v in preset.lam.items() if v > 0},
                              o={h: p.o for h, v in preset.o.items() if v > 0} if p.o is not None else None)


def _builder(side_info: bool) -> Any:
    def build(label: str, p: SplitEEParams, ctx: PolicyContext) -> SplitEEPolicy:
        o = p.o if p.o is not None else default_o(sum(ctx.layers.values()))
        return SplitEEPolicy(label, ctx, p.alpha, p.c, p.lam, o, side_info, p.measure)
    return build


POLICIES = [
    PolicyType(name="splitee", summary="SplitEE: a UCB bandit over the split layer, online and without labels",
               params=SplitEEParams, build=_builder(False), claim=Claim("SplitEE", 0.50, 2.0), cost_preset="splitee",
               scored_by=scored_by),
    PolicyType(name="splitee-s", summary="SplitEE-S: SplitEE that also updates the shallower arms from the "
               "confidences a sample produced on its way", params=SplitEEParams, build=_builder(True),
               claim=Claim("SplitEE-S", 0.50, 2.0), cost_preset="splitee", scored_by=scored_by),
]
