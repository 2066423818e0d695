"""Host facts an agent reports in its Hello: CPU, cores, memory, runtime versions."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

import onnxruntime as ort
import psutil


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "model\t")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_facts() -> dict[str, Any]:
    """What the controller records about this device in the run manifest."""
    freq = psutil.cpu_freq()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_freq_max_mhz": float(freq.max) if freq else None,
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "pid": os.getpid(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
