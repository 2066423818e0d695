"""``python -m agents meter --root``: the board check on sysfs trees laid out as real boards lay them out."""

import json
import subprocess
import sys

import boards
import pytest

from agents.metercheck import check
from agents.meters import InaEnergyMeter

from conftest import ROOT


@pytest.mark.parametrize("board, total, rails", [
    (boards.jetson_orin_hwmon, "VDD_IN", {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}),
    (boards.jetson_nano_hwmon, "POM_5V_IN", {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}),
    (boards.jetson_xavier_iio, "VDD_IN", {"VDD_IN", "VDD_SYS_GPU"}),
    (boards.ina238_board, "sum of the rails", {"ina238.hwmon2"}),
])
def test_every_ina_board_reads_its_input_within_one_percent(tmp_path, board, total, rails):
    watts = board(tmp_path)
    out = check("auto", 0.3, tmp_path)
    assert out["source"] == "ina" and out["total"] == total and set(out["rails"]) == rails
    assert out["power_w"] == pytest.approx(watts, rel=0.01)  # the input rail, the rails inside it not added
    assert out["period_s"] == 0.005 and out["achieved_period_s"] >= 0.005  # each read waits its period at least


def test_an_ina228_is_read_from_its_own_energy_accumulator(tmp_path):
    thread, watts = boards.ina228_board(tmp_path)
    out = check("auto", 1.5, tmp_path)
    thread.join()
    assert out["source"] == "ina-energy" and set(out["rails"]) == {"ina228.hwmon3"}
    # The accumulator's 4 W, not power1_input's 2.5 W. The fixture's writer thread can be
    # descheduled for tens of ms on a loaded CI machine, so each read may be that stale: 5%.
    assert out["power_w"] == pytest.approx(watts, rel=0.05)


def test_an_accumulator_reset_continues_the_count(tmp_path):
    thread, _ = boards.ina228_board(tmp_path, seconds=0.0)
    thread.join()
    energy = tmp_path / "sys/class/hwmon/hwmon3/energy1_input"
    meter = InaEnergyMeter(tmp_path / "sys/class/hwmon")
    energy.write_text("5000000\n")
    meter.begin("w")
    energy.write_text("7000000\n")
    meter.read()
    energy.write_text("1000000\n")  # the driver cleared the accumulator: 1 J since
    assert meter.end("w").energy_j == pytest.approx(3.0)


def test_a_laptop_package_counter_that_wraps_inside_the_window(tmp_path):
    thread, total_j = boards.one_socket_rapl_wrapping(tmp_path)
    out = check("rapl", 1.5, tmp_path)
    thread.join()
    assert out["rails"] == pytest.approx({"package-0": 2.0, "dram-0": 0.25})
    assert out["energy_j"] == pytest.approx(total_j, rel=0.01)


def test_a_two_socket_server_reads_both_packages_and_both_drams(tmp_path):
    thread, total_j = boards.two_socket_rapl(tmp_path)
    out = check("rapl", 1.5, tmp_path)
    thread.join()
    assert out["source"] == "rapl"
    assert out["rails"] == pytest.approx({"package-0": 1.0, "dram-0": 0.5, "package-1": 2.0, "dram-1": 0.25})
    assert out["energy_j"] == pytest.approx(total_j)  # 3.75 J: keying both drams by name read 3.25 J
    assert out["power_w"] == pytest.approx(total_j / out["duration_s"])


def test_the_command_prints_one_json_object_and_fails_without_a_meter(tmp_path):
    boards.jetson_orin_hwmon(tmp_path)
    r = subprocess.run([sys.executable, "-m", "agents", "meter", "--root", str(tmp_path), "--seconds", "0.1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"source", "energy_j", "duration_s", "power_w", "rails", "period_s", "warnings"} <= set(out)
    r = subprocess.run([sys.executable, "-m", "agents", "meter", "--root", str(tmp_path / "empty"), "--kind", "ina"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no INA3221/INA238 power rail" in json.loads(r.stdout)["error"]
