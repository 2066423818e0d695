"""The default MiniLM bundle: ONNX parity with torch on padded batches, and a real run against it."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from agents.runtime import Partition, sha256_file

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


def test_export_of_the_shipped_minilm_matches_its_own_forward_on_a_padded_batch(real_bundle, tmp_path):
    """The builder's tier modules and ONNX export, on the pretrained MiniLM, against transformers' forward."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from testbed.build.encoder import export, parity, tier_modules
    from testbed.build.tiers import make_cut

    model = transformers.AutoModel.from_pretrained(real_bundle.spec.model.path, attn_implementation="eager").eval()
    cut = make_cut({"mobile": (1, 2), "edge": (3, 4), "cloud": (5, 6)}, None, 6)
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({str(e): torch.nn.Linear(384, 3) for e in cut.exits})
    parts = tier_modules(model, cut, heads, "hidden", False)
    sessions = {}
    for tier in ("mobile", "edge", "cloud"):
        export(parts[tier], tmp_path / f"{tier}.onnx", 384, model.config.vocab_size)
        sessions[tier] = Partition.load(tmp_path / f"{tier}.onnx", sha256_file(tmp_path / f"{tier}.onnx"), 2)
    x, m = _padded_batch(real_bundle)
    assert parity(parts, sessions, {"input_ids": x, "attention_mask": m}, "hidden") < 1e-4
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m),
                    output_hidden_states=True).hidden_states
    feed = {"input_ids": x, "attention_mask": m}
    for tier, layer in (("mobile", 2), ("edge", 4)):
        got = sessions[tier].run(feed)
        diff = np.abs(got["hidden_out"] - ref[layer].numpy()) * m[:, :, None]  # padded positions carry nothing
        assert diff.max() < 1e-4, f"{tier}: hidden state differs from torch by {diff.max():.2e}"
        feed = {"hidden": got["hidden_out"], "attention_mask": m}


def test_padding_does_not_leak_into_any_exit_of_the_default_bundle(real_bundle):
    x, m = _padded_batch(real_bundle)
    batch = _chain(real_bundle, {"input_ids": x, "attention_mask": m})
    for i in (0, len(x) - 1):  # each sample alone, unpadded, gives the same logits at every exit
        n = int(m[i].sum())
        alone = _chain(real_bundle, {"input_ids": x[i:i + 1, :n], "attention_mask": np.ones((1, n), np.int64)})
        for tier in ("mobile", "edge", "cloud"):
            for name in [o for o in alone[tier] if o != "hidden_out"]:
                diff = np.abs(alone[tier][name][0] - batch[tier][name][i]).max()
                assert diff < 1e-4, f"{tier}/{name}: sample {i} logits differ padded vs alone by {diff:.2e}"


def test_bundle_records_what_the_issue_asks(real_bundle):
    doc = yaml.safe_load((real_bundle.root / "bundle.yaml").read_text())
    assert [t["tier"] for t in doc["tiers"]] == ["mobile", "edge", "cloud"]
    assert [t["layers"] for t in doc["tiers"]] == [[1, 2], [3, 4], [5, 6]]
    for t in doc["tiers"]:
        assert len(t["sha256"]) == 64 and 0.3 < t["exit"]["val_accuracy"] <= 1.0
        assert {i["name"] for i in t["inputs"]} >= {"attention_mask"} and "logits" in {o["name"] for o in t["outputs"]}
    assert doc["parity"]["max_abs_diff"] < doc["parity"]["tolerance"] <= 1e-4
    real_bundle.verify()


@pytest.mark.loopback
def test_real_run_all_cloud_accuracy_equals_the_bundle_record(real_bundle, tmp_path):
    n = real_bundle.spec.data.splits["test"]
    exp = write_experiment(tmp_path / "exp.yaml", real_bundle.root,
                           [{"name": "all-cloud"}, {"name": "all-mobile"},
                            {"name": "early-exit", "thresholds": {"mobile": 0.9, "edge": 0.8}},
                            {"name": "cartography"}],
                           count=n, warmup=4, name="minilm")
    proc = subprocess.run([sys.executable, "-m", "testbed", "run", str(exp), "--results", str(tmp_path / "results"),
                           "-q"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per policy, measured samples" in " ".join(proc.stdout.split()) and "report page:" in proc.stdout
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
    # the page's data map: every measured cartography sample with the route it took in this run
    assert (run_dir / "report" / "data_map.png").stat().st_size > 10_000
    mapped = pd.read_csv(run_dir / "report" / "data_map.csv")
    carto = m[m.policy == "cartography"]
    assert list(mapped["route"]) == list(carto["exit_tier"]) and list(mapped["sample_id"]) == list(carto["sample_id"])
    train = pd.read_csv(run_dir / "report" / "data_map_train.csv")  # the pools the router was trained on
    sizes = {p: c["size"] for p, c in real_bundle.spec.router.centroids.items()}
    assert train.groupby("pool").size().to_dict() == sizes
    assert_gone(agent_pids(run_dir))


def test_default_bundle_has_every_exit_cartography_and_the_int8_variant(real_bundle):
    s = real_bundle.spec
    assert s.format_version == 2 and s.exit_layers == [1, 2, 3, 4, 5, 6]
    assert [e.layer for e in real_bundle.tier("mobile").exits] == [1, 2]
    carto = pd.read_parquet(real_bundle.root / "cartography.parquet")
    n_train = s.data.splits["train"]
    assert len(carto) == n_train * 6 and (carto.epochs == s.training.epochs).all()
    assert carto.variability.between(0, 0.5).all() and carto.correctness.between(0, 1).all()
    assert [v.name for v in s.variants] == ["int8"]
    assert s.variants[0].size_bytes < real_bundle.tier("mobile").size_bytes / 2
    assert real_bundle.check_graphs() == []
    assert real_bundle.replay("test", 16) < 1e-4
    assert real_bundle.spec.router is not None and (real_bundle.root / real_bundle.spec.router.file).is_file()


def test_the_default_bundle_has_a_pool_router_whose_columns_the_agents_reproduce(real_bundle):
    from testbed.build.router import pool_columns

    r = real_bundle.spec.router
    assert r is not None and r.tier == "mobile" and r.layer == 2 and r.pools == ["easy", "medium", "hard"]
    assert r.clustered_on == [2, 4] and sum(c["size"] for c in r.centroids.values()) == r.train_samples
    table = real_bundle.exits("val").iloc[:8]
    samples = real_bundle.samples("val")
    mobile = real_bundle.tier("mobile")
    first = Partition.load(real_bundle.root / mobile.file, mobile.sha256)
    router = Partition.load(real_bundle.root / r.file, r.sha256)
    cols = pool_columns(first, router, (samples.tensors(i) for i in range(8)))
    assert np.array_equal(cols.to_numpy(), table[list(cols.columns)].to_numpy())  # bit for bit
    assert np.allclose(cols.sum(axis=1), 1.0)


def test_cartography_routes_follow_its_pools_on_the_real_bundle(real_bundle, tmp_path):
    """Shuffle which sample had which training history: the pools, the router and the routes change."""
    import shutil

    from testbed.analysis.replay import replay
    from testbed.build.router import add_router
    from testbed.core.config import PolicySpec
    from testbed.formats.bundle import Bundle

    copy = tmp_path / "shuffled"
    shutil.copytree(real_bundle.root, copy)
    carto = pd.read_parquet(copy / "cartography.parquet")
    ids = carto.sample_id.unique()
    moved = dict(zip(ids, np.random.default_rng(0).permutation(ids), strict=True))
    carto["sample_id"] = carto.sample_id.map(moved)
    carto.to_parquet(copy / "cartography.parquet", index=False)
    spec = yaml.safe_load((copy / "bundle.yaml").read_text())
    spec["files"]["cartography.parquet"] = sha256_file(copy / "cartography.parquet")
    (copy / "bundle.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    add_router(copy, progress=lambda m: None)
    policy = [PolicySpec(name="cartography", mu=0.2)]
    before, _ = replay(real_bundle, policy, "test")
    after, rec = replay(Bundle.load(copy), policy, "test")
    changed = (before.exit_tier.to_numpy() != after.exit_tier.to_numpy()).mean()
    assert changed > 0.1, changed  # the same exits and thresholds rule; only the dynamics differ
    assert rec["cartography"]["router"]["train_accuracy"] < real_bundle.spec.router.train_accuracy
