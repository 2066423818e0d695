"""The baselines: every sample exits at one tier.

``all-mobile``, ``all-edge`` and ``all-cloud`` name the tiers of the default layout; ``all-at``
takes the tier as a parameter (``tier: device``), for runs whose tiers have other names. A
baseline whose tier the run lacks is refused when the experiment is checked.
"""

from __future__ import annotations

from pydantic import Field

from agents.protocol import DEFAULT_TIERS
from testbed.core.config import suggest
from testbed.policies.base import Params, PolicyType, StaticPolicy, at_tier
from testbed.policies.context import PolicyContext


class NoParams(Params):
    """A named baseline takes no parameters."""


class AtParams(Params):
    """Parameters of ``all-at``."""

    tier: str = Field(description="the tier every sample exits at (one of the run's tiers)")


def _tier_problems(name: str, tiers: tuple[str, ...], what: str) -> list[str]:
    if name in tiers:
        return []
    return [f"{what}: the run has no {name!r} tier (its tiers are {', '.join(tiers)}){suggest(name, list(tiers))}"
            "; use all-at with tier: <one of them>"]


def _named(tier: str) -> PolicyType:
    def build(label: str, p: NoParams, ctx: PolicyContext) -> StaticPolicy:
        return StaticPolicy(label, at_tier(tier, ctx.tiers))
    return PolicyType(name=f"all-{tier}", summary=f"every sample runs up to the {tier} tier and exits there",
                      params=NoParams, build=build, check=lambda p, tiers: _tier_problems(tier, tiers, ".name"))


def _build_at(label: str, p: AtParams, ctx: PolicyContext) -> StaticPolicy:
    return StaticPolicy(label, at_tier(p.tier, ctx.tiers))


POLICIES = [_named(tier) for tier in DEFAULT_TIERS]
POLICIES.append(PolicyType(name="all-at", summary="every sample runs up to the given tier and exits there",
                           params=AtParams, build=_build_at,
                           check=lambda p, tiers: _tier_problems(p.tier, tiers, ".tier")))
