"""Runs on the device: versions, disk, clock, CPU governor, thermal, shaping and meter support.

argv: workdir, the minimum Python as a JSON list, the modules the agent imports as a JSON list.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import platform
import shutil
import sys
import time
from typing import Any

from testbed.devices.helpers.prelude import say
from testbed.devices.helpers.shaping_facts import read_text, shaping_facts


def _modules(out: dict[str, Any], names: list[str]) -> None:
    for m in names:
        try:
            out["modules"][m] = getattr(importlib.import_module(m), "__version__", "?")
        except Exception as e:  # any import failure is a fact to report
            out["missing"].append(m + " (" + type(e).__name__ + ": " + str(e)[:120] + ")")


def _workdir(out: dict[str, Any], wd: str) -> None:
    try:
        os.makedirs(wd, exist_ok=True)
        probe = os.path.join(wd, ".testbed-write-probe")
        open(probe, "w").close()
        os.remove(probe)
        out["workdir_writable"] = True
        out["disk_free_bytes"] = shutil.disk_usage(wd).free
    except OSError as e:
        out["workdir_writable"] = False
        out["workdir_error"] = str(e)
        out["disk_free_bytes"] = None


def _board(out: dict[str, Any]) -> None:
    out["governor"] = read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    raw = [read_text(p) for p in glob.glob("/sys/class/thermal/thermal_zone*/temp")]
    temps = [int(t) / 1000 for t in raw if t and t.lstrip("-").isdigit()]
    out["temp_c_max"] = max(temps) if temps else None
    out["throttled"] = read_text("/sys/devices/platform/soc/soc:firmware/get_throttled")
    out["setsid"] = shutil.which("setsid")


def _meters() -> list[str]:
    meters = []
    rapl = glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj")
    if rapl and read_text(rapl[0]) is not None:  # root-only since Linux 5.10: present is not readable
        meters.append("rapl")
    elif rapl:
        meters.append("rapl-unreadable")
    if glob.glob("/dev/nvidia[0-9]*"):
        meters.append("nvml")
    for h in glob.glob("/sys/class/hwmon/hwmon*/name"):
        if (read_text(h) or "").startswith("ina"):
            meters.append("ina")
            break
    if shutil.which("vcgencmd"):
        meters.append("pmic")
    return meters


def main() -> None:
    """Print the device's facts as one JSON line."""
    wd = os.path.abspath(os.path.expanduser(sys.argv[1]))
    out: dict[str, Any] = {
        "python": platform.python_version(), "python_ok": sys.version_info >= tuple(json.loads(sys.argv[2])),
        "executable": sys.executable, "modules": {}, "missing": [], "workdir": wd, "host": platform.node(),
        "kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()}
    _modules(out, json.loads(sys.argv[3]))
    try:
        import onnxruntime

        out["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # already reported as missing
        out["onnxruntime_providers"] = []
    out["gpu"] = ("jetson" if os.path.exists("/etc/nv_tegra_release")
                  else "nvidia" if os.path.exists("/proc/driver/nvidia/version") else None)
    _workdir(out, wd)
    _board(out)
    shaping_facts(out)
    out["meters"] = _meters()
    out["time_ns"] = time.time_ns()
    say(json.dumps(out))


main()
