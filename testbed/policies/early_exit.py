"""Confidence early exit (the DIMEE paper's routing): a sample stops at the first tier confident enough.

DIMEE's own code (Div290/DIMEE) exits on a confidence threshold per exit; this is that. Its
thresholds are either hand-set or ``auto``: chosen on the bundle's validation split as the
cheapest setting (in the paper's cost preset) whose validation accuracy drop against the
last tier stays within the paper's claimed budget (0.3 pt for DIMEE). The choice, and the
validation figures behind it, go to the manifest; the verdict line says which it was.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from testbed.core import costmodel
from testbed.core.config import suggest
from testbed.core.costmodel import Claim
from testbed.policies.base import Measured, PolicyType, StaticPolicy
from testbed.policies.context import PolicyContext
from testbed.policies.fitting import cheapest_within

CLAIM = Claim("DIMEE", 0.43, 0.3)
PRESET = "dimee"


class EarlyExitParams(Measured):
    """Parameters of ``early-exit``."""

    thresholds: dict[str, float] | Literal["auto"] | None = Field(
        None, description="tier -> the confidence at or above which a sample exits there, in [0, 1]; one for each "
        "tier but the last. `auto`: the cheapest thresholds whose validation accuracy drop stays within DIMEE's "
        "0.3 pt budget (chosen on the bundle's val split, in the dimee cost preset)")


def check(p: EarlyExitParams, tiers: tuple[str, ...]) -> list[str]:
    """A threshold for every exit tier, each a probability; none for the last tier; or ``auto``."""
    exits = list(tiers[:-1])
    if p.thresholds == "auto":
        return []
    if not p.thresholds:
        example = ", ".join(f"{t}: 0.9" for t in exits)
        return [f".thresholds: early-exit needs a threshold for each of {exits}, e.g. {{{example}}}, or auto"]
    problems = []
    for tier, value in p.thresholds.items():
        if tier not in exits:
            problems.append(f".thresholds.{tier}: not an exit tier{suggest(tier, exits)} "
                            f"(the {tiers[-1]} tier always finishes)")
        elif not 0.0 <= value <= 1.0:
            problems.append(f".thresholds.{tier}: {value} is outside [0, 1]; a confidence threshold is a probability")
    return problems + [f".thresholds: no threshold for {t}" for t in exits if t not in p.thresholds]


class AutoEarlyExit(StaticPolicy):
    """Early exit with thresholds chosen on the validation split against the claim's budget."""

    def __init__(self, name: str, ctx: PolicyContext, measure: str):
        assert ctx.val_exits is not None, "the registry hands early-exit: auto the validation exit table"
        # the paper's preset at its ratios on this depth; a run whose tiers it lacks values for is refused by name
        cost = costmodel.PRESETS[PRESET].for_depth(sum(ctx.layers.values()))
        route, full = cheapest_within(ctx.val_exits, cost, ctx.layers, CLAIM.max_drop_pt, measure)
        super().__init__(name, route.thresholds, measure)
        n = len(ctx.val_exits)
        self.fit: dict[str, Any] = {
            "rule": f"cheapest thresholds (cost preset {cost.name}) whose val accuracy drop against "
                    f"{list(ctx.layers)[-1]} is <= {CLAIM.max_drop_pt} pt ({CLAIM.paper}'s budget)",
            "val_samples": n, "val_accuracy": route.accuracy, f"val_accuracy_{list(ctx.layers)[-1]}": full,
            "val_drop_pt": (full - route.accuracy) * 100, "val_cost": route.cost,
            "val_cost_reduction": 1 - route.cost / cost.route_cost(ctx.layers, list(ctx.layers)[-1]),
            "val_shares": route.shares}

    def summary(self) -> dict[str, Any]:
        """Its thresholds, how they were chosen and what they did on validation."""
        return super().summary() | {"chosen": f"auto on val (n={self.fit['val_samples']}): {self.fit['rule']}",
                                    "fit": self.fit}


def _build(label: str, p: EarlyExitParams, ctx: PolicyContext) -> StaticPolicy:
    if p.thresholds == "auto":
        return AutoEarlyExit(label, ctx, p.measure)
    return StaticPolicy(label, dict(p.thresholds or {}), p.measure)


def _needs(p: EarlyExitParams) -> frozenset[str]:
    return frozenset({"val_exits"}) if p.thresholds == "auto" else frozenset()


POLICIES = [PolicyType(
    name="early-exit", summary="exit at the first tier whose confidence reaches its threshold (hand-set, or auto: "
    "chosen on validation against DIMEE's accuracy budget)",
    params=EarlyExitParams, check=check, claim=CLAIM, cost_preset=PRESET, build=_build,
    needs=frozenset({"val_exits"}), needs_for=_needs)]
