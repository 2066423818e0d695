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


class AdaptiveResNetPolicy(Policy):
    """Adaptive ResNet (paper 4): the variant and exit tier that minimise the weighted latency/accuracy objective.

    ``plan`` takes the resources measured on the devices during the policy's warmup (ms per
    multiply-accumulate on each tier, ms per byte and per offload on each hop) and predicts,
    for every variant in the bundle and every tier it could stop at, the latency of one
    sample; it picks the pair minimising ``w * latency / latency(full, cloud) - (1 - w) *
    accuracy`` (validation accuracy of that variant's exit). Every sample then exits at the
    chosen tier, on the chosen variant's partitions.
    """

    needs_resources = True

    def __init__(self, name: str, variants: list[dict[str, Any]], w: float, tiers: tuple[str, ...]):
        super().__init__(name)
        self.variants = variants
        self.w = w
        self.tiers = tiers
        self.variant: dict[str, Any] = variants[0]
        self.tier: str = tiers[-1]

    def resources(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """Milliseconds per multiply-accumulate on each tier and per offload on each hop, from warmup rows.

        The rows are of the full network run through every tier; medians; MACs per tier are the full variant's.
        """
        full = self.variants[0]
        res: dict[str, dict[str, float]] = {"ms_per_mac": {}, "ms_per_offload": {}, "ms_per_byte": {}}
        for t in self.tiers:
            ms = [r[f"compute_ms_{t}"] for r in rows if r[f"compute_ms_{t}"] is not None]
            res["ms_per_mac"][t] = float(np.median(ms)) / max(1, full["macs"][t])
        for hop in full["bytes_per_offload"]:
            col = f"net_ms_{Hop.parse(hop).column}"
            net = [r[col] for r in rows if r[col] is not None]
            res["ms_per_offload"][hop] = float(np.median(net)) if net else 0.0
        return res

    def predict_ms(self, variant: dict[str, Any], tier: str, res: dict[str, dict[str, float]]) -> float:
        """Predicted latency of one sample on ``variant`` stopping at ``tier``, from measured resources."""
        last = self.tiers.index(tier)
        ms = sum(variant["macs"][t] * res["ms_per_mac"][t] for t in self.tiers[:last + 1])
        for hop in list(variant["bytes_per_offload"])[:last]:
            ms += res["ms_per_offload"].get(hop, 0.0) + variant["bytes_per_offload"][hop] * res["ms_per_byte"].get(
                hop, 0.0)
        return ms

    def plan(self, resources: dict[str, dict[str, float]]) -> None:
        """Choose the variant and exit tier for the measured ``resources``; fills ``record``."""
        ref = self.predict_ms(self.variants[0], self.tiers[-1], resources)
        options = []
        for v in self.variants:
            for i, tier in enumerate(self.tiers):
                lat = self.predict_ms(v, tier, resources)
                acc = v["exits"][i]["val_accuracy"]
                options.append({"variant": v["name"], "tier": tier, "latency_ms": lat, "val_accuracy": acc,
                                "objective": self.w * lat / ref - (1 - self.w) * acc})
        best = min(options, key=lambda o: (o["objective"], o["latency_ms"]))
        self.variant = next(v for v in self.variants if v["name"] == best["variant"])
        self.tier = best["tier"]
        self.record = {"w": self.w, "resources": resources, "chosen": best, "options": options}

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
    return AdaptiveResNetPolicy(label, ctx.resnet_variants, p.mu, ctx.tiers)


POLICIES = [PolicyType(
    name="adaptive-resnet", summary="adaptive ResNet: from resources measured in its warmup, the variant (connections "
    "dropped) and exit tier minimising mu * latency - (1 - mu) * accuracy",
    params=AdaptiveResNetParams, needs=frozenset({"resnet_variants"}), build=_build)]
