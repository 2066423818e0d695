"""``random``: each sample exits at a tier drawn with given shares (seeded by the experiment seed and sample id)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from testbed.core.config import suggest
from testbed.policies.base import Params, Policy, PolicyType, at_tier


class RandomParams(Params):
    """Parameters of ``random``."""

    shares: dict[str, float] | None = Field(None, description="tier -> probability of exiting there (they add "
                                            "up to 1)")


class RandomPolicy(Policy):
    """Each sample goes to a tier drawn with the given shares (seeded by experiment seed and sample id)."""

    def __init__(self, name: str, shares: dict[str, float], seed: int, run_tiers: tuple[str, ...]):
        super().__init__(name)
        self.run_tiers = run_tiers
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
        return at_tier(tier, self.run_tiers)

    def choice(self, sample_id: int) -> str | None:
        """The drawn tier."""
        return self._choice.get(sample_id)


def check(p: RandomParams, tiers: tuple[str, ...]) -> list[str]:
    """Shares of known tiers, each a probability, adding up to 1."""
    if not p.shares:
        example = ", ".join(f"{t}: {1 / len(tiers):.2g}" for t in tiers)
        return [f".shares: random needs the share of samples per tier, e.g. {{{example}}}"]
    problems = []
    for tier, v in p.shares.items():
        if tier not in tiers:
            problems.append(f".shares.{tier}: not a tier of this run ({', '.join(tiers)}){suggest(tier, list(tiers))}")
        elif not 0.0 <= v <= 1.0:
            problems.append(f".shares.{tier}: {v} is outside [0, 1]")
    if not problems and abs(sum(p.shares.values()) - 1.0) > 1e-6:
        problems.append(f".shares: they add up to {sum(p.shares.values()):g}, not 1")
    return problems


POLICIES = [PolicyType(
    name="random", summary="each sample exits at a tier drawn with the given shares", params=RandomParams,
    check=check, build=lambda label, p, ctx: RandomPolicy(label, dict(p.shares or {}), ctx.seed, ctx.tiers))]
