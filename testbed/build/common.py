"""What the transformer and ResNet builders share: split sizes, parity tolerance, progress, the output directory."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from testbed.core.errors import BuildError

#: the largest absolute difference allowed between torch and onnxruntime on any exported output
PARITY_TOLERANCE = 1e-4

Progress = Callable[[str], None]


class SplitSizes(BaseModel):
    """How many samples each split takes, and the seed of the shuffle."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: int = Field(3000, ge=10, description="samples the exits are trained on")
    val: int = Field(500, ge=10, description="samples for fitting policies (thresholds) and choosing settings")
    test: int = Field(500, ge=10, description="held-out samples the runs draw from")
    seed: int = Field(0, description="seed of the shuffle and of the training")


def spec_sha256(spec: BaseModel) -> str:
    """Hash of what a spec builds (its output directory left out: where is not what)."""
    return hashlib.sha256(yaml.safe_dump(spec.model_dump(exclude={"out"}), sort_keys=True).encode()).hexdigest()


def prepare_out(out: Path, force: bool) -> Path:
    """Refuse an existing output directory unless ``force``; returns the temporary build directory."""
    if out.exists() and not force:
        raise BuildError(f"--out {out} already exists; pass --force to replace it (the old bundle is removed only "
                         "after the new one is built), or choose another directory")
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, out: Path) -> None:
    """Rename the finished build ``tmp`` to ``out``, removing any bundle it replaces."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
