import shutil

import numpy as np
import pytest

from agents.runtime import Partition, PartitionError, top1
from testbed import policies
from testbed.core.errors import BundleError
from testbed.formats.bundle import Bundle

T3 = ("mobile", "edge", "cloud")  # the default tiers


def test_tiny_bundle_verifies_and_loads_samples(tiny_bundle):
    hashes = tiny_bundle.verify()
    assert set(hashes) >= {"mobile.onnx", "edge.onnx", "cloud.onnx", "samples.parquet"}
    s = tiny_bundle.samples("test")
    t = s.tensors(0)
    assert t["input_ids"].shape == t["attention_mask"].shape and t["input_ids"].dtype == np.int64


def test_tampered_file_fails_verification(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle.root, copy)
    with open(copy / "edge.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="edge.onnx has sha256"):
        Bundle.load(copy).verify()
    (copy / "cloud.onnx").unlink()
    with pytest.raises(BundleError, match="missing cloud.onnx"):
        Bundle.load(copy).verify()


def test_missing_bundle_says_how_to_build(tmp_path):
    with pytest.raises(BundleError, match="testbed partition"):
        Bundle.load(tmp_path)


def test_partition_refuses_wrong_hash(tiny_bundle):
    with pytest.raises(PartitionError, match="stale or corrupt"):
        Partition.load(tiny_bundle.root / "mobile.onnx", "0" * 64)
    with pytest.raises(PartitionError, match="does not exist"):
        Partition.load(tiny_bundle.root / "nope.onnx", "0" * 64)


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def test_top1_equals_numpy_softmax():
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.normal(size=(1, 5)).astype(np.float32) * 10
        probs = softmax(logits.astype(np.float64))[0]
        conf, pred = top1(logits[0])
        assert pred == probs.argmax() and conf == pytest.approx(probs.max(), abs=1e-12)


def test_chained_partitions_match_the_exit_table(tiny_bundle):
    """Running the tiers in one process reproduces the stored per-sample exit table."""
    parts = {t.tier: Partition.load(tiny_bundle.root / t.file, t.sha256) for t in tiny_bundle.spec.tiers}
    samples = tiny_bundle.samples("test")
    table = tiny_bundle.exits("test")
    for i in range(len(samples)):
        feed = samples.tensors(i)
        for tier in ("mobile", "edge", "cloud"):
            out = parts[tier].run(feed)
            probs = softmax(out["logits"].astype(np.float64))[0]
            assert int(probs.argmax()) == table.loc[i, f"prediction_{tier}"]
            assert probs.max() == pytest.approx(table.loc[i, f"confidence_{tier}"], abs=1e-6)
            if "hidden_out" in out:
                feed = {"hidden": out["hidden_out"], "attention_mask": feed["attention_mask"]}


def test_replay_spreads_tiny_samples_over_every_tier(tiny_bundle):
    table = tiny_bundle.exits("test")
    conf = table[["confidence_mobile", "confidence_edge", "confidence_cloud"]].to_numpy()
    tiers = policies.decide({"mobile": 0.85, "edge": 0.8}, conf, T3)
    assert set(tiers) == {0, 1, 2}


def test_bundle_yaml_round_trips_through_the_schema(tiny_bundle, tmp_path):
    import shutil

    import yaml

    from testbed.formats.bundle import Bundle, BundleSpec

    doc = tiny_bundle.spec.model_dump()
    again = BundleSpec.model_validate(yaml.safe_load(yaml.safe_dump(doc, sort_keys=False)))
    assert again == tiny_bundle.spec
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle.root, copy)
    (copy / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert Bundle.load(copy).spec == tiny_bundle.spec and Bundle.load(copy).verify()
    assert tiny_bundle.offload_mode == "hidden" and tiny_bundle.offload_bytes(5) == 5 * (8 * 4 + 8)
    assert tiny_bundle.check_graphs() == [] and tiny_bundle.replay("val", 5) == 0.0
    doc["format_version"] = 1
    (copy / "bundle.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(BundleError, match="format_version 1.*rebuild"):
        Bundle.load(copy)
    doc["format_version"] = 2
    doc["surprise"] = 1
    (copy / "bundle.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(BundleError, match="surprise"):
        Bundle.load(copy)
