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

METER = """\
import time
t0 = time.time()
for i in range(20000):  # a reading every 2 ms on the meter's own clock: 3 W, then 9 W after one second
    print(f"{time.time():.6f} {3.0 if time.time() - t0 < 1.0 else 9.0}", flush=True)
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
    # each window integrates a constant 3 or 9 W curve (or the step between them) over its duration
    window_s = df["compute_ms_cloud"] / 1e3
    assert (df["energy_j_cloud"] >= 2.9 * window_s * 0.5).all() and (df["energy_j_cloud"] <= 9.1 * window_s * 3).all()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["energy"]["meters"]["cloud-1"]["source"] == "external"
    assert m["energy"]["idle_w"]["cloud-1"] == pytest.approx(3.0, abs=0.01)  # the baseline saw the 3 W phase
    assert m["energy"]["timelines"]["cloud-1"]["file"] == "power_cloud-1.parquet"
    power = pq.read_table(run_dir / "power_cloud-1.parquet")
    assert power.schema.metadata[b"testbed.energy_source"] == b"external"
    t = power.column("t_unix_ns").to_numpy()
    w = power.column("power_w_external").to_numpy()
    assert len(t) > 50 and np.all(np.diff(t) >= 0) and set(np.unique(w)) <= {3.0, 9.0}
    started = pd.Timestamp(m["started_at"]).value
    assert started - 5e9 < t[0] < started + 60e9  # on the controller's wall clock

    report = main(["report", str(run_dir)])
    assert report == 0
    png = run_dir / "plots" / "power_cloud-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
