"""Temperatures and throttle flags sampled during a run, sent to the controller at Stop.

Linux thermal zones (``/sys/class/thermal/thermal_zone*/temp`` in millidegrees, ``type`` the
zone's name: ``cpu-thermal`` on a Pi, ``CPU-therm``/``GPU-therm`` on a Jetson, ``x86_pkg_temp``
on a PC) and, on a Raspberry Pi, the firmware's throttle flags (``get_throttled``: bit 0
under-voltage now, bit 1 frequency capped now, bit 2 throttled now, bit 3 soft temperature
limit now). Runs on the device: standard library, numpy and the agent's protocol only.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

#: the Pi firmware's throttle flags (hex text), relative to the sysfs root
PI_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


class ThermalSampler:
    """Reads every thermal zone and the throttle flags every ``period_s`` in a background thread.

    ``root`` is where sysfs is (``/``; a fixture's directory in tests). At most ``keep``
    samples are kept (the oldest dropped), so a long run's memory is bounded.
    """

    def __init__(self, root: str = "/", period_s: float = 1.0, keep: int = 100_000, background: bool = True):
        self.zones: dict[str, str] = {}
        for zone in sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*"))):
            name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
            key = name if name not in self.zones else f"{name}.{os.path.basename(zone)}"
            self.zones[key] = os.path.join(zone, "temp")
        self._throttled_path = os.path.join(root, PI_THROTTLED)
        self.has_throttled = os.path.exists(self._throttled_path)
        self.times: list[float] = []
        self.temps_c: dict[str, list[float]] = {z: [] for z in self.zones}
        self.throttled: list[int] = []
        self._keep, self._period = keep, period_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.zones or self.has_throttled:
            self.sample_once()
            if background:
                self._thread = threading.Thread(target=self._run, name="thermal", daemon=True)
                self._thread.start()

    def sample_once(self) -> None:
        """Read every zone and the flags now (an unreadable zone reads NaN, unreadable flags -1)."""
        t = time.monotonic()
        temps = {}
        for zone, path in self.zones.items():
            text = _read(path)
            temps[zone] = int(text) / 1000.0 if text and text.lstrip("-").isdigit() else float("nan")
        flags = -1
        if self.has_throttled:
            text = _read(self._throttled_path)
            try:
                flags = int(text, 16) if text else -1
            except ValueError:
                flags = -1
        with self._lock:
            self.times.append(t)
            for zone, c in temps.items():
                self.temps_c[zone].append(c)
            self.throttled.append(flags)
            if len(self.times) > self._keep:
                del self.times[0]
                del self.throttled[0]
                for values in self.temps_c.values():
                    del values[0]

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.sample_once()
            except Exception as e:  # a sampler never takes the agent down
                log.warning("thermal sample failed: %s", e)

    def snapshot(self) -> tuple:
        """(monotonic seconds, zone -> degrees C, throttle flags per sample), copies."""
        with self._lock:
            return list(self.times), {z: list(v) for z, v in self.temps_c.items()}, list(self.throttled)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._period + 1)
