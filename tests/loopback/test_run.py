"""The real CLI, in process, against three real agent processes on 127.0.0.1 (tiny bundle)."""

import json

import numpy as np
import pandas as pd
import pytest

from testbed import policies
from testbed.cli import main
from testbed.formats.schema import SCHEMA_VERSION
from testbed.run.session import PINGS

from conftest import ROOT, write_experiment, write_inventory
from loopback.helpers import agent_pids, assert_gone, only_run
from tinybundle import HIDDEN

T3 = ("mobile", "edge", "cloud")  # the default tiers

pytestmark = pytest.mark.loopback

POLICIES = [{"name": "all-mobile"}, {"name": "all-edge"}, {"name": "all-cloud"},
            {"name": "early-exit", "thresholds": {"mobile": 0.85, "edge": 0.8}}]


@pytest.fixture(scope="module")
def tiny_run(tiny_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    exp = write_experiment(tmp / "exp.yaml", tiny_bundle.root, POLICIES, count=60, warmup=2, name="tiny",
                           energy={"idle_s": 1.5})  # longer than heartbeat_s x liveness: heartbeats must go on
    inv = write_inventory(tmp / "inv.yaml", meter={"kind": "model", "idle_w": 1.0, "busy_w": 4.0},
                          **{"edge-1": {"cpus": [0]},
                             "cloud-1": {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}})
    code = main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp / "results"), "-q"])
    assert code == 0
    run_dir = only_run(tmp / "results")
    return run_dir, pd.read_parquet(run_dir / "samples.parquet"), exp, inv


def test_rows_cover_every_policy_with_warmups_marked(tiny_run):
    _, df, _, _ = tiny_run
    assert len(df) == 4 * 62
    counts = df.groupby(["policy", "phase"]).size()
    for p in POLICIES:
        assert counts[(p["name"], "warmup")] == 2 and counts[(p["name"], "measure")] == 60
    assert df["seq"].is_unique


def test_three_tiers_appear_and_baselines_stay_put(tiny_run):
    _, df, _, _ = tiny_run
    ee = df[df.policy == "early-exit"]
    assert set(ee["exit_tier"]) == {"mobile", "edge", "cloud"}
    for name, tier in (("all-mobile", "mobile"), ("all-edge", "edge"), ("all-cloud", "cloud")):
        assert set(df[df.policy == name]["exit_tier"]) == {tier}
    assert set(df[df.policy == "all-cloud"]["tier_path"]) == {"mobile>edge>cloud"}


def test_all_mobile_sends_zero_offload_bytes(tiny_run):
    _, df, _, _ = tiny_run
    mob = df[df.policy == "all-mobile"]
    assert (mob["bytes_mobile_edge"] == 0).all() and (mob["bytes_edge_cloud"] == 0).all()
    assert mob["net_ms_mobile_edge"].isna().all() and mob["compute_ms_edge"].isna().all()


def test_bytes_per_hop_equal_the_tensor_sizes(tiny_bundle, tiny_run):
    _, df, _, _ = tiny_run
    samples = tiny_bundle.samples("test")
    seq_len = np.array([len(samples.input_ids[i]) for i in df["sample_id"]])
    assert (df["bytes_controller_mobile"] == seq_len * 8 * 2).all()  # input_ids + attention_mask, int64
    offload = seq_len * (HIDDEN * 4 + 8)  # hidden float32 + attention_mask int64
    cloud = df["exit_tier"] == "cloud"
    left_mobile = df["exit_tier"] != "mobile"
    assert (df.loc[left_mobile, "bytes_mobile_edge"] == offload[left_mobile.to_numpy()]).all()
    assert (df.loc[cloud, "bytes_edge_cloud"] == offload[cloud.to_numpy()]).all()
    assert (df["bytes_return"] == 3 * 4).all()  # one float32 logit per class


def test_live_decisions_equal_offline_replay_of_the_exit_table(tiny_bundle, tiny_run):
    _, df, _, _ = tiny_run
    table = tiny_bundle.exits("test").set_index("sample_id")
    ee = df[(df.policy == "early-exit") & (df.phase == "measure")].set_index("sample_id").sort_index()
    conf = table.loc[ee.index, ["confidence_mobile", "confidence_edge", "confidence_cloud"]].to_numpy()
    expected = policies.decide({"mobile": 0.85, "edge": 0.8}, conf, T3)
    assert list(ee["exit_tier"]) == [("mobile", "edge", "cloud")[t] for t in expected]
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")].set_index("sample_id").sort_index()
    assert (cloud["prediction"] == table.loc[cloud.index, "prediction_cloud"]).all()
    assert np.allclose(cloud["confidence"], table.loc[cloud.index, "confidence_cloud"], atol=1e-6)


def test_timings_are_positive_and_add_up(tiny_run):
    _, df, _, _ = tiny_run
    cloud = df[df.policy == "all-cloud"]
    for col in ("latency_ms", "compute_ms_mobile", "compute_ms_edge", "compute_ms_cloud"):
        assert (cloud[col] > 0).all(), col
    parts = cloud[["compute_ms_mobile", "compute_ms_edge", "compute_ms_cloud", "queue_ms"]].sum(axis=1)
    assert (parts < cloud["latency_ms"]).all()
    # one machine, one clock: hop times can only be slightly negative from the offset estimate's error
    for hop in ("controller_mobile", "mobile_edge", "edge_cloud", "return"):
        assert (cloud[f"net_ms_{hop}"] > -0.5).all(), hop


def test_manifest_lets_the_run_be_repeated(tiny_bundle, tiny_run):
    run_dir, df, exp, inv = tiny_run
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["rows"] == len(df) and m["schema_version"] == SCHEMA_VERSION == 7
    assert m["tiers"] == ["mobile", "edge", "cloud"] and m["format_version"] == 3
    assert m["experiment"]["yaml"] == exp.read_text() and m["inventory"]["yaml"] == inv.read_text()
    assert m["bundle"]["sha256"]["mobile.onnx"] == tiny_bundle.tier("mobile").sha256
    assert set(m["agents"]) == {"mobile-1", "edge-1", "cloud-1"}
    assert all(rec["pid"] == rec["launch_pid"] for rec in m["agents"].values())  # local: the agent itself
    for rec in m["agents"].values():  # one clock here: the estimate is within its bound of the true offset, 0
        assert rec["clock_pings"] == PINGS and 0 < rec["clock_rtt_ns"] and abs(rec["clock_offset_ns"]) <= rec[
            "clock_rtt_ns"] / 2
        # measured again after the samples: the same clock, so both estimates sit within their bounds of 0
        assert abs(rec["clock_offset_end_ns"]) <= rec["clock_rtt_end_ns"] / 2 and rec["clock_elapsed_s"] > 0
        assert abs(rec["clock_drift_ppm"]) <= rec["clock_drift_bound_ppm"]
        assert rec["clock_measured_end_unix_ns"] > rec["clock_measured_unix_ns"] > 0
    raw = df[df.tier_path == "mobile"]  # the rows keep the agent's own stamps: hop times follow from them
    assert (raw.t_send_agent_ns_mobile >= raw.t_recv_agent_ns_mobile).all()
    assert (raw.t_return_unix_ns > raw.t_issue_unix_ns).all()
    # the cloud asked for CUDA first; this CPU-only onnxruntime has none, so it ran on the CPU, and says so
    assert m["agents"]["cloud-1"]["providers"] == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider" not in m["agents"]["cloud-1"]["facts"]["onnxruntime_providers"]
    log = (tiny_run[0] / "logs" / "cloud-1.log").read_text()
    assert "execution providers ['CUDAExecutionProvider'] asked for but not offered" in log
    facts = m["agents"]["edge-1"]["facts"]
    assert facts["onnxruntime"] and facts["cpu_cores_logical"] >= 1 and facts["memory_total_bytes"] > 0
    assert "CPUExecutionProvider" in facts["onnxruntime_providers"]
    assert facts["cpu_affinity"] == [0]  # pinned as the inventory asked
    assert m["git"]["sha"] is None or len(m["git"]["sha"]) == 40
    assert m["started_at"] < m["ended_at"] and m["controller"]["versions"]["onnxruntime"]
    assert {a["served"] for a in m["agent_exit"].values()} != {None}
    assert all(a["exit_status"] == 0 for a in m["agent_exit"].values())


def test_no_agent_process_is_left_behind(tiny_run):
    run_dir, _, _, _ = tiny_run
    assert_gone(agent_pids(run_dir))
    logs = {p.name for p in (run_dir / "logs").iterdir()}
    assert logs == {"mobile-1.log", "edge-1.log", "cloud-1.log"}


def test_energy_comes_from_the_model_meter_per_tier(tiny_run):
    run_dir, df, _, _ = tiny_run
    assert set(df["energy_source"]) == {"model"} and not df["energy_approx"].any()
    cloud = df[df.policy == "all-cloud"]
    tiers = cloud[["energy_j_mobile", "energy_j_edge", "energy_j_cloud"]]
    assert (tiers > 0).all().all()
    assert np.allclose(tiers.sum(axis=1), cloud["energy_j"])
    # the model: 1 W over the meter window plus 3 W for its CPU time. The meter window encloses the
    # compute window and lies inside the sample's end-to-end latency, so 1 W x compute <= E <= 4 W x latency.
    for t in ("mobile", "edge", "cloud"):
        assert (cloud[f"energy_j_{t}"] >= 1.0 * cloud[f"compute_ms_{t}"] / 1e3 * (1 - 1e-9)).all()
        assert (cloud[f"energy_j_{t}"] <= 4.0 * cloud["latency_ms"] / 1e3).all()
    mobile = df[df.policy == "all-mobile"]
    assert mobile["energy_j_edge"].isna().all() and mobile["energy_j"].notna().all()
    # idle baseline: the model meter idles at idle_w, so net energy is the busy part, (4 - 1) W x CPU time
    net = cloud[["energy_net_j_mobile", "energy_net_j_edge", "energy_net_j_cloud"]]
    assert (net.to_numpy() < tiers.to_numpy()).all() and (net.to_numpy() > -1e-4).all()
    assert np.allclose(net.sum(axis=1), cloud["energy_net_j"])
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["energy"]["meters"]["cloud-1"]["source"] == "model"
    assert m["energy"]["meters"]["cloud-1"]["busy_w"] == 4.0
    assert m["energy"]["idle_w"]["cloud-1"] == pytest.approx(1.0, abs=0.2)  # idle_w of the model, measured


def test_report_reads_the_run(tiny_run, capsys):
    run_dir, _, _, _ = tiny_run
    assert main(["report", str(run_dir), "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert "early-exit" in text and "all-cloud" in text and "p99 ms" in text
    assert "MODELLED, not measured" in text and "energy mJ" in text and "net mJ" in text
    assert main(["report", str(run_dir.parent), "--out", str(run_dir / "again")]) == 0  # the latest run there
    text = capsys.readouterr().out
    assert f"latest run in {run_dir.parent}: {run_dir.name}" in text
    # the default: a short summary (each policy's overall row, the verdicts) and the page's path
    flat = " ".join(text.split())
    assert "per policy, measured samples" in flat and "early-exit: DIMEE claims" in flat and "p99 ms" in flat
    assert "net mJ" not in flat  # the full tables are --format text's
    assert f"report page: {run_dir / 'again' / 'index.html'}" in text.replace("\n", "")


def test_the_run_wrote_its_page(tiny_run):
    run_dir = tiny_run[0]  # testbed run ends with the page, as testbed report would write it
    assert (run_dir / "report" / "index.html").is_file() and (run_dir / "report" / "tradeoff_paper.png").is_file()


def test_every_text_table_fits_80_columns(tiny_run):
    import os
    import subprocess
    import sys

    run_dir = tiny_run[0]
    r = subprocess.run([sys.executable, "-m", "testbed", "report", str(run_dir), "--format", "text"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)  # nothing cut off
    for word in ("p99 ms", "net mJ", "offload B", "all-mobile", "early-exit", "continued"):
        assert word in r.stdout


def test_a_run_directory_that_cannot_be_written_needs_out(tiny_run, tmp_path, capsys):
    import shutil
    import subprocess

    src = tmp_path / "copy"
    shutil.copytree(tiny_run[0], src)
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here (not root)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        assert main(["report", str(ro), "--format", "html"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "cannot write the report page into" in err and "Read-only file system; give --out DIR" in err
        assert main(["report", str(ro), "--format", "html", "--out", str(tmp_path / "elsewhere")]) == 0
        assert (tmp_path / "elsewhere" / "index.html").is_file()
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_validate_and_plan_touch_nothing(tiny_run, capsys):
    run_dir, _, exp, inv = tiny_run
    before = sorted(p.name for p in run_dir.parent.iterdir())
    assert main(["validate", str(exp), "--inventory", str(inv)]) == 0
    assert main(["plan", str(exp), "--inventory", str(inv)]) == 0
    assert "early-exit" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.parent.iterdir()) == before


def test_shipped_loopback_experiment_validates(real_bundle, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["validate", "experiments/loopback.yaml"]) == 0


def test_the_report_page_has_its_figures_their_numbers_and_says_what_it_left_out(tiny_run, tmp_path):
    from html.parser import HTMLParser

    run_dir = tiny_run[0]
    assert main(["report", str(run_dir), "--format", "html", "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "index.html").read_text()

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links, self.tags = [], [], set()

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            a = dict(attrs)
            if tag == "img":
                self.imgs.append(a["src"])
            if tag == "a":
                self.links.append(a["href"])

    c = Collect()
    c.feed(page)
    assert "script" not in c.tags  # readable without JavaScript
    figures = {"tradeoff_paper.png", "tradeoff_latency.png", "tradeoff_energy.png", "tradeoff_bytes.png",
               "exit_shares.png", "latency_cdf.png", "predicted_vs_measured.png"}
    assert figures <= set(c.imgs) and all((tmp_path / "page" / f).stat().st_size > 1000 for f in c.imgs)
    assert {f.replace(".png", ".csv") for f in figures} <= set(c.links)  # the numbers behind every figure
    cdf = pd.read_csv(tmp_path / "page" / "latency_cdf.csv")
    assert set(cdf.columns) == {"quantile", *(f"policy:{p.get('label', p['name'])}" for p in POLICIES),
                                *(f"tier:{t}" for t in T3)}
    assert "bytes_per_hop.png" in c.imgs and set(pd.read_csv(tmp_path / "page" / "bytes_per_hop.csv").hop) == {
        "mobile_edge", "edge_cloud"}
    # the model meter samples no power: the timeline figure is left out with a line, never drawn empty
    assert "power timelines: left out: no device sampled power" in page
    assert "DIMEE" in page and "early-exit" in page and tiny_run[0].name in page
    pred = pd.read_csv(tmp_path / "page" / "predicted_vs_measured.csv")  # errors are what the columns say
    assert set(pred.policy) == {p["name"] for p in POLICIES}
    assert np.allclose(pred.calibrated_error_pct, (pred.calibrated_ms / pred.measured_ms - 1) * 100)
    # the scaling factor is the least-squares one: no other factor fits the measured means better
    k = (pred.preset_units * pred.measured_ms).sum() / (pred.preset_units ** 2).sum()
    assert np.allclose(pred.preset_ms, pred.preset_units * k)
    # no SplitEE and no cartography policy in this run: those figures are left out, each with why
    assert "SplitEE: cumulative regret" in page and "no SplitEE policy in the run" in page
    assert "no cartography policy in the run" in page
    assert "Links: configured against measured" in page
    assert all((tmp_path / "page" / href).is_file() for href in [*c.imgs, *c.links])  # nothing dangling


def test_two_runs_side_by_side_on_one_page(tiny_run, tmp_path, capsys):
    import shutil

    run_dir = tiny_run[0]
    twin = tmp_path / "t" / (run_dir.name[:-4] + "beef")  # the same rows under another run id
    shutil.copytree(run_dir, twin)
    manifest = json.loads((twin / "manifest.json").read_text())
    manifest["run_id"] = twin.name
    (twin / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(run_dir), str(twin), "--format", "html"]) == 2  # where would the page go?
    assert "give --out DIR" in capsys.readouterr().err
    assert main(["report", str(run_dir), str(twin), "--format", "html", "--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert run_dir.name in page and twin.name in page and "tradeoff_paper.png" in page
    points = pd.read_csv(tmp_path / "cmp" / "tradeoff_paper.csv")
    assert len(points) == 2 * len(POLICIES) and points.policy.str.startswith("beef:").sum() == len(POLICIES)


def test_the_page_renders_in_a_headless_browser(tiny_run, tmp_path):
    """Debian's chromium (installed by .ci/run) opens the page with JavaScript off and draws it."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium here (`apt-get install chromium`; .ci/run installs it)")
    page = tiny_run[0] / "report" / "index.html"
    shot = tmp_path / "page.png"
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-javascript",
                        "--hide-scrollbars", "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1200)
    inked = (img < 200).any(axis=2)  # text, rules and plot marks: not the white page
    assert inked.mean() > 0.01, inked.mean()
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # the figures' colours, not one blank colour
    rows_inked = inked.any(axis=1)
    assert rows_inked[:200].any() and rows_inked[1200:].any()  # the header at the top and figures further down
