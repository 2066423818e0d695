"""What every policy is: a class that compiles each sample to exit thresholds, and its registration.

A policy does not move samples; it compiles, per sample, to exit thresholds per tier
(``agents.protocol.should_exit``) that the agents apply on the data path, so the decision
happens on the device where the confidence is known, and samples go device to device.
:func:`decide` runs the same rule on an array of confidences, which is how a policy is
replayed offline and tested.

Each policy module of this package holds one policy: its :class:`Params` (a pydantic model:
the keys an experiment may give it, with defaults, bounds and descriptions), the class, and a
:class:`PolicyType` in ``POLICIES`` that says how to build it, what it needs from the bundle
and which paper claim and cost preset it is judged by. :mod:`testbed.policies.registry` finds
them; nothing else names a policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.protocol import should_exit
from testbed.core.costmodel import Claim, CostModel
from testbed.policies.context import PolicyContext

NEVER = float("inf")
ALWAYS = 0.0


def at_tier(tier: str, tiers: Sequence[str]) -> dict[str, float]:
    """Thresholds that make every sample exit at ``tier`` of a run with ``tiers``."""
    t = list(tiers).index(tier)
    return {name: (ALWAYS if i == t else NEVER) for i, name in enumerate(tiers[:-1]) if i <= t}


def decide(thresholds: dict[str, float], confidences: np.ndarray, tiers: Sequence[str]) -> np.ndarray:
    """Exit tier index per sample for a (samples x tiers) confidence matrix; the last tier always exits."""
    n = confidences.shape[0]
    out = np.full(n, len(tiers) - 1, dtype=np.int64)
    for i in range(n):
        for t, tier in enumerate(tiers[:-1]):
            if should_exit(thresholds.get(tier, NEVER), float(confidences[i, t])):
                out[i] = t
                break
    return out


class Policy:
    """What the controller and the replayer ask of a policy; every policy class derives from it.

    Attributes:
        name: the ``policy`` column's value (the entry's label, else its name).
        measure: the confidence the agents compute for it: ``max`` (softmax) or ``entropy``.
        needs_resources: it chooses its partitions from resources measured during its warmup (:meth:`plan`).
        upper_bound: it reads labels, which no deployable policy can; the report says so.
        record: what it fitted or chose, kept in the manifest.
    """

    measure: str = "max"
    needs_resources: bool = False
    replan: bool = False  # a needs_resources policy that plans again when a schedule step changes the resources
    probe: int = 8  # ... samples it measures through every tier before each new plan
    upper_bound: bool = False

    def __init__(self, name: str):
        self.name = name
        self.record: dict[str, Any] = {}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit thresholds per tier for one sample, sent with it to the first tier."""
        raise NotImplementedError

    def pools(self, sample_id: int) -> list[list[Any]]:
        """[[tier, threshold], ...]: route the sample by the first tier's pool router instead (empty: do not)."""
        return []

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Feedback after a sample finished (confidence at each tier it visited); most policies do not learn."""

    def choice(self, sample_id: int) -> str | None:
        """What the policy chose for the sample (arm, tier), for the ``policy_choice`` column."""
        return None

    def resources(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """The resources :meth:`plan` weighs, from the rows of a warmup through every tier (``needs_resources``)."""
        raise TypeError(f"policy {self.name} does not measure resources")

    def plan(self, resources: dict[str, dict[str, float]], **when: Any) -> None:
        """Choose from measured resources (only for ``needs_resources`` policies)."""
        raise TypeError(f"policy {self.name} does not plan from resources")

    def split(self, sample_id: int) -> int:
        """The layer after which the sample is offloaded unless it exits there (0: at its tier's end)."""
        return 0

    def layer_ranges(self) -> dict[str, tuple[int, int]] | None:
        """Tier -> (first, last) layer it runs as layer graphs for this policy; None: the tier graphs."""
        return None

    def partitions(self) -> dict[str, tuple[str, str]] | None:
        """Tier -> (file, sha256) the agents should run for this policy; None: the bundle's own."""
        return None

    def summary(self) -> dict[str, Any]:
        """What the manifest keeps of the policy after its run."""
        return dict(self.record)


class StaticPolicy(Policy):
    """The same thresholds for every sample: the baselines and the confidence early exit."""

    def __init__(self, name: str, thresholds: dict[str, float], measure: str = "max"):
        super().__init__(name)
        self._thresholds = dict(thresholds)
        self.measure = measure

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Same rule for every sample."""
        return dict(self._thresholds)

    def summary(self) -> dict[str, Any]:
        """Its thresholds."""
        return {"thresholds": dict(self._thresholds)}

    def __repr__(self) -> str:
        return f"StaticPolicy({self.name!r}, {self._thresholds})"


class Params(BaseModel):
    """Base of a policy's parameters: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Measured(Params):
    """Parameters of a policy that reads a confidence measure of its own choosing."""

    measure: Literal["max", "entropy"] = Field("max", description="the confidence: max softmax, or 1 - normalised "
                                               "entropy of the softmax")


@dataclass(frozen=True)
class PolicyType:
    """One policy as the registry knows it.

    Attributes:
        name: what ``policies[].name`` says.
        summary: one line for the reference and the plan.
        params: its parameters' model (defaults, bounds, descriptions).
        build: (label, parameters, context) -> the policy.
        needs: the bundle tables it may read (:data:`testbed.policies.context.TABLES`), loaded for it.
        needs_for: the tables its parameters make it read, where fewer than ``needs`` (default: ``needs``).
        check: (parameters, the run's tiers) -> problems beyond what ``params`` can see, each starting with
            its sub-path (``.thresholds: ...``).
        claim: the paper's claim it is judged by, if any.
        cost_preset: the cost model of its paper (:data:`testbed.core.costmodel.PRESETS`).
        scored_by: (parameters, its paper's preset) -> the cost model its verdict uses, where the entry's own
            constants replace the preset's (a policy that learns from lambda and o is scored with the ones it
            learned from); default: the preset as it is.
    """

    name: str
    summary: str
    params: type[Params]
    build: Callable[[str, Any, PolicyContext], Policy]
    needs: frozenset[str] = field(default_factory=frozenset)
    needs_for: Callable[[Any], frozenset[str]] | None = None
    check: Callable[[Any, tuple[str, ...]], list[str]] | None = None
    claim: Claim | None = None
    cost_preset: str | None = None
    scored_by: Callable[[Any, CostModel], CostModel] | None = None
