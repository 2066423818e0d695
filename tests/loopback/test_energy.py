"""An external power meter on one device, end to end: rows, manifest and the power timeline file."""

import json
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from testbed.cli import main

from conftest import write_experiment, write_inventory
from loopback.helpers import only_run

pytestmark = pytest.mark.loopback

# A constant 3 W instrument stamping its readings every 2 ms. Constant power makes every check exact
# whatever the machine's load: the idle baseline is 3 W and the net energy of every window is zero.
METER = """\
import time
for i in range(100_000):
    print(f"{time.time():.6f} 3.0", flush=True)
    time.sleep(0.002)
"""


def test_external_meter_rows_manifest_and_timeline(tiny_bundle, tmp_path):
    script = tmp_path / "meter.py"
    script.write_text(METER)
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}], count=60, warmup=0,
                           energy={"idle_s": 0.3})
    inv = write_inventory(tmp_path / "inv.yaml",
                          **{"cloud-1": {"meter": {"kind": "external", "command": [sys.executable, str(script)]}}})
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    df = pd.read_parquet(run_dir / "samples.parquet")
    assert set(df["energy_source"]) == {"external+none"}
    assert df["energy_j_cloud"].notna().all() and df["energy_j_mobile"].isna().all() and df["energy_j"].isna().all()
    # the meter window encloses the compute window: at 3 W its energy is at least 3 W x compute time
    window_s = df["compute_ms_cloud"] / 1e3
    assert (df["energy_j_cloud"] >= 3.0 * window_s * (1 - 1e-9)).all()
    assert np.allclose(df["energy_net_j_cloud"], 0.0, atol=1e-9)  # active power = idle power
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["energy"]["meters"]["cloud-1"]["source"] == "external"
    assert m["energy"]["idle_w"]["cloud-1"] == pytest.approx(3.0, abs=1e-9)
    assert m["energy"]["timelines"]["cloud-1"]["file"] == "power_cloud-1.parquet"
    power = pq.read_table(run_dir / "power_cloud-1.parquet")
    assert power.schema.metadata[b"testbed.energy_source"] == b"external"
    t = power.column("t_unix_ns").to_numpy()
    w = power.column("power_w_external").to_numpy()
    assert len(t) > 50 and np.all(np.diff(t) >= 0) and set(np.unique(w)) == {3.0}
    started = pd.Timestamp(m["started_at"]).value
    assert started - 5e9 < t[0] < started + 60e9  # on the controller's wall clock

    report = main(["report", str(run_dir)])
    assert report == 0
    png = run_dir / "report" / "power_cloud-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    marks = pd.read_csv(run_dir / "report" / "power_cloud-1_marks.csv")  # the run's phase on the timeline
    phase = marks[marks.kind == "phase"].iloc[0]
    assert phase["label"] == "all-cloud measure" and 0 <= phase["start_s"] < phase["end_s"] <= (t[-1] - t[0]) / 1e9


def test_batch_windows_share_energy_by_compute_time_and_never_span_phases(tiny_bundle, tmp_path):
    script = tmp_path / "meter.py"
    script.write_text(METER)
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root, [{"name": "all-cloud"}], count=20, warmup=3,
                           energy={"idle_s": 0.3, "batch_samples": 8})
    inv = write_inventory(tmp_path / "inv.yaml",
                          **{"cloud-1": {"meter": {"kind": "external", "command": [sys.executable, str(script)]}}})
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    df = pd.read_parquet(run_dir / "samples.parquet")
    win = pd.read_parquet(run_dir / "energy_windows.parquet")
    assert len(df) == 23 and df["energy_batch_cloud"].notna().all() and df["energy_j_cloud"].notna().all()
    # the windows of every device: cloud's have its meter; mobile and edge have none (energy null)
    cloud = win[win["device"] == "cloud-1"].set_index("batch").sort_index()
    assert list(cloud["samples"]) == [3, 8, 8, 4]  # warmup flushed on its own; the last measure window flushed
    assert win.loc[win["device"] != "cloud-1", "energy_j"].isna().all()
    # each sample's share: window energy in proportion to compute time; shares sum to the window
    sums = df.groupby("energy_batch_cloud")["energy_j_cloud"].sum()
    assert np.allclose(sums.to_numpy(), cloud.loc[sums.index, "energy_j"].to_numpy(), rtol=1e-12, atol=0)
    per_ms = df["energy_j_cloud"] / df["compute_ms_cloud"]
    assert (per_ms.groupby(df["energy_batch_cloud"]).agg(lambda s: s.max() / s.min()) < 1 + 1e-9).all()
    # constant 3 W: a window's energy is 3 W over its length, which covers the compute and the gaps between
    assert np.allclose(cloud["energy_j"], 3.0 * cloud["duration_ms"] / 1e3, rtol=0.05)
    assert (cloud["energy_j"] >= 3.0 * cloud["compute_ms_sum"] / 1e3 * (1 - 1e-9)).all()
    assert (df.groupby("energy_batch_cloud")["phase"].nunique() == 1).all()
    assert np.allclose(df["energy_net_j_cloud"], 0.0, atol=1e-9)
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["energy"]["batch_windows"] == {"count": len(win), "rows_without_their_window": 0,
                                            "file": "energy_windows.parquet"}
    assert "shared out" not in m["energy"]["window"] and "in proportion to its compute time" in m["energy"]["window"]
    # message sizes as received; on loopback one interface carries everything, so no wire counts
    assert (df["bytes_msg_mobile_edge"] > df["bytes_mobile_edge"]).all()
    assert (df["bytes_msg_controller_mobile"] > df["bytes_controller_mobile"]).all()
    assert df["bytes_wire_mobile_edge"].isna().all()
    assert "no interfaces.mobile" in m["bytes_wire"]["mobile_edge"]["why_not"]
