"""sysfs trees laid out as real boards lay them out, for the meters and ``python -m agents meter --root``.

Each function builds one board's tree under ``root`` (paths as on the board, below ``root``)
and returns the power (W) or energy (J) a correct meter reads from it. Layouts follow the
kernel's documented ABIs: hwmon (Documentation/hwmon/ina3221.rst, ina238.rst: in*_label,
in*_input mV, curr*_input mA, power1_input uW), the L4T 32 ina3221x iio driver (rail_name_N,
in_power N_input mW, in_voltageN_input mV, in_currentN_input mA) and powercap
(Documentation/power/powercap/powercap.rst: name, energy_uj, max_energy_range_uj).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _hwmon_ina3221(root: Path, rails: list[tuple[str, int, int]], n: int = 1) -> None:
    dev = root / f"sys/class/hwmon/hwmon{n}"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina3221\n")
    for i, (label, mv, ma) in enumerate(rails, start=1):
        (dev / f"in{i}_label").write_text(label + "\n")
        (dev / f"in{i}_input").write_text(f"{mv}\n")
        (dev / f"curr{i}_input").write_text(f"{ma}\n")


def jetson_orin_hwmon(root: Path) -> float:
    """Jetson Orin Nano (L4T 35): VDD_IN (the module's input) and two rails inside it: 7 W in."""
    _hwmon_ina3221(root, [("VDD_IN", 5000, 1400), ("VDD_CPU_GPU_CV", 5000, 500), ("VDD_SOC", 5000, 300)])
    return 7.0


def jetson_nano_hwmon(root: Path) -> float:
    """Jetson Nano (L4T 32.7, hwmon): POM_5V_IN is the input; POM_5V_GPU and POM_5V_CPU inside; one NC channel."""
    _hwmon_ina3221(root, [("POM_5V_IN", 5000, 800), ("POM_5V_GPU", 5000, 100), ("POM_5V_CPU", 5000, 300),
                          ("NC", 0, 0)])
    return 4.0


def jetson_xavier_iio(root: Path) -> float:
    """Jetson AGX Xavier (L4T 32, ina3221x under iio): VDD_IN in mW, a GPU rail as mV x mA: 5.2 W in."""
    dev = root / "sys/bus/iio/devices/iio:device0"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina3221x\n")
    (dev / "rail_name_0").write_text("VDD_IN\n")
    (dev / "in_power0_input").write_text("5200\n")
    (dev / "rail_name_1").write_text("VDD_SYS_GPU\n")
    (dev / "in_voltage1_input").write_text("19000\n")
    (dev / "in_current1_input").write_text("100\n")
    return 5.2


def ina238_board(root: Path) -> float:
    """A board with one INA238 on hwmon (no labels; power1_input in uW): 3.3 W."""
    dev = root / "sys/class/hwmon/hwmon2"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina238\n")
    (dev / "in1_input").write_text("12000\n")
    (dev / "curr1_input").write_text("275\n")
    (dev / "power1_input").write_text("3300000\n")
    return 3.3


def ina228_board(root: Path, watts: float = 4.0, seconds: float = 4.0,
                 instant_w: float = 2.5) -> tuple[threading.Thread, float]:
    """A board with one INA228 (hwmon, Documentation/hwmon/ina238.rst): ``energy1_input`` in uJ beside power1_input.

    A thread advances the accumulator at ``watts`` from the real clock every 2 ms for ``seconds``
    (the chip integrates at every conversion). ``power1_input`` holds ``instant_w``, the last
    conversion's power, which differs from the average: a meter that sampled it would read that.
    """
    dev = root / "sys/class/hwmon/hwmon3"
    dev.mkdir(parents=True)
    (dev / "name").write_text("ina228\n")
    (dev / "power1_input").write_text(f"{int(instant_w * 1e6)}\n")
    (dev / "energy1_input").write_text("0\n")

    def advance() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            tmp = dev / "energy1_input.tmp"
            tmp.write_text(f"{int(watts * (time.monotonic() - t0) * 1e6)}\n")
            os.replace(tmp, dev / "energy1_input")
            time.sleep(0.002)

    thread = threading.Thread(target=advance, daemon=True)
    thread.start()
    return thread, watts


def rapl(root: Path, zones: dict[str, str], start_uj: dict[str, int], joules: dict[str, float],
         max_uj: int = 2**32, after_s: float = 1.0) -> threading.Thread:
    """A powercap tree; a thread adds ``joules`` per zone once, ``after_s`` in, wrapping at ``max_uj``.

    One step, written whole (as sysfs gives a value), lands inside the check's window: the meter
    first watches the counters for its update period (0.5 s without changes), then opens it.
    """
    base = root / "sys/class/powercap"
    for zone, name in zones.items():
        d = base / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{start_uj[zone]}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")

    def step() -> None:
        time.sleep(after_s)
        for zone in zones:
            tmp = base / zone / "energy_uj.tmp"
            tmp.write_text(f"{(start_uj[zone] + int(joules[zone] * 1e6)) % max_uj}\n")
            os.replace(tmp, base / zone / "energy_uj")

    thread = threading.Thread(target=step, daemon=True)
    thread.start()
    return thread


def one_socket_rapl_wrapping(root: Path) -> tuple[threading.Thread, float]:
    """A laptop's package and DRAM, the package counter 0.5 J below its range: it wraps inside the window."""
    max_uj = 262_143_328_850  # a typical package range (uJ)
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:2": "dram"}
    start = {"intel-rapl:0": max_uj - 500_000, "intel-rapl:0:2": 1000}
    thread = rapl(root, zones, start, {"intel-rapl:0": 2.0, "intel-rapl:0:2": 0.25}, max_uj)
    return thread, 2.25


def two_socket_rapl(root: Path) -> tuple[threading.Thread, float]:
    """A two-socket server: package-0/1 and a ``dram`` zone under each (+1, +0.5, +2, +0.25 J)."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:2": "dram", "intel-rapl:1": "package-1",
             "intel-rapl:1:2": "dram"}
    joules = dict(zip(zones, (1.0, 0.5, 2.0, 0.25), strict=True))
    return rapl(root, zones, dict.fromkeys(zones, 1000), joules), 3.75


def raspberry_pi_thermal(root: Path, temp_mc: int = 62_500, throttled: str = "0x0") -> None:
    """A Raspberry Pi's thermal zone (``cpu-thermal``, millidegrees) and firmware throttle flags (hex)."""
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{temp_mc}\n")
    fw = root / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text(throttled + "\n")


def jetson_thermal(root: Path) -> None:
    """A Jetson's thermal zones (CPU-therm, GPU-therm; one unreadable), no throttle flags file."""
    for n, (name, mc) in enumerate([("CPU-therm", "48500"), ("GPU-therm", "47000"), ("PMIC-Die", "")]):
        zone = root / f"sys/class/thermal/thermal_zone{n}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(name + "\n")
        (zone / "temp").write_text(mc + "\n")


def jetson_orin_power_mode(root: Path) -> None:
    """A Jetson Orin after ``nvpmodel -m 0`` and ``jetson_clocks``: L4T release, power mode, CPU clocks pinned."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    (root / "etc/os-release").write_text('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\n')
    (root / "var/lib/nvpmodel").mkdir(parents=True)
    (root / "var/lib/nvpmodel/status").write_text("pmode:0000 fmode:fanNull\n")
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text("NVIDIA Orin Nano Developer Kit\x00")
    cpufreq = root / "sys/devices/system/cpu/cpu0/cpufreq"
    cpufreq.mkdir(parents=True)
    for name, value in (("scaling_governor", "schedutil"), ("scaling_min_freq", "1510400"),
                        ("scaling_max_freq", "1510400"), ("scaling_cur_freq", "1510400")):
        (cpufreq / name).write_text(value + "\n")


def cgroup_v1_tree(root: Path, own: str = "/user.slice/session-3.scope") -> Path:
    """cgroup v1 as Raspberry Pi OS Bullseye and JetPack 5 mount it: ``cpu,cpuacct`` with CFS bandwidth files.

    ``/proc/self/cgroup`` puts this process in ``own``; returns that group's directory.
    """
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"12:cpu,cpuacct:{own}\n4:memory:{own}\n1:name=systemd:{own}\n")
    home = root / "sys/fs/cgroup/cpu,cpuacct" / own.lstrip("/")
    home.mkdir(parents=True)
    for d in (root / "sys/fs/cgroup/cpu,cpuacct", home):
        (d / "cpu.cfs_quota_us").write_text("-1\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
        (d / "cgroup.procs").write_text("")
    return home


def cgroup_v2_tree(root: Path, own: str = "/system.slice/testbed-agent.service", cpu_max: str = "max 100000") -> Path:
    """cgroup v2 (unified, Raspberry Pi OS Bookworm, JetPack 6): ``cgroup.controllers`` at the root, ``cpu.max``.

    The process's group ``own`` holds ``cpu_max``; its parent already delegates ``cpu``.
    """
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(f"0::{own}\n")
    base = root / "sys/fs/cgroup"
    home = base / own.lstrip("/")
    home.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (home.parent / "cgroup.subtree_control").write_text("cpu memory\n")
    (home / "cpu.max").write_text(cpu_max + "\n")
    (home / "cgroup.procs").write_text("")
    return home


def raspberry_pi4_cpufreq(root: Path) -> list[Path]:
    """A Pi 4's cpufreq (one policy shared by four cores; 600 MHz to 1.5 GHz, in kHz); the cpuN/cpufreq dirs."""
    dirs = []
    for n in range(4):
        d = root / f"sys/devices/system/cpu/cpu{n}/cpufreq"
        d.mkdir(parents=True)
        (d / "cpuinfo_min_freq").write_text("600000\n")
        (d / "cpuinfo_max_freq").write_text("1500000\n")
        (d / "scaling_max_freq").write_text("1500000\n")
        dirs.append(d)
    return dirs
