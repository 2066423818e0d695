"""What a policy may know before the run: pure data handed in by the controller or the replayer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from testbed.formats.bundle import Bundle


@dataclass(frozen=True)
class PolicyContext:
    """Facts from the bundle that some policies need; none of it is read by the policies themselves.

    Attributes:
        tiers: the run's tiers, in the order a sample crosses them (the bundle's).
        seed: the experiment's seed (per-sample randomness derives from it and the sample id).
        layers: layers each tier runs on a full pass (cost model input).
        exit_layers: tier -> the layer of its exit (the tier boundary).
        exits: the per-sample exit table of the run's split (labels included): for the oracle only.
        val_exits: the validation split's exit table: for policies fitted offline (cartography).
        cartography: the bundle's training dynamics (``cartography.parquet``).
        resnet_variants: an adaptive-ResNet bundle's variants (accuracy per exit, MACs, bytes per offload).
        layer_graphs: how many layer graphs the bundle has (a split point at every layer); None: none.
        router: the bundle's pool router (:class:`testbed.formats.bundle.RouterSpec` as a dict); None: none.
    """

    tiers: tuple[str, ...]
    seed: int = 0
    layers: dict[str, int] = field(default_factory=dict)
    exit_layers: dict[str, int] = field(default_factory=dict)
    exits: pd.DataFrame | None = None
    val_exits: pd.DataFrame | None = None
    cartography: pd.DataFrame | None = None
    resnet_variants: list[dict[str, Any]] | None = None
    layer_graphs: int | None = None
    router: dict[str, Any] | None = None


#: what a policy may need from a bundle: table -> (what it is, how a bundle that lacks it gets it)
TABLES: dict[str, tuple[str, str]] = {
    "exits": ("the run split's exit table, labels included", "every bundle has it"),
    "val_exits": ("the validation split's exit table", "every bundle has it"),
    "cartography": ("the training dynamics (cartography.parquet)", "rebuild the bundle with `testbed partition`"),
    "resnet_variants": ("ResNet variants with connections dropped", "build a ResNet bundle: testbed partition "
                        "--config partitions/specs/resnet-digits.yaml"),
    "router": ("a pool router trained on the training dynamics' easy / medium / hard pools (DIMEC-DC)",
               "rebuild it with this testbed's `testbed partition` (a transformer with hidden-state offloads and "
               "two or three tiers), or add one to it with `testbed bundle add-router BUNDLE`"),
    "layer_graphs": ("one graph per layer (a split point at every layer)", "rebuild it with an exit after every "
                     "layer (exits: all) and hidden-state offloads, which export layers/L<k>.onnx"),
}


def missing(bundle: Bundle, need: frozenset[str] | set[str]) -> list[str]:
    """The tables of ``need`` that ``bundle`` lacks, each with how to get it."""
    has = bundle.tables()
    return [f"{TABLES[n][0]}, which {bundle.root.name!r} ({bundle.spec.kind}) lacks: {TABLES[n][1]}"
            for n in sorted(need) if n not in has]


def for_bundle(bundle: Bundle, split: str, seed: int, need: set[str]) -> PolicyContext:
    """What policies that ``need`` the named tables get from ``bundle`` (tables are read only when needed)."""
    return PolicyContext(
        tiers=bundle.tiers, seed=seed, layers=bundle.layers_run,
        exit_layers={t.tier: t.exit.layer for t in bundle.spec.tiers},
        exits=bundle.exits(split) if "exits" in need else None,
        val_exits=bundle.exits("val") if "val_exits" in need else None,
        cartography=bundle.cartography() if "cartography" in need else None,
        resnet_variants=[v.model_dump() for v in bundle.spec.resnet_variants] or None,
        layer_graphs=len(bundle.spec.layer_graphs) or None,
        router=bundle.spec.router.model_dump() if bundle.spec.router is not None else None,
    )
