"""Read and verify a partition bundle: ``bundle.yaml`` plus its ``.onnx`` and data files.

A bundle is what the builder (``testbed.partition``) writes and what deploy pushes:
one ONNX file per tier, each with an exit head, and the data the run draws samples
from. This module does no torch and no network; it only reads files.

Format history:
    1: tiers with layers, file, sha256, inputs/outputs, exit accuracy, offload map;
       samples.parquet (tokenised splits) and exits.parquet (per-sample exit table).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from agents.protocol import TIERS
from agents.runtime import sha256_file
from testbed.errors import BundleError

BUNDLE_FORMAT = 1


class TensorSpec(BaseModel):
    """Name, dtype and symbolic shape of a graph input or output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: str
    shape: list[str | int]


class ExitSpec(BaseModel):
    """The exit head at the end of a tier: after which layer, and how accurate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layer: int
    val_accuracy: float
    test_accuracy: float


class TierSpec(BaseModel):
    """One tier's partition."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tier: str
    layers: list[int]
    file: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    logits: str
    exit: ExitSpec
    offload: dict[str, str]


class BundleSpec(BaseModel):
    """The whole ``bundle.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int
    name: str
    model: dict[str, Any]
    task: dict[str, Any]
    offload_mode: str
    tiers: list[TierSpec]
    files: dict[str, str]
    data: dict[str, Any]
    parity: dict[str, Any]
    build: dict[str, Any]


@dataclass(frozen=True)
class Samples:
    """Tokenised samples of one split, unpadded, in the bundle's stored order."""

    sample_id: np.ndarray
    label: np.ndarray
    input_ids: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.sample_id)

    def tensors(self, i: int) -> dict[str, np.ndarray]:
        """The first tier's inputs for sample ``i`` (a batch of one, no padding)."""
        ids = self.input_ids[i].astype(np.int64)[None, :]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its directory and parsed ``bundle.yaml``."""

    root: Path
    spec: BundleSpec

    @classmethod
    def load(cls, root: Path | str) -> Bundle:
        """Parse ``root/bundle.yaml``; checks the format, not the hashes (see :meth:`verify`)."""
        root = Path(root)
        path = root / "bundle.yaml"
        if not path.is_file():
            raise BundleError(
                f"{path} does not exist: build the bundle first "
                f"(`testbed partition --config partitions/specs/<name>.yaml`, or `make demo` for the default one)"
            )
        try:
            raw = yaml.safe_load(path.read_text())
            spec = BundleSpec.model_validate(raw)
        except (yaml.YAMLError, ValidationError) as e:
            raise BundleError(f"{path} is not a valid bundle.yaml: {e}") from e
        if spec.format_version != BUNDLE_FORMAT:
            raise BundleError(f"{path}: format_version {spec.format_version}, this testbed reads {BUNDLE_FORMAT}; "
                              "rebuild the bundle")
        tiers = [t.tier for t in spec.tiers]
        if tiers != list(TIERS):
            raise BundleError(f"{path}: tiers are {tiers}, expected {list(TIERS)} in that order")
        return cls(root, spec)

    def tier(self, name: str) -> TierSpec:
        """The spec of one tier."""
        for t in self.spec.tiers:
            if t.tier == name:
                return t
        raise BundleError(f"bundle {self.root}: no tier {name!r}")

    def missing_files(self) -> list[str]:
        """Files that ``bundle.yaml`` names but that are absent."""
        names = [t.file for t in self.spec.tiers] + list(self.spec.files)
        return [n for n in names if not (self.root / n).is_file()]

    def verify(self) -> dict[str, str]:
        """Check every file's sha256; returns {file: sha256}. Raises on the first mismatch."""
        missing = self.missing_files()
        if missing:
            raise BundleError(f"bundle {self.root}: missing {', '.join(missing)}; rebuild it with `testbed partition`")
        hashes = {t.file: t.sha256 for t in self.spec.tiers} | dict(self.spec.files)
        for name, want in hashes.items():
            got = sha256_file(self.root / name)
            if got != want:
                raise BundleError(f"bundle {self.root}: {name} has sha256 {got[:16]}…, bundle.yaml says {want[:16]}…; "
                                  "the file changed after the build: rebuild the bundle")
        return hashes

    @property
    def labels(self) -> list[str]:
        """Class names, index = class id."""
        return list(self.spec.task["labels"])

    def samples(self, split: str) -> Samples:
        """Load the tokenised samples of ``split`` from ``samples.parquet``."""
        df = pd.read_parquet(self.root / "samples.parquet", filters=[("split", "==", split)])
        if df.empty:
            raise BundleError(f"bundle {self.root}: split {split!r} has no samples; "
                              f"splits: {sorted(self.spec.data.get('splits', {}))}")
        df = df.sort_values("sample_id")
        return Samples(df["sample_id"].to_numpy(np.int64), df["label"].to_numpy(np.int64),
                       [np.asarray(x, dtype=np.int64) for x in df["input_ids"]])

    def exits(self, split: str) -> pd.DataFrame:
        """The per-sample exit table (prediction and confidence at every exit) of ``split``."""
        df = pd.read_parquet(self.root / "exits.parquet", filters=[("split", "==", split)])
        return df.sort_values("sample_id").reset_index(drop=True)
