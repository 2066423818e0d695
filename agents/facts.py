"""Host facts an agent reports in its Hello: CPU, cores, memory, runtime versions, the board and its OS.

Every fact that may be absent on a board (no L4T on a Pi, no device tree on a server) is None
there; none of them is read on the per-sample path.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import sys
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort
import psutil
import zmq


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name: x86 ``model name``, else Arm's ``Hardware`` or a Pi's ``Model`` line.

    x86's bare ``model`` line is a number, not a name, and comes first.
    """
    found: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("model name", "hardware", "model") and value.strip():
                    found.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    for key in ("model name", "hardware", "model"):
        if key in found and not (key == "model" and found[key].isdigit()):
            return found[key]
    return platform.processor() or platform.machine()


def _read(path: str, limit: int = 200) -> str | None:
    """A short text file's stripped contents, or None where it is absent or unreadable."""
    try:
        with open(path, errors="replace") as f:
            return f.read(limit).replace("\x00", "").strip() or None
    except OSError:
        return None


def _os_release(root: str = "/") -> str | None:
    text = _read(os.path.join(root, "etc/os-release"), 4000) or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _khz(root: str, name: str) -> int | None:
    text = _read(os.path.join(root, "sys/devices/system/cpu/cpu0/cpufreq", name))
    return int(text) if text and text.isdigit() else None


def board_facts(root: str = "/") -> dict[str, Any]:
    """The board and its OS: kernel, OS and L4T release, device-tree model, governor and CPU clocks, power mode.

    ``nvpmodel``: a Jetson's power mode as ``nvpmodel`` left it (``/var/lib/nvpmodel/status``);
    ``cpu_clocks_pinned``: the CPU's minimum clock equals its maximum, which is what
    ``jetson_clocks`` (or a ``performance`` governor with a raised minimum) leaves. ``root``: where
    the board's files are (``/``; a fixture in tests).
    """
    at = functools.partial(os.path.join, root)
    l4t = _read(at("etc/nv_tegra_release"))
    lo, hi = _khz(root, "scaling_min_freq"), _khz(root, "scaling_max_freq")
    return {
        "kernel": platform.release(),
        "os_release": _os_release(root),
        "l4t_release": l4t.splitlines()[0] if l4t else None,
        "board_model": _read(at("proc/device-tree/model")),
        "cpu_governor": _read(at("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")),
        "cpu_freq_min_khz": lo, "cpu_freq_max_khz": hi, "cpu_freq_cur_khz": _khz(root, "scaling_cur_freq"),
        "cpu_clocks_pinned": None if lo is None or hi is None else lo == hi,
        "nvpmodel": _read(at("var/lib/nvpmodel/status")),
        "gpu": gpu_kind(root),
    }


def gpu_kind(root: str = "/") -> str | None:
    """``jetson`` (an L4T board's integrated GPU), ``nvidia`` (a discrete GPU's driver is loaded), else None."""
    base = os.path.join(root, "")
    if os.path.exists(base + "etc/nv_tegra_release"):
        return "jetson"
    if os.path.exists(base + "proc/driver/nvidia/version"):
        return "nvidia"
    return None


def host_facts() -> dict[str, Any]:
    """What the controller records about this device in the run manifest."""
    freq = psutil.cpu_freq()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_freq_max_mhz": float(freq.max) if freq else None,
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(map(str, msgpack.version)),
        "psutil": psutil.__version__,
        **board_facts(),
        "pid": os.getpid(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
