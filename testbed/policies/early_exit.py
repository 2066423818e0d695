"""Confidence early exit (the DIMEE paper's routing): a sample stops at the first tier confident enough."""

from __future__ import annotations

from pydantic import Field

from testbed.core.config import suggest
from testbed.core.costmodel import Claim
from testbed.policies.base import Measured, PolicyType, StaticPolicy


class EarlyExitParams(Measured):
    """Parameters of ``early-exit``."""

    thresholds: dict[str, float] | None = Field(None, description="tier -> the confidence at or above which a "
                                                "sample exits there, in [0, 1]; one for each tier but the last")


def check(p: EarlyExitParams, tiers: tuple[str, ...]) -> list[str]:
    """A threshold for every exit tier, each a probability; none for the last tier."""
    exits = list(tiers[:-1])
    if not p.thresholds:
        example = ", ".join(f"{t}: 0.9" for t in exits)
        return [f".thresholds: early-exit needs a threshold for each of {exits}, e.g. {{{example}}}"]
    problems = []
    for tier, value in p.thresholds.items():
        if tier not in exits:
            problems.append(f".thresholds.{tier}: not an exit tier{suggest(tier, exits)} "
                            f"(the {tiers[-1]} tier always finishes)")
        elif not 0.0 <= value <= 1.0:
            problems.append(f".thresholds.{tier}: {value} is outside [0, 1]; a confidence threshold is a probability")
    return problems + [f".thresholds: no threshold for {t}" for t in exits if t not in p.thresholds]


POLICIES = [PolicyType(
    name="early-exit", summary="exit at the first tier whose confidence reaches its threshold",
    params=EarlyExitParams, check=check, claim=Claim("DIMEE", 0.43, 0.3), cost_preset="dimee",
    build=lambda label, p, ctx: StaticPolicy(label, dict(p.thresholds or {}), p.measure))]
