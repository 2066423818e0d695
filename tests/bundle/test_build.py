"""`testbed partition` end to end on tiny random encoders: every option, every refusal, bundle verify/show."""

import numpy as np
import pandas as pd
import pytest
import yaml

from testbed.cli import main
from testbed.formats.bundle import Bundle

from conftest import write_experiment, write_inventory
from loopback.helpers import only_run

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tinymodels import make_tiny_encoder  # noqa: E402

SMALL = ["--train", "120", "--val", "40", "--test", "40", "--max-length", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {a: make_tiny_encoder(root / a, a) for a in ("bert", "roberta")}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rng = np.random.default_rng(0)
    rows = [{"premise": f"the cat sat on the mat number {i}",
             "hypothesis": ("a cat sat there" if i % 2 else "dogs run very fast") + f" {rng.integers(100)}",
             "label": ["entailment", "contradiction"][i % 2]} for i in range(260)]
    pd.DataFrame(rows).to_json(p, orient="records", lines=True)
    return p


@pytest.fixture(scope="module")
def bert_bundle(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bert-every-exit"
    code = main(["partition", "--model", str(models["bert"]), "--data", "builtin:sentiment",
                 "--tiers", "mobile:1,edge:2-3,cloud:4", "--out", str(out), "--epochs", "3",
                 "--variants", "fp16,int8", *SMALL])
    assert code == 0
    return Bundle.load(out)


@pytest.fixture(scope="module")
def roberta_pairs_bundle(models, pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "roberta-pairs"
    code = main(["partition", "--model", str(models["roberta"]), "--data", str(pairs_file),
                 "--text-column", "premise", "--text-pair-column", "hypothesis", "--tiers", "mobile:1-2,edge:3,cloud:4",
                 "--exits", "2,3", "--finetune", "--epochs", "2", "--offload", "input", "--out", str(out), *SMALL])
    assert code == 0
    return Bundle.load(out)


def test_every_layer_is_also_a_graph_of_its_own_checked_against_torch(bert_bundle):
    graphs = bert_bundle.spec.layer_graphs
    assert [g.layer for g in graphs] == [1, 2, 3, 4] and [g.file for g in graphs][0] == "layers/L1.onnx"
    assert graphs[0].inputs == ["input_ids", "attention_mask"] and graphs[0].outputs == ["hidden_out", "logits"]
    assert graphs[-1].inputs == ["hidden", "attention_mask"] and graphs[-1].outputs == ["logits"]
    assert bert_bundle.spec.parity.max_abs_diff <= bert_bundle.spec.parity.tolerance  # tiers and layers alike
    assert all(g.file in bert_bundle.device_files("mobile") for g in graphs)
    assert bert_bundle.verify()  # every layer graph hashed and present


def test_every_layer_gets_an_exit_and_the_table_matches_the_recorded_accuracy(bert_bundle):
    s = bert_bundle.spec
    assert s.exit_layers == [1, 2, 3, 4] and s.model.architecture == "bert"
    assert [e.layer for e in bert_bundle.tier("edge").exits] == [2, 3]
    assert bert_bundle.tier("edge").exits[0].output == "exit_L2"
    for split in ("val", "test"):
        table = bert_bundle.exits(split)
        assert len(table) == 40
        for t in s.tiers:
            for e in t.exits:
                acc = float((table[f"prediction_L{e.layer}"] == table["label"]).mean())
                assert acc == getattr(e, f"{split}_accuracy")
            assert (table[f"prediction_{t.tier}"] == table[f"prediction_L{t.exit.layer}"]).all()
        conf = table[[f"confidence_L{k}" for k in s.exit_layers]].to_numpy()
        assert ((conf >= 1 / 3 - 1e-6) & (conf <= 1)).all()
    assert s.parity.max_abs_diff < 1e-4


def test_cartography_has_every_train_sample_at_every_exit(bert_bundle):
    carto = pd.read_parquet(bert_bundle.root / "cartography.parquet")
    assert len(carto) == 120 * 4 and set(carto.exit_layer) == {1, 2, 3, 4}
    assert (carto.epochs == 3).all()
    for _, r in carto.sample(20, random_state=0).iterrows():
        p = np.asarray(r.gold_prob_by_epoch, np.float64)
        assert len(p) == 3 and r.confidence == pytest.approx(p.mean(), abs=1e-6)
        assert r.variability == pytest.approx(p.std(), abs=1e-6)
    assert carto.correctness.between(0, 1).all() and carto.confidence.between(0, 1).all()
    train = bert_bundle.samples("train")
    assert set(carto.sample_id) == set(train.sample_id.tolist())


def test_variants_are_recorded_with_their_accuracy(bert_bundle):
    variants = {v.name: v for v in bert_bundle.spec.variants}
    assert set(variants) == {"fp16", "int8"}
    full = bert_bundle.tier("mobile").size_bytes
    assert variants["int8"].size_bytes < variants["fp16"].size_bytes < full
    assert variants["fp16"].max_confidence_diff < 1e-2
    for v in variants.values():
        assert 0 <= v.exits[0]["val_accuracy"] <= 1 and 0 <= v.final["test_accuracy"] <= 1
        assert (bert_bundle.root / v.file).is_file()


def test_verify_and_show(bert_bundle, capsys):
    assert main(["bundle", "verify", str(bert_bundle.root)]) == 0
    text = capsys.readouterr().out
    assert "hashes" in text and "shapes" in text and "replays exits.parquet" in text
    assert main(["bundle", "show", str(bert_bundle.root)]) == 0
    text = capsys.readouterr().out
    assert "exit_L2" in text and "int8" in text and "seq_len * (32 * 4 + 8)" in text
    assert "pool router difficulty.onnx on the mobile tier" in " ".join(text.split())


def test_verify_fails_loudly_on_a_changed_file(bert_bundle, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bert_bundle.root, copy)
    with open(copy / "edge.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["bundle", "verify", str(copy)]) == 2
    assert "edge.onnx has sha256" in capsys.readouterr().err
    shutil.copyfile(bert_bundle.root / "edge.onnx", copy / "edge.onnx")
    doc = yaml.safe_load((copy / "bundle.yaml").read_text())
    doc["tiers"][1]["outputs"][0]["name"] = "renamed"
    (copy / "bundle.yaml").write_text(yaml.safe_dump(doc))
    assert main(["bundle", "verify", str(copy)]) == 2
    assert "has no output 'renamed'" in " ".join(capsys.readouterr().err.split())


def test_pairs_finetune_input_offload_on_roberta(roberta_pairs_bundle):
    b = roberta_pairs_bundle
    assert b.spec.model.architecture == "roberta" and b.offload_mode == "input"
    assert b.spec.training.finetune is True
    # each later tier re-runs from the tokens: its graph takes token ids and runs from layer 1
    assert [i.name for i in b.tier("edge").inputs] == ["input_ids", "attention_mask"]
    assert b.tier("edge").runs_layers == [1, 2, 3] and b.tier("cloud").runs_layers == [1, 2, 3, 4]
    assert b.tier("mobile").offload == {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    assert b.offload_bytes(10) == 160
    samples = pd.read_parquet(b.root / "samples.parquet")
    assert "text_pair" in samples.columns
    assert main(["bundle", "verify", str(b.root)]) == 0


def test_a_two_tier_bundle_builds_checks_parity_and_runs_live_on_a_device_and_the_cloud(models, tmp_path):
    """SplitEE's setting: the device holds layers 1-2 (exits after each), the cloud 3-4."""
    out = tmp_path / "bert-two"
    assert main(["partition", "--model", str(models["bert"]), "--data", "builtin:sentiment",
                 "--tiers", "mobile:1-2,cloud:3-4", "--exits", "1", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    b = Bundle.load(out)
    assert b.tiers == ("mobile", "cloud") and b.spec.exit_layers == [1, 2, 4]
    assert b.spec.parity.max_abs_diff <= b.spec.parity.tolerance  # ONNX against torch, two tiers chained
    assert [e.layer for e in b.tier("mobile").exits] == [1, 2] and b.tier("mobile").offload
    # no exit after layer 3: no graph per layer (a split needs an exit at every layer)
    assert b.spec.layer_graphs == []
    exp = write_experiment(tmp_path / "exp.yaml", out, [{"name": "all-cloud"}, {"name": "splitee", "alpha": 0.6}],
                           count=12, warmup=1, name="two", devices={"mobile": "mobile-1", "cloud": "cloud-1"})
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    df = pd.read_parquet(only_run(tmp_path / "results") / "samples.parquet")
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")]
    table = b.exits("test").set_index("sample_id")
    assert (cloud.prediction.to_numpy() == table.loc[cloud.sample_id, "prediction_cloud"].to_numpy()).all()
    assert set(cloud.tier_path) == {"mobile>cloud"} and (cloud.bytes_mobile_cloud > 0).all()


def test_bert_pairs_carry_token_type_ids_through_a_live_run(models, pairs_file, tmp_path):
    out = tmp_path / "bert-pairs"
    assert main(["partition", "--model", str(models["bert"]), "--data", str(pairs_file), "--text-column", "premise",
                 "--text-pair-column", "hypothesis", "--tiers", "mobile:1,edge:2,cloud:3-4", "--exits", "1,2",
                 "--epochs", "1", "--offload", "input", "--out", str(out), *SMALL]) == 0
    b = Bundle.load(out)
    assert [i.name for i in b.tier("mobile").inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert b.samples("test").tensors(0)["token_type_ids"].max() == 1  # the second sentence is type 1
    exp = write_experiment(tmp_path / "exp.yaml", out, [{"name": "all-cloud"}], count=12, warmup=1, name="pairs")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    df = pd.read_parquet(only_run(tmp_path / "results") / "samples.parquet")
    df = df[df.phase == "measure"]
    table = b.exits("test").set_index("sample_id")
    assert (df.prediction.to_numpy() == table.loc[df.sample_id, "prediction_cloud"].to_numpy()).all()
    samples = b.samples("test")
    seq = np.array([len(samples.input_ids[int(i)]) for i in df.sample_id])
    assert (df.bytes_mobile_edge.to_numpy() == seq * 24).all()  # ids, mask, types: int64 each
    assert (df.bytes_edge_cloud.to_numpy() == seq * 24).all()


@pytest.mark.parametrize(("args", "match"), [
    (["--tiers", "mobile:1-2,edge:2-3,cloud:4"], "overlaps the previous tier"),
    (["--tiers", "mobile:1,edge:3,cloud:4"], "leaves layers 2-2 in no tier"),
    (["--tiers", "mobile:1,edge:2,cloud:3-5"], "model has 4 layers"),
    (["--tiers", "mobile:1,edge:2,cloud:3-4", "--exits", "9"], "beyond the model's depth"),
])
def test_bad_cuts_are_refused_before_anything_is_written(models, tmp_path, capsys, args, match):
    out = tmp_path / "never"
    code = main(["partition", "--model", str(models["bert"]), "--data", "builtin:sentiment", "--out", str(out),
                 *args, *SMALL])
    assert code in (2, 7)
    assert match in " ".join(capsys.readouterr().err.split())
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_unsupported_architecture_existing_output_and_missing_columns(models, tmp_path, capsys):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    base = ["--tiers", "mobile:1,edge:2,cloud:3-4", *SMALL]
    assert main(["partition", "--model", str(gpt), "--data", "builtin:sentiment", "--out", str(tmp_path / "o"),
                 *base]) == 7
    assert "architecture 'gpt2' is not supported" in " ".join(capsys.readouterr().err.split())
    exists = tmp_path / "exists"
    exists.mkdir()
    (exists / "keep.txt").write_text("mine")
    assert main(["partition", "--model", str(models["bert"]), "--data", "builtin:sentiment", "--out", str(exists),
                 *base]) == 7
    assert "already exists; pass --force" in " ".join(capsys.readouterr().err.split())
    assert (exists / "keep.txt").read_text() == "mine"
    assert main(["partition", "--model", str(models["bert"]), "--data", "builtin:sentiment", "--out",
                 str(tmp_path / "o2"), "--text-column", "sentence", *base]) == 7
    err = " ".join(capsys.readouterr().err.split())
    assert "no column(s) ['sentence']" in err and "--text-column" in err
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2*"))


def test_resnet_variants_connections_and_bytes(resnet_bundle, capsys):
    b = resnet_bundle
    s = b.spec
    assert s.kind == "resnet" and s.model.depth == 8 and s.exit_layers == [1, 2, 3]
    conns = {c.connection for c in s.connections}
    assert conns == {"skip:1", "block:1", "skip:2", "skip:3"}  # blocks 2 and 3 downsample: no identity to fall back on
    names = [v.name for v in s.resnet_variants]
    assert names[0] == "full" and s.resnet_variants[0].dropped == [] and len(names) >= 3
    for prev, cur in zip(s.resnet_variants, s.resnet_variants[1:], strict=False):
        assert cur.dropped[:len(prev.dropped)] == prev.dropped  # cumulative, cheapest first
        assert cur.macs_total <= prev.macs_total
    full = s.resnet_variants[0]
    # bytes per offload: the feature map after block 1 (16 x 8 x 8) and after block 2 (32 x 4 x 4), float32
    assert full.bytes_per_offload == {"mobile-edge": 16 * 8 * 8 * 4, "edge-cloud": 32 * 4 * 4 * 4}
    assert full.macs["mobile"] > 0 and full.parameters > 0
    table = pd.read_parquet(b.root / "variants.parquet")
    for v in s.resnet_variants:
        sub = table[(table.variant == v.name) & (table.split == "val")]
        assert float((sub.prediction_cloud == sub.label).mean()) == pytest.approx(v.val_accuracy)
    assert main(["bundle", "verify", str(b.root)]) == 0
    assert main(["bundle", "show", str(b.root)]) == 0
    assert "ResNet variants" in capsys.readouterr().out


def test_resnet_bundle_runs_live_with_feature_maps_between_tiers(resnet_bundle, tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", resnet_bundle.root, [{"name": "all-cloud"}], count=20, warmup=1,
                           name="resnet")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    df = pd.read_parquet(only_run(tmp_path / "results") / "samples.parquet")
    df = df[df.phase == "measure"]
    assert (df.bytes_mobile_edge == 16 * 8 * 8 * 4).all() and (df.bytes_edge_cloud == 32 * 4 * 4 * 4).all()
    table = resnet_bundle.exits("test").set_index("sample_id")
    assert (df.prediction.to_numpy() == table.loc[df.sample_id, "prediction_cloud"].to_numpy()).all()


ALL_POLICIES = [{"name": "all-cloud"}, {"name": "all-mobile"}, {"name": "random", "shares": {"mobile": 0.4, "edge": 0.3,
                                                                                             "cloud": 0.3}},
                {"name": "oracle"}, {"name": "early-exit", "thresholds": {"mobile": 0.42, "edge": 0.42}},
                {"name": "cartography", "mu": 0.05}, {"name": "splitee", "alpha": 0.42, "o": 0.1},
                {"name": "splitee-s", "alpha": 0.42, "o": 0.1}]


def test_every_policy_live_equals_its_replay_and_the_report_puts_paper_beside_measured(bert_bundle, tmp_path, capsys):
    from testbed.analysis import replay
    from testbed.core.config import PolicySpec

    exp = write_experiment(tmp_path / "exp.yaml", bert_bundle.root, ALL_POLICIES, count=40, warmup=3, name="all",
                           cost={"preset": "dimee", "o": {"edge-cloud": 0.5}})
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["plan", str(exp), "--inventory", str(inv)]) == 0
    plan = " ".join(capsys.readouterr().out.split())
    assert "policy splitee: SplitEEPolicy" in plan and "policy cartography: pool router on the first tier" in plan
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    out = " ".join(capsys.readouterr().out.split())
    assert "per policy, measured samples" in out and "report page:" in out  # the run's short summary
    assert main(["report", str(run_dir), "--format", "text"]) == 0  # every table
    out = " ".join(capsys.readouterr().out.split())
    assert "paper cost model vs measurement" in out and "oracle: UPPER BOUND" in out
    assert "splitee: best arm" in out and "cartography: pool thresholds" in out
    live = pd.read_parquet(run_dir / "samples.parquet")
    manifest = __import__("json").loads((run_dir / "manifest.json").read_text())
    assert manifest["cost_model"]["name"] == "dimee" and manifest["cost_model"]["o"]["edge-cloud"] == 0.5
    assert manifest["policies"]["splitee-s"]["params"]["side_info"] is True
    assert sum(manifest["policies"]["splitee"]["pulls"]) == 43
    assert set(manifest["policies"]["cartography"]["pools"]) == {"easy", "medium", "hard"}
    assert manifest["policies"]["cartography"]["router"]["tier"] == "mobile"
    specs = [PolicySpec.model_validate(p) for p in ALL_POLICIES]
    rows, _ = replay.replay(bert_bundle, specs, "test", 40, 0, 3)
    for key, g in live.groupby("policy", sort=False):
        r = rows[rows.policy == key]
        assert g.exit_tier.tolist() == r.exit_tier.tolist(), key  # same samples, same order, same decisions
        assert g.prediction.tolist() == r.prediction.tolist(), key
        assert g.policy_choice.tolist() == r.policy_choice.tolist(), key
    sp = live[live.policy == "splitee"]
    assert set(sp.policy_choice) <= {"L1", "L3"} and sp.policy_choice.notna().all()
    assert live[live.policy == "early-exit"].policy_choice.isna().all()
    oracle = live[(live.policy == "oracle") & (live.phase == "measure")]
    assert oracle.correct.mean() >= live[(live.policy == "all-cloud") & (live.phase == "measure")].correct.mean()
    # the CLI's replay beside the live run agrees on every sample
    assert main(["replay", str(bert_bundle.root), "--run", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "replay vs live" in text and text.count("100.0%") >= len(ALL_POLICIES)
    # calibrate the cost model on the run, then predict with it
    assert main(["calibrate", str(run_dir)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "calibrated-ms: lambda per layer" in text and "re-predicted" in text
    presets = yaml.safe_load((run_dir / "cost_presets.yaml").read_text())
    assert presets["presets"]["calibrated-ms"]["lam"]["mobile"] > 0
    assert main(["replay", str(bert_bundle.root), "--run", str(run_dir), "--cost", "calibrated-ms",
                 "--cost-file", str(run_dir / "cost_presets.yaml")]) == 0
    assert "cost preset calibrated-ms" in " ".join(capsys.readouterr().out.split())


def test_adaptive_resnet_measures_chooses_and_really_runs_the_chosen_variant(resnet_bundle, tmp_path, capsys):
    exp = write_experiment(tmp_path / "exp.yaml", resnet_bundle.root,
                           [{"name": "adaptive-resnet", "mu": 0.0, "label": "acc-only"},
                            {"name": "adaptive-resnet", "mu": 1.0, "label": "fast"}, {"name": "all-cloud"}],
                           count=30, warmup=3, name="adaptive")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    df = pd.read_parquet(run_dir / "samples.parquet")
    manifest = __import__("json").loads((run_dir / "manifest.json").read_text())
    variants = pd.read_parquet(resnet_bundle.root / "variants.parquet")
    variants = variants[variants.split == "test"]
    for key in ("acc-only", "fast"):
        rec = manifest["policies"][key]
        chosen = rec["chosen"]
        assert set(rec["resources"]["ms_per_mac"]) == {"mobile", "edge", "cloud"}
        assert len(rec["options"]) == 3 * len(resnet_bundle.spec.resnet_variants)
        g = df[(df.policy == key)]
        assert (g[g.phase == "warmup"].exit_tier == "cloud").all()  # the resources are measured through every tier
        m = g[g.phase == "measure"]
        assert (m.exit_tier == chosen["tier"]).all()
        assert (m.policy_choice == f"{chosen['variant']}@{chosen['tier']}").all()
        # the agents ran the chosen variant's files: predictions equal that variant's stored exits
        want = variants[variants.variant == chosen["variant"]].set_index("sample_id")[f"prediction_{chosen['tier']}"]
        assert (m.prediction.to_numpy() == want.loc[m.sample_id].to_numpy()).all()
    assert manifest["policies"]["fast"]["chosen"]["tier"] == "mobile"  # latency only: stop as early as possible
    cheapest = min(resnet_bundle.spec.resnet_variants, key=lambda v: (v.macs["mobile"], v.name != "full"))
    if cheapest.macs["mobile"] < resnet_bundle.spec.resnet_variants[0].macs["mobile"]:
        assert manifest["policies"]["fast"]["chosen"]["variant"] != "full"  # a swapped variant really ran
    best_acc = max(o["val_accuracy"] for o in manifest["policies"]["acc-only"]["options"])
    assert manifest["policies"]["acc-only"]["chosen"]["val_accuracy"] == best_acc
    # after the adaptive policies the full network is back: all-cloud equals the bundle's own exit table
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")]
    table = resnet_bundle.exits("test").set_index("sample_id")
    assert (cloud.prediction.to_numpy() == table.loc[cloud.sample_id, "prediction_cloud"].to_numpy()).all()


def test_a_chosen_variant_is_loaded_on_the_agents_and_the_full_network_comes_back(resnet_bundle, tmp_path,
                                                                                   monkeypatch):
    from testbed.policies.adaptive_resnet import AdaptiveResNetPolicy

    last = resnet_bundle.spec.resnet_variants[-1].model_dump()
    assert last["name"] != "full"

    def plan(self, resources, **when):  # the objective is unit-tested; here: the deepest variant through the cloud
        self.variant, self.tier = last, "cloud"
        self.record = {"resources": resources, "chosen": {"variant": last["name"], "tier": "cloud"}}

    monkeypatch.setattr(AdaptiveResNetPolicy, "plan", plan)
    exp = write_experiment(tmp_path / "exp.yaml", resnet_bundle.root, [{"name": "adaptive-resnet"},
                                                                       {"name": "all-cloud"}],
                           count=40, warmup=3, name="swap")
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    df = pd.read_parquet(only_run(tmp_path / "results") / "samples.parquet")
    m = df[(df.policy == "adaptive-resnet") & (df.phase == "measure")]
    variants = pd.read_parquet(resnet_bundle.root / "variants.parquet")
    variants = variants[variants.split == "test"]
    want = variants[variants.variant == last["name"]].set_index("sample_id")
    full = variants[variants.variant == "full"].set_index("sample_id")
    assert (m.prediction.to_numpy() == want.loc[m.sample_id, "prediction_cloud"].to_numpy()).all()
    # the confidences tell the variants apart even where the predictions agree
    np.testing.assert_allclose(m.confidence.to_numpy(), want.loc[m.sample_id, "confidence_cloud"].to_numpy(),
                               atol=1e-4)
    assert np.abs(m.confidence.to_numpy() - full.loc[m.sample_id, "confidence_cloud"].to_numpy()).max() > 1e-4
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")]
    np.testing.assert_allclose(cloud.confidence.to_numpy(), full.loc[cloud.sample_id, "confidence_cloud"].to_numpy(),
                               atol=1e-4)


@pytest.mark.skipif(__import__("os").geteuid() != 0 or not __import__("pathlib").Path("/sys/fs/cgroup").is_dir(),
                    reason="the edge agent caps itself through a cgroup: needs root and cgroups")
def test_adaptive_resnet_replans_under_an_edge_cpu_cap_beside_one_that_does_not(resnet_bundle, tmp_path):
    """experiments/adaptive-shortage.yaml in small: the edge capped to 0.03 cores from 1 s, lifted at 8 s.

    Each plan is the objective's minimum under the resources measured for it; the cap's stalls are
    charged to the edge; every measured sample ran the plan in force when it was issued (the samples
    in flight were drained before the agents switched); the plan-once policy met the same steps.
    """
    from testbed.policies.adaptive_resnet import AdaptiveResNetPolicy

    exp = write_experiment(tmp_path / "exp.yaml", resnet_bundle.root,
                           [{"name": "adaptive-resnet", "label": "adaptive", "mu": 0.2, "probe": 50},
                            {"name": "adaptive-resnet", "label": "plan-once", "mu": 0.2, "replan": False}],
                           count=None, warmup=16, name="shortage",
                           samples={"split": "test", "warmup": 16, "repeat": 10},
                           run={"concurrency": 1, "interval_ms": 4, "schedule_clock": "policy", "flush_rows": 64},
                           cpu={"schedule": [{"at_s": 1.0, "device": "edge-1", "cores": 0.03},
                                             {"at_s": 8.0, "device": "edge", "lift": True}]})
    inv = write_inventory(tmp_path / "inv.yaml")
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    m = __import__("json").loads((run_dir / "manifest.json").read_text())
    df = pd.read_parquet(run_dir / "samples.parquet")
    variants = [v.model_dump() for v in resnet_bundle.spec.resnet_variants]
    plans = m["policies"]["adaptive"]["plans"]
    assert [p["trigger"] for p in plans] == ["warmup", "cpu edge-1 step 0: cores 0.03", "cpu edge step 1: lift"]
    for plan in plans:  # each choice is the objective's minimum under the resources it was measured with
        pol = AdaptiveResNetPolicy("x", variants, 0.2, resnet_bundle.tiers)
        pol.plan(plan["resources"])
        assert pol.record["chosen"]["objective"] == pytest.approx(plan["chosen"]["objective"])
    capped = plans[1]["resources"]["ms_throttled"]
    assert capped["edge"] > 10 * max(capped["mobile"], 0.01) and capped["edge"] > 1.0  # the stalls are the edge's
    assert plans[2]["resources"]["ms_throttled"]["edge"] < capped["edge"] / 5  # lifted: gone
    assert (df[(df.policy == "adaptive") & (df.phase == "probe")].exit_tier == "cloud").all()
    # every measured sample ran the plan in force when it was issued: nothing of an old plan after a step
    g = df[(df.policy == "adaptive") & (df.phase == "measure")].sort_values("t_issue_unix_ns")
    starts = [p["unix_ns"] for p in plans[1:]]
    for k, plan in enumerate(plans):
        lo, hi = ([0] + starts)[k], (starts + [2**63])[k]
        seg = g[(g.t_issue_unix_ns > lo) & (g.t_issue_unix_ns < hi)]
        assert (seg.policy_choice == f"{plan['chosen']['variant']}@{plan['chosen']['tier']}").all(), k
    cap_rec = [a for a in m["cpu"]["applied"] if a["policy"] == "adaptive" and not a["lift"]][0]
    assert not ((g.t_issue_unix_ns > cap_rec["unix_ns"] + 1) & (g.t_issue_unix_ns < starts[0])).any()  # drained
    # the plan-once policy met the same two steps and kept its plan
    once = m["policies"]["plan-once"]
    assert len(once["plans"]) == 1 and {a["step"] for a in m["cpu"]["applied"] if a["policy"] == "plan-once"} == {0, 1}
    assert df[(df.policy == "plan-once") & (df.phase == "probe")].empty
    assert main(["report", str(run_dir), "--format", "text"]) == 0
