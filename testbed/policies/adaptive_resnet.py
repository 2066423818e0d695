"""``adaptive-resnet``: the variant and exit tier minimising a weighted latency / accuracy objective."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from testbed.core.hops import Hop
from testbed.policies.base import Params, Policy, PolicyType, at_tier
from testbed.policies.context import PolicyContext


class AdaptiveResNetParams(Params):
    """Parameters of ``adaptive-resnet``."""

    mu: float = Field(0.5, ge=0, le=1, description="weight of latency against accuracy in the objective "
                      "(0: accuracy only, 1: latency only)")
    replan: bool = Field(True, description="measure the resources again after each link or CPU schedule step and "
                         "re-plan (the samples in flight drained first); false: keep the first plan for the run")
    probe: int = Field(8, ge=3, le=10_000, description="samples issued through every tier to measure the resources "
                       "again after a step (phase probe, not measured)")


class AdaptiveResNetPolicy(Policy):
    """Adaptive ResNet (paper 4): the variant and exit tier that minimise the weighted latency/accuracy objective.

    ``plan`` takes the resources measured on the devices during the policy's warmup (ms per
    multiply-accumulate on each tier, ms per byte and per offload on each hop) and predicts,
    for every variant in the bundle and every tier it could stop at, the latency of one
    sample; it picks the pair minimising ``w * latency / latency(full, cloud) - (1 - w) *
    accuracy`` (validation accuracy of that variant's exit). Every sample then exits at the
    chosen tier, on the chosen variant's partitions.

    When the resources change during the run (a link or CPU schedule step) and ``replan`` is on,
    the controller drains the samples in flight, measures again through every tier on the
    variant loaded (``probe`` samples) and plans again; every plan is kept in ``record["plans"]``.
    """

    needs_resources = True

    def __init__(self, name: str, variants: list[dict[str, Any]], w: float, tiers: tuple[str, ...],
                 replan: bool = True, probe: int = 8):
        super().__init__(name)
        self.variants = variants
        self.w = w
        self.tiers = tiers
        self.replan = replan
        self.probe = probe
        self.variant: dict[str, Any] = variants[0]
        self.tier: str = tiers[-1]
        self.plans: list[dict[str, Any]] = []

    def resources(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """Milliseconds per multiply-accumulate and of throttling on each tier, per offload on each hop.

        The rows ran the variant loaded (the full network in the warmup, the chosen one after)
        through every tier; MACs per tier are that variant's. Compute and hop times are medians
        (what the tier or link itself costs). A CPU cap does not slow every sample evenly: the
        kernel stalls the agent for the rest of its quota period once the quota is spent, and the
        stall lands wherever the agent was (in a hop as often as in compute), so each tier is
        charged the mean time the kernel held it throttled per sample (``throttled_ms_<tier>``).
        """
        full = self.variant
        res: dict[str, dict[str, float]] = {"ms_per_mac": {}, "ms_throttled": {}, "ms_per_offload": {},
                                            "ms_per_byte": {}}
        for t in self.tiers:
            ms = [r[f"compute_ms_{t}"] for r in rows if r[f"compute_ms_{t}"] is not None]
            res["ms_per_mac"][t] = float(np.median(ms)) / max(1, full["macs"][t])
            stalled = [r.get(f"throttled_ms_{t}") for r in rows]
            res["ms_throttled"][t] = float(np.mean([x for x in stalled if x is not None] or [0.0]))
        hops = [f"controller-{self.tiers[0]}", *full["bytes_per_offload"]]  # every option pays the first
        for hop in hops:
            col = f"net_ms_{Hop.parse(hop).column}"
            net = [r[col] for r in rows if r.get(col) is not None]
            res["ms_per_offload"][hop] = float(np.median(net)) if net else 0.0
        return res

    def predict_ms(self, variant: dict[str, Any], tier: str, res: dict[str, dict[str, float]]) -> float:
        """Predicted latency of one sample on ``variant`` stopping at ``tier``, from measured resources."""
        last = self.tiers.index(tier)
        ms = res["ms_per_offload"].get(f"controller-{self.tiers[0]}", 0.0)
        ms += sum(variant["macs"][t] * res["ms_per_mac"][t] + res.get("ms_throttled", {}).get(t, 0.0)
                  for t in self.tiers[:last + 1])
        for hop in list(variant["bytes_per_offload"])[:last]:
            ms += res["ms_per_offload"].get(hop, 0.0) + variant["bytes_per_offload"][hop] * res["ms_per_byte"].get(
                hop, 0.0)
        return ms

    def plan(self, resources: dict[str, dict[str, float]], **when: Any) -> None:
        """Choose the variant and exit tier for the measured ``resources``; fills ``record``.

        ``when``: what prompted this plan and when (``trigger``, ``at_s``, ``unix_ns``), kept with it
        in ``record["plans"]``.
        """
        ref = self.predict_ms(self.variants[0], self.tiers[-1], resources)
        options = []
        for v in self.variants:
            for i, tier in enumerate(self.tiers):
                lat = self.predict_ms(v, tier, resources)
                acc = v["exits"][i]["val_accuracy"]
                options.append({"variant": v["name"], "tier": tier, "latency_ms": lat, "val_accuracy": acc,
                                "objective": self.w * lat / ref - (1 - self.w) * acc})
        best = min(options, key=lambda o: (o["objective"], o["latency_ms"]))
        before = self.choice(0) if self.plans else None
        self.variant = next(v for v in self.variants if v["name"] == best["variant"])
        self.tier = best["tier"]
        self.plans.append({**when, "resources": resources, "chosen": best,
                           "switched": before is not None and before != self.choice(0)})
        self.record = {"w": self.w, "replan": self.replan, "resources": resources, "chosen": best,
                       "options": options, "plans": self.plans}

    def partitions(self) -> dict[str, tuple[str, str]] | None:
        """The chosen variant's files, unless it is the full network the agents already run."""
        if self.variant["name"] == self.variants[0]["name"]:
            return None
        return {t: (self.variant["files"][t], self.variant["sha256"][t]) for t in self.tiers}

    def thresholds(self, sample_id: int, rng: np.random.Generator) -> dict[str, float]:
        """Exit at the chosen tier."""
        return at_tier(self.tier, self.tiers)

    def choice(self, sample_id: int) -> str | None:
        """``<variant>@<tier>``."""
        return f"{self.variant['name']}@{self.tier}"


def _build(label: str, p: AdaptiveResNetParams, ctx: PolicyContext) -> AdaptiveResNetPolicy:
    assert ctx.resnet_variants, "the registry checks the bundle has ResNet variants"
    return AdaptiveResNetPolicy(label, ctx.resnet_variants, p.mu, ctx.tiers, p.replan, p.probe)


POLICIES = [PolicyType(
    name="adaptive-resnet", summary="adaptive ResNet: from resources measured in its warmup, the variant (connections "
    "dropped) and exit tier minimising mu * latency - (1 - mu) * accuracy",
    params=AdaptiveResNetParams, needs=frozenset({"resnet_variants"}), build=_build)]
