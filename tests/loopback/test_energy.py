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
    png = run_dir / "plots" / "power_cloud-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
