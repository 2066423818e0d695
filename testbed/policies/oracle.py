"""``oracle``: the cheapest tier whose exit is right, from the labels; an upper bound, not deployable."""

from __future__ import annotations

import numpy as np
import pandas as pd

from testbed.policies.base import Params, Policy, PolicyType, at_tier
from testbed.policies.context import PolicyContext


class OracleParams(Params):
    """The oracle takes no parameters."""


class OraclePolicy(Policy):
    """Upper bound: the cheapest tier whose exit is right, from the labels (mobile when none is).

    It reads the labels, which no deployable policy can; the report marks it as an upper bound.
    """

    upper_bound = True

    def __init__(self, name: str, exits: pd.DataFrame, tiers: tuple[str, ...]):
        super().__init__(name)
        self.tiers = tiers
        right = np.stack([(exits[f"prediction_{t}"] == exits["label"]).to_numpy() for t in tiers], axis=1)
        first = np.where(right.any(axis=1), right.argmax(axis=1), 0)
        self._tier = dict(zip(exits["sample_id"].astype(int), (tiers[i] for i in first), strict=True))

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the cheapest correct tier."""
        return at_tier(self._tier[sample_id], self.tiers)

    def choice(self, sample_id: int) -> str | None:
        """The tier it picked."""
        return self._tier.get(sample_id)


def _build(label: str, p: OracleParams, ctx: PolicyContext) -> OraclePolicy:
    assert ctx.exits is not None, "the registry hands the oracle the run split's exit table"
    return OraclePolicy(label, ctx.exits, ctx.tiers)


POLICIES = [PolicyType(
    name="oracle", summary="the cheapest tier whose exit is right, from the labels: an upper bound",
    params=OracleParams, needs=frozenset({"exits"}), build=_build)]
