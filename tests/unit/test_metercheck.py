"""``python -m agents meter --root``: the board check on sysfs trees laid out as real boards lay them out."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from agents.metercheck import check

from conftest import ROOT


def jetson_orin_hwmon(root):
    """Jetson Orin Nano (L4T 35): ina3221 on hwmon with VDD_IN (the module input) and two rails inside it."""
    dev = root / "sys/class/hwmon/hwmon1"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina3221\n")
    for n, (label, mv, ma) in enumerate([("VDD_IN", 5000, 1400), ("VDD_CPU_GPU_CV", 5000, 500),
                                         ("VDD_SOC", 5000, 300)], start=1):
        (dev / f"in{n}_label").write_text(label + "\n")
        (dev / f"in{n}_input").write_text(f"{mv}\n")
        (dev / f"curr{n}_input").write_text(f"{ma}\n")
    return root


def two_socket_rapl(root, joules=(1.0, 0.5, 2.0, 0.25), after_s=1.0):
    """A two-socket server's powercap tree; a thread adds ``joules`` to the four counters once, ``after_s`` in.

    One step, written whole (as sysfs gives a value), lands inside the check's window: the meter
    first watches the counters for its update period (0.5 s without changes), then opens the window.
    """
    base = root / "sys/class/powercap"
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:2": "dram", "intel-rapl:1": "package-1",
             "intel-rapl:1:2": "dram"}
    for zone, name in zones.items():
        d = base / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text("1000\n")
        (d / "max_energy_range_uj").write_text(f"{2**32}\n")

    def step():
        time.sleep(after_s)
        for zone, j in zip(zones, joules, strict=True):
            tmp = base / zone / "energy_uj.tmp"
            tmp.write_text(f"{1000 + int(j * 1e6)}\n")
            os.replace(tmp, base / zone / "energy_uj")

    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    return thread, sum(joules)


def test_a_jetson_reads_its_input_rail_within_one_percent(tmp_path):
    out = check("auto", 0.3, jetson_orin_hwmon(tmp_path))
    assert out["source"] == "ina" and out["total"] == "VDD_IN"
    assert out["power_w"] == pytest.approx(7.0, rel=0.01)  # 5 V x 1.4 A in, the rails inside it not added
    assert set(out["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"} and out["period_s"] == 0.005


def test_a_two_socket_server_reads_both_packages_and_both_drams(tmp_path):
    thread, total_j = two_socket_rapl(tmp_path)
    out = check("rapl", 1.5, tmp_path)
    thread.join()
    assert out["source"] == "rapl"
    assert out["rails"] == pytest.approx({"package-0": 1.0, "dram-0": 0.5, "package-1": 2.0, "dram-1": 0.25})
    assert out["energy_j"] == pytest.approx(total_j)  # 3.75 J: keying both drams by name read 3.25 J
    assert out["power_w"] == pytest.approx(total_j / out["duration_s"])


def test_the_command_prints_one_json_object_and_fails_without_a_meter(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agents", "meter", "--root", str(jetson_orin_hwmon(tmp_path)),
                        "--seconds", "0.1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"source", "energy_j", "duration_s", "power_w", "rails", "period_s", "warnings"} <= set(out)
    r = subprocess.run([sys.executable, "-m", "agents", "meter", "--root", str(tmp_path / "empty"), "--kind", "ina"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no INA3221/INA238 power rail" in json.loads(r.stdout)["error"]
