"""Temperatures and throttle flags: sampled on the device's tree, carried to the run directory, warned about."""

import math

import boards
import numpy as np
import pandas as pd

from agents import protocol as p
from agents.thermal import ThermalSampler
from testbed.analysis.report import thermal_notes
from testbed.formats.results import RunWriter
from testbed.run.collector import Collector


def test_a_pi_that_throttles_is_sampled_with_its_flags(tmp_path):
    boards.raspberry_pi_thermal(tmp_path, 81_200, "0x50005")  # under-voltage and throttled now, and since boot
    s = ThermalSampler(str(tmp_path), background=False)
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").write_text("79000\n")
    s.sample_once()
    times, temps, flags = s.snapshot()
    assert len(times) == 2 and temps == {"cpu-thermal": [81.2, 79.0]} and flags == [0x50005, 0x50005]
    assert flags[0] & p.THROTTLED_NOW == 0x5


def test_a_jetson_has_zones_and_no_flags_an_unreadable_zone_is_nan(tmp_path):
    boards.jetson_thermal(tmp_path)
    s = ThermalSampler(str(tmp_path), background=False)
    _, temps, flags = s.snapshot()
    assert temps["CPU-therm"] == [48.5] and temps["GPU-therm"] == [47.0] and math.isnan(temps["PMIC-Die"][0])
    assert flags == [-1] and not s.has_throttled


def test_a_board_without_zones_samples_nothing(tmp_path):
    s = ThermalSampler(str(tmp_path))
    assert s.snapshot() == ([], {}, []) and not s.zones and not s.has_throttled
    s.close()


def test_the_controller_writes_the_thermal_file_and_the_report_warns(tmp_path):
    writer = RunWriter(tmp_path / "run", ("mobile", "cloud"), flush_rows=4)
    c = Collector(writer, {"mobile": 2, "cloud": 6})
    c.offsets = {"pi-1": 1_000}
    msg = p.Thermal("pi-1", 5_000, np.array([1.0, 2.0, 3.0]), {"cpu-thermal": np.array([70.0, 82.5, 79.0])},
                    np.array([0, 0x4, 0x20000], np.int64))
    c.thermal(p.decode(p.encode(msg)))
    df = pd.read_parquet(tmp_path / "run" / "thermal_pi-1.parquet")
    assert df.t_unix_ns.tolist() == [1_000_004_000, 2_000_004_000, 3_000_004_000]  # on the controller's clock
    assert df["temp_c_cpu-thermal"].tolist() == [70.0, 82.5, 79.0]
    rec = c.thermals["pi-1"]
    assert rec["throttled_samples"] == 1 and rec["flags_seen"] == "0x20004" and rec["max_temp_c"] == {
        "cpu-thermal": 82.5}
    notes = " ".join(thermal_notes(c.thermals))
    assert "THROTTLED pi-1: limited in 1 of 3" in notes and "HOT pi-1: cpu-thermal reached 82 C" in notes
    assert thermal_notes({"x": {"samples": 3, "throttled_samples": 0, "max_temp_c": {"z": 50.0}}}) == []
