"""The bundle build, as steps in order, shared by the transformer and the ResNet builders.

A builder (:class:`Builder`) says how its kind of model is loaded, trained, exported and
described; :func:`run` runs the steps in one order for every kind and does what they share:
seeding, onnxruntime sessions of the exported tiers, the parity check against torch, the
per-sample exit table (computed one unpadded sample at a time, exactly as the agents do),
and writing ``bundle.yaml`` from a validated :class:`~testbed.formats.bundle.BundleSpec`.
"""

from __future__ import annotations

import os
import platform
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel

from agents.runtime import Partition, sha256_file, top1, top1_entropy
from testbed.build.common import PARITY_TOLERANCE, Progress, spec_sha256
from testbed.core.errors import BuildError
from testbed.formats.bundle import BuildInfo, BundleSpec, ExitSpec, ParityInfo

#: tier -> that tier's ONNX outputs, for one sample
TierOutputs = dict[str, dict[str, np.ndarray]]
S = TypeVar("S", bound=BaseModel)


class Builder(ABC, Generic[S]):
    """One kind of model's steps on its spec ``S``; :func:`run` calls them in the order they are declared here."""

    spec: S
    threads: int
    seed: int

    @abstractmethod
    def load(self, progress: Progress) -> None:
        """Load the model and the data; make the seeded splits."""

    @abstractmethod
    def train(self, progress: Progress) -> None:
        """Train the exits (and whatever else the kind trains)."""

    @abstractmethod
    def export(self, out: Path, progress: Progress) -> dict[str, str]:
        """Export each tier to ONNX under ``out``; returns tier -> file (relative to ``out``)."""

    @abstractmethod
    def parity(self, sessions: dict[str, Partition]) -> ParityInfo:
        """Compare the exported tiers with torch on one batch."""

    @abstractmethod
    def exit_tables(self, sessions: dict[str, Partition]) -> pd.DataFrame:
        """The per-sample exit table of the val and test splits (see :func:`exit_row`)."""

    @abstractmethod
    def write_data(self, out: Path, table: pd.DataFrame, progress: Progress) -> list[str]:
        """Write ``samples.parquet`` and the kind's own tables; returns the data files to hash."""

    @abstractmethod
    def extras(self, out: Path, sessions: dict[str, Partition], table: pd.DataFrame, progress: Progress) -> None:
        """Variants and anything else derived from the exported tiers."""

    @abstractmethod
    def describe(self, out: Path, files: dict[str, str], table: pd.DataFrame, hashed: dict[str, str],
                 parity: ParityInfo, build: BuildInfo) -> BundleSpec:
        """The bundle's ``bundle.yaml``, as a validated model."""

    def router(self, out: Path, sessions: dict[str, Partition], table: pd.DataFrame,
               progress: Progress) -> pd.DataFrame:
        """DIMEC-DC's pool router where the kind has training dynamics; returns the exit table with its columns."""
        return table

    def versions(self) -> dict[str, str]:
        """Library versions the build record names besides torch (the transformer builder adds transformers)."""
        return {}


def run(builder: Builder[Any], out: Path, final_out: Path, progress: Progress) -> BundleSpec:
    """Run every step of ``builder`` into ``out`` and write ``bundle.yaml``; ``final_out`` is where it will live."""
    import torch

    t_start = time.perf_counter()
    torch.set_num_threads(builder.threads)
    torch.manual_seed(builder.seed)
    builder.load(progress)
    builder.train(progress)
    files = builder.export(out, progress)
    sessions = load_sessions(out, files, builder.threads)
    parity = builder.parity(sessions)
    check_parity(parity.max_abs_diff, "the exported tiers")
    progress(f"parity onnx vs torch on a {'padded ' if parity.padded else ''}batch of {parity.batch}: "
             f"max abs diff {parity.max_abs_diff:.2e}")
    table = builder.exit_tables(sessions)
    data_files = builder.write_data(out, table, progress)
    table = builder.router(out, sessions, table, progress)
    table.to_parquet(out / "exits.parquet", index=False)
    builder.extras(out, sessions, table, progress)
    hashed = {f: sha256_file(out / f) for f in ["samples.parquet", "exits.parquet", *data_files]}
    build = BuildInfo(seconds=round(time.perf_counter() - t_start, 1), torch=str(torch.__version__),
                      python=platform.python_version(), spec=builder.spec.model_dump(),
                      spec_sha256=spec_sha256(builder.spec), cpu_count=os.cpu_count(), **builder.versions())
    bundle = builder.describe(out, files, table, hashed, parity, build)
    (out / "bundle.yaml").write_text(yaml.safe_dump(bundle.model_dump(mode="json", exclude_none=True),
                                                    sort_keys=False))
    progress(f"bundle {final_out} built in {build.seconds} s")
    return bundle


def load_sessions(out: Path, files: dict[str, str], threads: int) -> dict[str, Partition]:
    """The onnxruntime sessions of the exported files, loaded as a device loads them (hash checked)."""
    return {t: Partition.load(out / f, sha256_file(out / f), threads=threads) for t, f in files.items()}


def check_parity(worst: float, what: str) -> None:
    """Refuse an export that differs from torch by more than :data:`PARITY_TOLERANCE`."""
    if not worst <= PARITY_TOLERANCE:
        raise BuildError(f"{what}: ONNX outputs differ from torch by {worst:.2e} > {PARITY_TOLERANCE}; "
                         "the export is wrong")


def exit_row(split: str, sample_id: int, label: int, outs: TierOutputs,
             exits: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
    """One row of the exit table from each tier's outputs on one sample.

    Columns: split, sample_id, label, ``prediction_<tier>``/``confidence_<tier>`` (each tier's own
    exit, ``logits``, the one the agents use; max softmax) with ``confidence_entropy_<tier>``
    (1 - normalised entropy), and ``prediction_L<k>``/``confidence_L<k>`` for every exit layer k
    (``exits``: tier -> [(layer, output name)]).
    """
    row: dict[str, Any] = {"split": split, "sample_id": sample_id, "label": label}
    for tier, out in outs.items():
        confidence, prediction = top1(out["logits"][0])  # exactly what the agents compute
        row[f"prediction_{tier}"] = prediction
        row[f"confidence_{tier}"] = confidence
        row[f"confidence_entropy_{tier}"] = top1_entropy(out["logits"][0])[0]
        for layer, output in exits.get(tier, []):
            c, p = top1(out[output][0])
            row[f"prediction_L{layer}"] = p
            row[f"confidence_L{layer}"] = c
    return row


def accuracies(table: pd.DataFrame, layers: list[int]) -> dict[int, dict[str, float]]:
    """Accuracy of each exit layer's predictions per split: layer -> {``<split>_accuracy``: value}."""
    out: dict[int, dict[str, float]] = {}
    for layer in layers:
        col = f"prediction_L{layer}"
        if col in table:
            out[layer] = {f"{k}_accuracy": float((sub[col] == sub["label"]).mean())
                          for k, sub in table.groupby("split")}
    return out


def exit_spec(layer: int, acc: dict[str, float], output: str = "logits") -> ExitSpec:
    """An exit's record from its accuracies (:func:`accuracies`)."""
    return ExitSpec(layer=layer, val_accuracy=acc["val_accuracy"], test_accuracy=acc["test_accuracy"], output=output)
