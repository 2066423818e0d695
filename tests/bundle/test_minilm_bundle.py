"""The default MiniLM bundle: ONNX parity with torch on padded batches, and a real run against it."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from agents.runtime import Partition

from conftest import ROOT, write_experiment
from loopback.helpers import agent_pids, assert_gone, env, only_run


def _padded_batch(bundle, n=12):
    samples = bundle.samples("val")
    seqs = [samples.input_ids[i] for i in range(n)]
    width = max(len(s) for s in seqs)
    assert min(len(s) for s in seqs) < width  # really padded
    x = np.zeros((n, width), np.int64)
    m = np.zeros((n, width), np.int64)
    for i, s in enumerate(seqs):
        x[i, :len(s)], m[i, :len(s)] = s, 1
    return x, m


def _chain(bundle, feed):
    """Run the three tiers in order; returns each tier's outputs."""
    outs = {}
    for tier in ("mobile", "edge", "cloud"):
        spec = bundle.tier(tier)
        outs[tier] = Partition.load(bundle.root / spec.file, spec.sha256, threads=2).run(feed)
        if "hidden_out" in outs[tier]:
            feed = {"hidden": outs[tier]["hidden_out"], "attention_mask": feed["attention_mask"]}
    return outs


def test_onnx_tiers_match_torch_hidden_states_on_a_padded_batch(real_bundle):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(real_bundle.spec.model["path"], attn_implementation="eager").eval()
    x, m = _padded_batch(real_bundle)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m),
                    output_hidden_states=True).hidden_states
    batch = _chain(real_bundle, {"input_ids": x, "attention_mask": m})
    for tier in ("mobile", "edge"):
        want = ref[real_bundle.tier(tier).exit.layer].numpy()
        diff = np.abs(batch[tier]["hidden_out"] - want) * m[:, :, None]  # padded positions carry nothing
        assert diff.max() < 1e-4, f"{tier}: hidden state differs from torch by {diff.max():.2e}"
    # padding must not leak into any exit: each sample alone, unpadded, gives the same logits
    for i in (0, len(x) - 1):
        n = int(m[i].sum())
        alone = _chain(real_bundle, {"input_ids": x[i:i + 1, :n], "attention_mask": np.ones((1, n), np.int64)})
        for tier in ("mobile", "edge", "cloud"):
            diff = np.abs(alone[tier]["logits"][0] - batch[tier]["logits"][i]).max()
            assert diff < 1e-4, f"{tier}: sample {i} logits differ padded vs alone by {diff:.2e}"


def test_bundle_records_what_the_issue_asks(real_bundle):
    doc = yaml.safe_load((real_bundle.root / "bundle.yaml").read_text())
    assert [t["tier"] for t in doc["tiers"]] == ["mobile", "edge", "cloud"]
    assert [t["layers"] for t in doc["tiers"]] == [[1, 2], [3, 4], [5, 6]]
    for t in doc["tiers"]:
        assert len(t["sha256"]) == 64 and 0.3 < t["exit"]["val_accuracy"] <= 1.0
        assert {i["name"] for i in t["inputs"]} >= {"attention_mask"} and t["outputs"][-1]["name"] == "logits"
    assert doc["parity"]["max_abs_diff"] < doc["parity"]["tolerance"] <= 1e-4
    real_bundle.verify()


@pytest.mark.loopback
def test_real_run_all_cloud_accuracy_equals_the_bundle_record(real_bundle, tmp_path):
    n = real_bundle.spec.data["splits"]["test"]
    exp = write_experiment(tmp_path / "exp.yaml", real_bundle.root,
                           [{"name": "all-cloud"}, {"name": "all-mobile"},
                            {"name": "early-exit", "thresholds": {"mobile": 0.9, "edge": 0.8}}],
                           count=n, warmup=4, name="minilm")
    proc = subprocess.run([sys.executable, "-m", "testbed", "run", str(exp), "--results", str(tmp_path / "results"),
                           "-q"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per policy and exit tier" in proc.stdout
    run_dir = only_run(tmp_path / "results")
    df = pd.read_parquet(run_dir / "samples.parquet")
    m = df[df.phase == "measure"]
    cloud = m[m.policy == "all-cloud"]
    assert len(cloud) == n
    assert cloud["correct"].mean() == pytest.approx(real_bundle.tier("cloud").exit.test_accuracy, abs=1e-12)
    mobile = m[m.policy == "all-mobile"]
    assert mobile["correct"].mean() == pytest.approx(real_bundle.tier("mobile").exit.test_accuracy, abs=1e-12)
    assert (mobile["bytes_mobile_edge"] == 0).all() and (mobile["bytes_edge_cloud"] == 0).all()
    seq = np.array([len(real_bundle.samples("test").input_ids[i]) for i in cloud["sample_id"]])
    assert (cloud["bytes_mobile_edge"].to_numpy() == seq * (384 * 4 + 8)).all()
    assert (cloud["bytes_edge_cloud"].to_numpy() == seq * (384 * 4 + 8)).all()
    assert set(m[m.policy == "early-exit"]["exit_tier"]) == {"mobile", "edge", "cloud"}
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
    assert_gone(agent_pids(run_dir))
