"""Routing policies: pure classes, seeded randomness, no I/O, no clock.

A policy does not move samples; it compiles, per sample, to exit thresholds per
tier (``agents.protocol.should_exit``) that the agents apply on the data path, so
the decision happens on the device where the confidence is known, and samples go
device to device. ``decide`` runs the same rule on an array of confidences, which
is how a policy is replayed offline and tested.

Names, as in experiment files and the ``policy`` column: ``all-mobile``,
``all-edge``, ``all-cloud``, ``random``, ``oracle``, ``early-exit``, ``cartography``,
``splitee``, ``splitee-s``, ``adaptive-resnet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from agents.protocol import MEASURES, TIERS, should_exit
from testbed.core import costmodel
from testbed.core.config import PolicySpec, suggest
from testbed.policies.context import PolicyContext, for_bundle
from testbed.policies.learned import (
    AdaptiveResNetPolicy,
    CartographyPolicy,
    OraclePolicy,
    RandomPolicy,
    SplitEEPolicy,
)

if TYPE_CHECKING:
    from testbed.formats.bundle import Bundle

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

    def choice(self, sample_id: int) -> str | None:
        """What the policy chose for the sample (arm, tier), for the ``policy_choice`` column."""
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

    def __init__(self, name: str, thresholds: dict[str, float], measure: str = "max"):
        self.name = name
        self._thresholds = dict(thresholds)
        self.measure = measure

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Same rule for every sample."""
        return dict(self._thresholds)

    def observe(self, sample_id: int, confidences: dict[str, float]) -> None:
        """Static policies do not learn."""

    def choice(self, sample_id: int) -> str | None:
        """Nothing per sample."""
        return None

    def __repr__(self) -> str:
        return f"StaticPolicy({self.name!r}, {self._thresholds})"


def all_tier(tier: str) -> dict[str, float]:
    """Thresholds that make every sample exit at ``tier``."""
    t = TIERS.index(tier)
    return {name: (ALWAYS if i == t else NEVER) for i, name in enumerate(TIERS[:-1]) if i <= t}


BASELINES = {"all-mobile": "mobile", "all-edge": "edge", "all-cloud": "cloud"}
NAMES = [*BASELINES, "random", "oracle", "early-exit", "cartography", "splitee", "splitee-s", "adaptive-resnet"]
#: the parameters each policy takes (anything else given is an error)
PARAMS: dict[str, set[str]] = {
    **{b: set() for b in BASELINES}, "random": {"shares"}, "oracle": set(), "early-exit": {"thresholds", "measure"},
    "cartography": {"mu", "cost"}, "splitee": {"alpha", "c", "lam", "o", "measure"},
    "splitee-s": {"alpha", "c", "lam", "o", "measure"},
    "adaptive-resnet": {"mu"},
}
DEFAULTS = {"alpha": 0.8, "c": 1.0, "lam": 0.1, "o": 0.3, "mu": 0.1, "cost": "dimec-dc"}
#: policies that need the bundle's tables (the controller loads them only when needed)
NEEDS = {"oracle": {"exits"}, "cartography": {"val_exits", "cartography"}}


def _prob_map(field: str, value: dict[str, float], keys: list[str]) -> list[str]:
    problems = []
    for tier, v in value.items():
        if tier not in keys:
            problems.append(f".{field}.{tier}: not a tier here{suggest(tier, keys)}")
        elif not 0.0 <= v <= 1.0:
            problems.append(f".{field}.{tier}: {v} is outside [0, 1]")
    return problems


def check(spec: PolicySpec) -> list[str]:
    """Problems with a policy entry, each starting with its sub-path (``.name: ...``)."""
    if spec.name not in NAMES:
        return [f".name: unknown policy {spec.name!r}{suggest(spec.name, NAMES)}"]
    keys = ("thresholds", "shares", "alpha", "c", "lam", "o", "mu", "cost", "measure")
    given = {k for k in keys if getattr(spec, k) is not None}
    problems = [f".{k}: {spec.name} takes no {k}" + (f" (it takes {', '.join(sorted(PARAMS[spec.name]))})"
                                                       if PARAMS[spec.name] else "; remove it")
                for k in sorted(given - PARAMS[spec.name])]
    if spec.name == "early-exit":
        if not spec.thresholds:
            return problems + [f".thresholds: early-exit needs a threshold for each of {list(TIERS[:-1])}, e.g. "
                               "{mobile: 0.9, edge: 0.8}"]
        for tier, value in spec.thresholds.items():
            if tier not in TIERS[:-1]:
                problems.append(f".thresholds.{tier}: not an exit tier{suggest(tier, list(TIERS[:-1]))} "
                                f"(the {TIERS[-1]} tier always finishes)")
            elif not 0.0 <= value <= 1.0:
                problems.append(f".thresholds.{tier}: {value} is outside [0, 1]; a confidence threshold is a "
                                "probability")
        problems += [f".thresholds: no threshold for {t}" for t in TIERS[:-1] if t not in spec.thresholds]
    if spec.name == "random":
        if not spec.shares:
            return problems + [".shares: random needs the share of samples per tier, e.g. "
                               "{mobile: 0.5, edge: 0.3, cloud: 0.2}"]
        problems += _prob_map("shares", spec.shares, list(TIERS))
        if not problems and abs(sum(spec.shares.values()) - 1.0) > 1e-6:
            problems.append(f".shares: they add up to {sum(spec.shares.values()):g}, not 1")
    if spec.alpha is not None and not 0.0 <= spec.alpha <= 1.0:
        problems.append(f".alpha: {spec.alpha} is outside [0, 1]; it is a confidence threshold")
    for k in ("c", "lam", "o", "mu"):
        v = getattr(spec, k)
        if v is not None and v < 0:
            problems.append(f".{k}: {v} is negative; costs and weights are >= 0")
    if spec.measure is not None and spec.measure not in MEASURES:
        problems.append(f".measure: {spec.measure!r} is not one of {list(MEASURES)}"
                        f"{suggest(spec.measure, list(MEASURES))}")
    if spec.name == "adaptive-resnet" and spec.mu is not None and not 0.0 <= spec.mu <= 1.0:
        problems.append(f".mu: {spec.mu} is outside [0, 1]; it weighs latency against accuracy")
    if spec.cost is not None and spec.cost not in costmodel.PRESETS:
        problems.append(f".cost: unknown cost preset {spec.cost!r}{suggest(spec.cost, list(costmodel.PRESETS))}")
    return problems


def param(spec: PolicySpec, name: str) -> object:
    """A policy parameter, or its default."""
    value = getattr(spec, name)
    return DEFAULTS[name] if value is None else value


def make(spec: PolicySpec, ctx: PolicyContext | None = None) -> Policy:
    """Build the policy an experiment entry names (assumes :func:`check` passed).

    ``ctx`` carries what the learned policies need from the bundle; baselines and
    early-exit need none.
    """
    if spec.name in BASELINES:
        return StaticPolicy(spec.key, all_tier(BASELINES[spec.name]))
    if spec.name == "early-exit":
        assert spec.thresholds is not None
        return StaticPolicy(spec.key, dict(spec.thresholds), spec.measure or "max")
    if ctx is None:
        raise ValueError(f"policy {spec.name} needs the bundle's context")
    if spec.name == "random":
        assert spec.shares is not None
        return RandomPolicy(spec.key, dict(spec.shares), ctx.seed)
    if spec.name == "oracle":
        assert ctx.exits is not None
        return OraclePolicy(spec.key, ctx.exits)
    if spec.name == "adaptive-resnet":
        if not ctx.resnet_variants:
            raise ValueError("adaptive-resnet needs a ResNet bundle with variants (kind: resnet)")
        return AdaptiveResNetPolicy(spec.key, ctx.resnet_variants, float(spec.mu if spec.mu is not None else 0.5))
    if spec.name == "cartography":
        cost = costmodel.preset(str(param(spec, "cost")))
        return CartographyPolicy(spec.key, ctx, cost, float(param(spec, "mu")))  # type: ignore[arg-type]
    return SplitEEPolicy(spec.key, ctx, float(param(spec, "alpha")), float(param(spec, "c")),  # type: ignore[arg-type]
                         float(param(spec, "lam")), float(param(spec, "o")), spec.name == "splitee-s",  # type: ignore[arg-type]
                         spec.measure or "max")


def context_for(bundle: Bundle, split: str, seed: int, names: set[str]) -> PolicyContext:
    """What the named policies need from ``bundle``'s split (tables are read only when a policy needs them)."""
    need = set().union(*(NEEDS.get(n, set()) for n in names)) if names else set()
    return for_bundle(bundle, split, seed, need)


def record(policy: Policy) -> dict[str, Any]:
    """What the manifest keeps of a policy after its run: fitted values, the bandit's state."""
    rec: dict[str, Any] = {"class": type(policy).__name__}
    if getattr(policy, "upper_bound", False):
        rec["upper_bound"] = "uses the labels; not deployable"
    if hasattr(policy, "record"):
        rec |= policy.record
    if isinstance(policy, SplitEEPolicy):
        rec["arms"] = policy.arms
        rec["arm_layers"] = {a: policy.layer[a] for a in policy.arms}
        rec["pulls"] = policy.n.tolist()
        rec["mean_reward"] = [float(s / n) if n else None for s, n in zip(policy.sum, policy.n, strict=True)]
        rec["best_arm"] = policy.best_arm
        rec["params"] = {k: getattr(policy, k) for k in ("alpha", "c", "lam", "o", "side_info")}
    if isinstance(policy, StaticPolicy):
        rec["thresholds"] = policy.thresholds(0, np.random.default_rng(0))
    return rec
