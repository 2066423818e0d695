"""The baselines: every sample exits at one tier (all-mobile, all-edge, all-cloud)."""

from __future__ import annotations

from collections.abc import Callable

from agents.protocol import TIERS
from testbed.policies.base import Params, PolicyType, StaticPolicy, at_tier
from testbed.policies.context import PolicyContext


class NoParams(Params):
    """A baseline takes no parameters."""


def _builder(tier: str) -> Callable[[str, NoParams, PolicyContext], StaticPolicy]:
    def build(label: str, p: NoParams, ctx: PolicyContext) -> StaticPolicy:
        return StaticPolicy(label, at_tier(tier))
    return build


POLICIES = [PolicyType(name=f"all-{tier}", summary=f"every sample runs up to the {tier} tier and exits there",
                       params=NoParams, build=_builder(tier)) for tier in TIERS]
