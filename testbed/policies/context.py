"""What a policy may know before the run: pure data handed in by the controller or the replayer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class PolicyContext:
    """Facts from the bundle that some policies need; none of it is read by the policies themselves.

    Attributes:
        seed: the experiment's seed (per-sample randomness derives from it and the sample id).
        layers: layers each tier runs on a full pass (cost model input).
        exit_layers: tier -> the layer of its exit (the tier boundary).
        exits: the per-sample exit table of the run's split (labels included): for the oracle only.
        val_exits: the validation split's exit table: for policies fitted offline (cartography).
        cartography: the bundle's training dynamics (``cartography.parquet``).
        resnet_variants: an adaptive-ResNet bundle's variants (accuracy per exit, MACs, bytes per offload).
    """

    seed: int
    layers: dict[str, int]
    exit_layers: dict[str, int]
    exits: pd.DataFrame | None = None
    val_exits: pd.DataFrame | None = None
    cartography: pd.DataFrame | None = None
    resnet_variants: list[dict[str, Any]] | None = None
