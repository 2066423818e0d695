"""``splitee`` and ``splitee-s``: the split layer chosen online, without labels, by a UCB bandit."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from testbed.core import costmodel
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.base import ALWAYS, NEVER, Measured, Policy, PolicyType
from testbed.policies.context import PolicyContext


class SplitEEParams(Measured):
    """Parameters of ``splitee`` and ``splitee-s``."""

    alpha: float = Field(0.8, ge=0, le=1, description="the exit confidence: a sample exits at the chosen arm when "
                         "its confidence reaches it")
    c: float = Field(1.0, ge=0, description="the UCB exploration constant")
    lam: float = Field(0.1, ge=0, description="the cost per layer in the reward")
    arms: Literal["auto", "tiers", "layers"] = Field(
        "auto", description="layers: every layer the device holds is an arm, the last one included (the paper's; "
        "two tiers, a bundle with a graph per layer); tiers: the tier boundaries; auto: layers where the run and "
        "the bundle allow it, else tiers")
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
                 side_info: bool, measure: str = "max", per_layer: bool = False):
        super().__init__(name)
        self.measure = measure
        self.tiers = ctx.tiers
        self.per_layer = per_layer
        self.depth = ctx.layer_graphs or 0
        if per_layer:  # every layer the device holds is an arm; the device holds the whole model
            self.arms = [f"L{k}" for k in range(1, self.depth + 1)]
            self.layer = {a: k for k, a in enumerate(self.arms, start=1)}
        else:
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
        """Exit at the chosen arm when confident enough, else straight on to the cloud."""
        arm = self._pick()
        self._issued += 1
        self._pending[sample_id] = arm
        key = self.arms[arm]
        self._choice[sample_id] = f"L{self.layer[key]}"
        if self.per_layer:  # the last layer always exits: everything on the device
            return {key: ALWAYS if self.layer[key] == self.depth else self.alpha}
        return {t: (self.alpha if t == key else NEVER) for t in self.arms}

    def split(self, sample_id: int) -> int:
        """Per layer: the sample leaves the device after its arm's layer unless it exits there."""
        arm = self._pending.get(sample_id)
        if not self.per_layer or arm is None or self.layer[self.arms[arm]] == self.depth:
            return 0
        return self.layer[self.arms[arm]]

    def layer_ranges(self) -> dict[str, tuple[int, int]] | None:
        """Per layer: every tier holds the whole model's layer graphs (the cloud continues where the device split)."""
        return {t: (1, self.depth) for t in self.tiers} if self.per_layer else None

    def reward(self, arm: int, confidences: dict[str, float]) -> float:
        """The authors' reward for ``arm`` given the confidences the sample produced."""
        key = self.arms[arm]
        conf = confidences[key]
        if conf >= self.alpha or (self.per_layer and self.layer[key] == self.depth):
            return conf - self.lam * self.layer[key]
        # every layer before the cloud ran: the arm's own with layer splits or in two tiers
        cost = self.lam * (self.layer[key] if self.per_layer else self.layer[self.tiers[-2]])
        final = confidences.get(f"L{self.depth}" if self.per_layer else self.tiers[-1])
        if final is None:  # never reached the cloud: the deepest confidence seen stands in
            final = confidences[self._deepest(confidences)]
        return final - self.o - cost

    def _deepest(self, confidences: dict[str, float]) -> str:
        if self.per_layer:
            return max((k for k in confidences if k.startswith("L")), key=lambda k: int(k[1:]))
        return max((k for k in confidences if k in self.tiers), key=self.tiers.index)

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
        return {"arms": self.arms, "arms_are": "layers" if self.per_layer else "tiers",
                "arm_layers": {a: self.layer[a] for a in self.arms}, "pulls": self.n.tolist(),
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
        per_layer = p.arms == "layers" or (p.arms == "auto" and len(ctx.tiers) == 2 and bool(ctx.layer_graphs))
        return SplitEEPolicy(label, ctx, p.alpha, p.c, p.lam, o, side_info, p.measure, per_layer)
    return build


def check(p: SplitEEParams, tiers: tuple[str, ...]) -> list[str]:
    """Arms at every layer are SplitEE's own setting: a device and the cloud."""
    if p.arms == "layers" and len(tiers) != 2:
        return [f".arms: layers puts every layer on the device and splits to the cloud, SplitEE's two-tier setting; "
                f"this run has {len(tiers)} tiers ({', '.join(tiers)}): use a two-tier bundle, or arms: tiers"]
    return []


def _needs(p: SplitEEParams) -> frozenset[str]:
    return frozenset({"layer_graphs"}) if p.arms == "layers" else frozenset()


POLICIES = [
    PolicyType(name="splitee", summary="SplitEE: a UCB bandit over the split layer, online and without labels",
               params=SplitEEParams, build=_builder(False), claim=Claim("SplitEE", 0.50, 2.0), cost_preset="splitee",
               scored_by=scored_by, check=check, needs=frozenset({"layer_graphs"}), needs_for=_needs),
    PolicyType(name="splitee-s", summary="SplitEE-S: SplitEE that also updates the shallower arms from the "
               "confidences a sample produced on its way", params=SplitEEParams, build=_builder(True),
               claim=Claim("SplitEE-S", 0.50, 2.0), cost_preset="splitee", scored_by=scored_by, check=check,
               needs=frozenset({"layer_graphs"}), needs_for=_needs),
]
