"""Routing policies: pure classes, seeded randomness, no I/O, no clock.

A policy does not move samples; it compiles, per sample, to exit thresholds per
tier (``agents.protocol.should_exit``) that the agents apply on the data path, so
the decision happens on the device where the confidence is known, and samples go
device to device. ``decide`` runs the same rule on an array of confidences, which
is how a policy is replayed offline and tested.

Names, as in experiment files and the ``policy`` column: ``all-mobile``,
``all-edge``, ``all-cloud``, ``early-exit``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from agents.protocol import TIERS, should_exit
from testbed.config import PolicySpec, suggest

NEVER = float("inf")
ALWAYS = 0.0


class Policy(Protocol):
    """What the controller asks of a policy."""

    name: str

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit thresholds per tier for one sample, sent with it to the first tier."""
        ...

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Feedback after a sample finished (confidence at each tier it visited)."""
        ...


def decide(thresholds: dict[str, float], confidences: np.ndarray) -> np.ndarray:
    """Exit tier index per sample for a (samples x tiers) confidence matrix; the last tier always exits."""
    n = confidences.shape[0]
    out = np.full(n, len(TIERS) - 1, dtype=np.int64)
    for i in range(n):
        for t, tier in enumerate(TIERS[:-1]):
            if should_exit(thresholds.get(tier, NEVER), float(confidences[i, t])):
                out[i] = t
                break
    return out


class StaticPolicy:
    """The same thresholds for every sample; the baselines and the confidence early exit."""

    def __init__(self, name: str, thresholds: dict[str, float]):
        self.name = name
        self._thresholds = dict(thresholds)

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Same rule for every sample."""
        return dict(self._thresholds)

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Static policies do not learn."""

    def __repr__(self) -> str:
        return f"StaticPolicy({self.name!r}, {self._thresholds})"


def all_tier(tier: str) -> dict[str, float]:
    """Thresholds that make every sample exit at ``tier``."""
    t = TIERS.index(tier)
    return {name: (ALWAYS if i == t else NEVER) for i, name in enumerate(TIERS[:-1]) if i <= t}


BASELINES = {"all-mobile": "mobile", "all-edge": "edge", "all-cloud": "cloud"}
NAMES = [*BASELINES, "early-exit"]


def check(spec: PolicySpec) -> list[str]:
    """Problems with a policy entry, each starting with its sub-path (``.name: ...``)."""
    if spec.name not in NAMES:
        return [f".name: unknown policy {spec.name!r}{suggest(spec.name, NAMES)}"]
    if spec.name in BASELINES:
        return [".thresholds: baselines take no thresholds; remove it"] if spec.thresholds is not None else []
    if not spec.thresholds:
        return [f".thresholds: early-exit needs a threshold for each of {list(TIERS[:-1])}, e.g. "
                "{mobile: 0.9, edge: 0.8}"]
    problems = []
    for tier, value in spec.thresholds.items():
        if tier not in TIERS[:-1]:
            problems.append(f".thresholds.{tier}: not an exit tier{suggest(tier, list(TIERS[:-1]))} "
                            f"(the {TIERS[-1]} tier always finishes)")
        elif not 0.0 <= value <= 1.0:
            problems.append(f".thresholds.{tier}: {value} is outside [0, 1]; a confidence threshold is a probability")
    problems += [f".thresholds: no threshold for {t}" for t in TIERS[:-1] if t not in spec.thresholds]
    return problems


def make(spec: PolicySpec) -> Policy:
    """Build the policy an experiment entry names (assumes :func:`check` passed)."""
    if spec.name in BASELINES:
        return StaticPolicy(spec.key, all_tier(BASELINES[spec.name]))
    assert spec.thresholds is not None
    return StaticPolicy(spec.key, dict(spec.thresholds))
