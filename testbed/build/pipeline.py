"""``testbed partition``: read a partition spec and build the bundle it describes, transformer or ResNet."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from testbed.build.common import Progress, commit, prepare_out
from testbed.build.resnet import ResNetBuilder, ResNetSpec
from testbed.build.steps import run
from testbed.build.transformer import PartitionSpec, TransformerBuilder
from testbed.core.config import load_yaml_model
from testbed.formats.bundle import Bundle


def load_spec(path: Path) -> PartitionSpec | ResNetSpec:
    """Load and validate a partition spec file (every problem at once); ``kind: resnet`` gives a ResNetSpec."""
    try:
        kind = (yaml.safe_load(path.read_text()) or {}).get("kind") if path.is_file() else None
    except (yaml.YAMLError, AttributeError):
        kind = None
    if kind == "resnet":
        return load_yaml_model(path, ResNetSpec)
    return load_yaml_model(path, PartitionSpec)


def build_bundle(spec: PartitionSpec | ResNetSpec, out: Path, progress: Progress = lambda _: None,
                 force: bool = False) -> Bundle:
    """Build the bundle ``spec`` describes into ``out``; returns it, verified.

    The build happens in a temporary sibling directory renamed to ``out`` at the end; on any
    error it is removed and ``out`` is untouched.

    Raises:
        BuildError: the output exists (without ``force``), the model, the data or the export failed,
            or ONNX disagrees with torch.
    """
    tmp = prepare_out(out, force)
    try:
        run(ResNetBuilder(spec) if isinstance(spec, ResNetSpec) else TransformerBuilder(spec), tmp, out, progress)
        commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle = Bundle.load(out)
    bundle.verify()
    return bundle
