from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tinybundle import make_tiny_bundle  # noqa: E402

REAL_BUNDLE = ROOT / "partitions" / "minilm-sentiment"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def resnet_bundle(tmp_path_factory):
    """An adaptive-ResNet bundle (ResNet-8 on scikit-learn's digits, 3 epochs, variants): built once per session."""
    pytest.importorskip("torch")
    from testbed.cli import main
    from testbed.formats.bundle import Bundle

    out = tmp_path_factory.mktemp("b") / "resnet8-digits"
    assert main(["partition", "--model", "resnet-8", "--data", "builtin:digits", "--tiers", "mobile:1,edge:2,cloud:3",
                 "--epochs", "3", "--out", str(out), "--threads", "1"]) == 0
    return Bundle.load(out)


@pytest.fixture(scope="session")
def real_bundle():
    from testbed.formats.bundle import Bundle

    if not (REAL_BUNDLE / "bundle.yaml").is_file():
        pytest.skip("the default bundle is not built; `make bundle` (make test builds it first)")
    return Bundle.load(REAL_BUNDLE)


def write_inventory(path: Path, threads: int = 1, meter: dict | None = None, **overrides) -> Path:
    devices = [{"id": f"{t}-1", "tier": t, "host": "127.0.0.1", "launcher": "local", "threads": threads,
                "meter": meter or {"kind": "none"}} for t in ("mobile", "edge", "cloud")]
    for dev in devices:
        dev.update(overrides.get(dev["id"], {}))
    doc = {"devices": devices}
    if "controller" in overrides:
        doc["controller"] = overrides["controller"]
    path.write_text(yaml.safe_dump(doc))
    return path


def write_experiment(path: Path, bundle: Path, policies: list, count: int = 40, warmup: int = 2, **extra) -> Path:
    doc = {"name": extra.pop("name", "t"), "bundle": str(bundle),
           "devices": {"mobile": "mobile-1", "edge": "edge-1", "cloud": "cloud-1"},
           "samples": {"split": "test", "count": count, "warmup": warmup}, "policies": policies,
           "run": {"concurrency": 1, "flush_rows": 16}, "energy": {"idle_s": 0},
           "timeouts": {"hello_s": 30, "configure_s": 30, "heartbeat_s": 0.2, "liveness": 10, "sample_s": 20,
                        "stop_s": 3}}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
