"""Energy meters: energy over named windows, from cumulative counters or a power model.

One interface (zeus-style): ``begin(key)`` opens a window, ``end(key)`` closes it and
returns an :class:`EnergyDelta` whose field names carry units. Windows are keyed by
name, so they nest and overlap. Beginning an open key or ending an unknown one is a
:class:`MeterError`. A window shorter than the meter's update period is marked
``approx`` (its energy spans the counter's last step), never reported as a silent zero.

Back ends here:
    rapl   Intel/AMD RAPL through powercap sysfs (package and DRAM domains), counter
           wraparound handled with ``max_energy_range_uj``. ``root`` is a constructor
           argument so tests point it at a fake sysfs tree.
    ina    Jetson-style INA3221/INA238 rails through hwmon sysfs (or iio, on older L4T), read as power and
           integrated over a background sampling timeline (:class:`PowerTimelineMeter`).
    pmic   Raspberry Pi 5 PMIC rails via ``vcgencmd pmic_read_adc`` (volts x amps per rail),
           sampled on the power timeline.
    external  any command that prints one power reading per line (``<watts>`` or
           ``<unix_seconds> <watts>``): USB power meters, lab analysers, a serial bridge.
    replay a power timeline a real meter wrote, integrated the same way.
    nvml   NVIDIA GPUs through NVML's total-energy counter (optional ``pynvml`` import),
           falling back to sampled power on GPUs without the counter.
    model  idle watts over the window plus (busy - idle) watts times the process's CPU
           time in it; calibrated numbers from the inventory; marked as a model.
    none   no sensor: energy is None, source ``none``.

Sensor paths and clocks are constructor arguments; nothing is patched in tests.
"""

from __future__ import annotations

import bisect
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

RAPL_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")
IIO_ROOT = Path("/sys/bus/iio/devices")
INA_CHIPS = ("ina3221", "ina238", "ina237", "ina228", "ina226", "ina230", "ina231", "ina219", "ina209", "ina700",
             "ina780", "sq52206")


class MeterError(Exception):
    """A window was misused, or a sensor could not be read."""


@dataclass(frozen=True)
class EnergyDelta:
    """Energy of one window. ``energy_j`` is None when there is no meter."""

    energy_j: float | None
    duration_s: float
    source: str
    approx: bool
    rails_j: dict[str, float] = field(default_factory=dict)


class EnergyMeter(Protocol):
    """What an agent needs from a meter."""

    source: str
    update_period_s: float | None

    def begin(self, key: str) -> None:
        """Open the window ``key``."""
        ...

    def end(self, key: str) -> EnergyDelta:
        """Close the window ``key`` and return its energy."""
        ...

    def describe(self) -> dict:
        """Source, rails and update period, for the run manifest."""
        ...


class _Windows:
    """Open windows by key: (monotonic start, reading at start)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[float, object]] = {}

    def open(self, key: str, t: float, reading: object) -> None:
        if key in self._open:
            raise MeterError(f"window {key!r} is already open; end it before beginning it again")
        self._open[key] = (t, reading)

    def close(self, key: str) -> tuple[float, object]:
        try:
            return self._open.pop(key)
        except KeyError:
            raise MeterError(f"window {key!r} was never begun (open: {sorted(self._open) or 'none'})") from None


def detect_update_period(read: Callable[[], float], clock: Callable[[], float] = time.monotonic,
                         max_s: float = 0.5, changes: int = 5) -> float | None:
    """Smallest interval between changes of a counter, polling as fast as it can.

    Returns None when the counter did not change ``changes`` times within ``max_s``.
    """
    start = clock()
    last_value, last_change = read(), None
    intervals: list[float] = []
    while clock() - start < max_s and len(intervals) < changes:
        value = read()
        now = clock()
        if value != last_value:
            if last_change is not None:
                intervals.append(now - last_change)
            last_value, last_change = value, now
    return min(intervals) if intervals else None


class NullMeter:
    """No sensor: every window has ``energy_j=None`` and source ``none``."""

    source = "none"
    update_period_s: float | None = None

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._windows = _Windows()

    def begin(self, key: str) -> None:
        """Open a window (timing only)."""
        self._windows.open(key, self._clock(), None)

    def end(self, key: str) -> EnergyDelta:
        """Duration only."""
        t0, _ = self._windows.close(key)
        return EnergyDelta(None, self._clock() - t0, self.source, False)

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "update_period_s": None}


class CounterMeter:
    """Energy from cumulative counters: a window is the difference of two readings.

    Subclasses say how to ``read`` the counters and how to turn two readings into joules
    per rail (``delta_j``, where wraparound is handled). ``record`` also keeps a power
    timeline from the same counters.
    """

    source = "counter"

    def __init__(self, clock: Callable[[], float] = time.monotonic, update_period_s: float | None = None):
        self._clock = clock
        self._windows = _Windows()
        self.update_period_s = update_period_s
        self.timeline: CounterTimeline | None = None

    def read(self) -> dict[str, int]:
        """Current counters by rail, in the sensor's own unit."""
        raise NotImplementedError

    def delta_j(self, start: dict[str, int], stop: dict[str, int]) -> dict[str, float]:
        """Joules per rail between two readings."""
        raise NotImplementedError

    def begin(self, key: str) -> None:
        """Open a window at the current counters."""
        self._windows.open(key, self._clock(), self.read())

    def end(self, key: str) -> EnergyDelta:
        """Counter differences since begin, per rail and summed."""
        t0, start = self._windows.close(key)
        now, stop = self._clock(), self.read()
        rails = self.delta_j(start, stop)  # type: ignore[arg-type]
        duration = now - t0
        approx = self.update_period_s is not None and duration < self.update_period_s
        return EnergyDelta(sum(rails.values()), duration, self.source, approx, rails)

    def record(self, period_s: float = 0.05, background: bool = True) -> CounterTimeline:
        """Also keep a power timeline (watts from counter differences every ``period_s``)."""
        self.timeline = CounterTimeline(self.source, self.read, self.delta_j, period_s, self._clock, background)
        return self.timeline

    def snapshot(self) -> tuple[list[float], dict[str, list[float]]]:
        """The recorded power timeline (empty unless :meth:`record` was called)."""
        return self.timeline.snapshot() if self.timeline else ([], {})

    def close(self) -> None:
        """Stop recording."""
        if self.timeline:
            self.timeline.close()


@dataclass(frozen=True)
class RaplDomain:
    """One powercap zone: its name (package-0, dram, ...), counter file and wrap range."""

    name: str
    energy_file: Path
    max_range_uj: int


def find_rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """Package and DRAM zones under a powercap tree (core/uncore are inside package).

    Every socket has a zone called ``dram``; each is named after its socket (``dram-0``, ``dram-1``)
    so that two sockets' DRAM are two rails, not one.
    """
    domains = []
    for zone in sorted(root.glob("intel-rapl:*")):
        try:
            name = (zone / "name").read_text().strip()
            if not (name.startswith("package") or name == "dram"):
                continue
            max_range = int((zone / "max_energy_range_uj").read_text())
            (zone / "energy_uj").read_text()  # readable? (root-only on recent kernels)
        except (OSError, ValueError):
            continue
        if name == "dram":  # intel-rapl:<socket>:<n>
            name = f"dram-{zone.name.split(':')[1]}"
        domains.append(RaplDomain(name, zone / "energy_uj", max_range))
    return domains


class RaplMeter(CounterMeter):
    """RAPL package and DRAM energy from powercap sysfs, summed over domains."""

    source = "rapl"

    def __init__(self, root: Path = RAPL_ROOT, clock: Callable[[], float] = time.monotonic,
                 update_period_s: float | None = None):
        self.domains = find_rapl_domains(root)
        if not self.domains:
            raise MeterError(f"no readable RAPL package/dram zone under {root}")
        self._last: dict[str, int] = {}  # the last raw value of each counter ...
        self._wraps: dict[str, int] = {}  # ... and how often it wrapped so far
        self._lock = threading.Lock()
        super().__init__(clock, update_period_s)

    def read(self) -> dict[str, int]:
        """Every domain's counter in microjoules, unwrapped: it only grows, however often the raw one wraps.

        A raw value below the previous one is a wrap (a counter wraps every 20-45 minutes at
        100-200 W); the power timeline reads every 50 ms in the background, so no wrap goes
        unseen and windows of any length are right. Read and bookkeeping are one step (a lock),
        so the timeline's thread and the data path never see each other's values out of order.
        """
        with self._lock:
            try:
                raw = {d.name: int(d.energy_file.read_text()) for d in self.domains}
            except (OSError, ValueError) as e:
                raise MeterError(f"cannot read RAPL counters: {e}") from e
            out = {}
            for d in self.domains:
                if raw[d.name] < self._last.get(d.name, -1):
                    self._wraps[d.name] = self._wraps.get(d.name, 0) + 1
                self._last[d.name] = raw[d.name]
                out[d.name] = raw[d.name] + self._wraps.get(d.name, 0) * d.max_range_uj
            return out

    def delta_j(self, start: dict[str, int], stop: dict[str, int]) -> dict[str, float]:
        """Joules per domain between two (unwrapped) readings."""
        return {d.name: (stop[d.name] - start[d.name]) / 1e6 for d in self.domains}

    def measure_update_period(self, max_s: float = 0.5) -> float | None:
        """Find and remember how often the first package counter moves."""
        first = self.domains[0].name
        self.update_period_s = detect_update_period(lambda: self.read()[first], self._clock, max_s)
        return self.update_period_s

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "update_period_s": self.update_period_s,
                "domains": [d.name for d in self.domains]}


class ModelMeter:
    """A power model, not a measurement: idle_w * duration + (busy_w - idle_w) * cpu_time.

    CPU time is this process's (``time.process_time``, nanosecond resolution), so the
    model attributes to a window what the agent computed in it.
    """

    source = "model"
    update_period_s: float | None = None

    def __init__(self, idle_w: float, busy_w: float, clock: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time):
        if not (0 <= idle_w <= busy_w) or math.isnan(busy_w):
            raise MeterError(f"model meter needs 0 <= idle_w <= busy_w, got idle_w={idle_w}, busy_w={busy_w}")
        self.idle_w, self.busy_w = idle_w, busy_w
        self._clock, self._cpu = clock, cpu_time
        self._windows = _Windows()

    def begin(self, key: str) -> None:
        """Open a window at the current wall and CPU time."""
        self._windows.open(key, self._clock(), self._cpu())

    def end(self, key: str) -> EnergyDelta:
        """Modelled energy of the window."""
        t0, cpu0 = self._windows.close(key)
        duration = self._clock() - t0
        cpu = max(0.0, self._cpu() - cpu0)  # type: ignore[operator]
        busy = min(cpu, duration) if duration > 0 else cpu
        energy = self.idle_w * duration + (self.busy_w - self.idle_w) * busy
        return EnergyDelta(energy, duration, self.source, False, {"cpu_model": energy})

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "idle_w": self.idle_w, "busy_w": self.busy_w,
                "update_period_s": None, "note": "modelled from CPU time, not measured"}


def integrate(times: list[float], watts: list[float], t0: float, t1: float) -> tuple[float, int]:
    """Energy (J) of a sampled power curve over [t0, t1], and the samples strictly inside it.

    Trapezoids, with the curve linearly interpolated at the window's edges; outside the
    sampled range the nearest sample is held. Pure.
    """
    if not times:
        raise MeterError("no power sample yet")
    if t1 <= t0:
        return 0.0, 0

    def at(t: float) -> float:
        i = bisect.bisect_left(times, t)
        if i == 0:
            return watts[0]
        if i == len(times):
            return watts[-1]
        ta, tb = times[i - 1], times[i]
        return watts[i - 1] + (watts[i] - watts[i - 1]) * (t - ta) / (tb - ta)

    lo, hi = bisect.bisect_right(times, t0), bisect.bisect_left(times, t1)
    pts = [(t0, at(t0)), *zip(times[lo:hi], watts[lo:hi]), (t1, at(t1))]
    energy = sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(pts, pts[1:]))
    return energy, hi - lo


class PowerTimelineMeter:
    """Energy from a power sensor sampled in the background and integrated per window.

    ``read_watts()`` returns watts per rail. A window with fewer than two samples inside it
    is ``approx``: its energy comes from interpolating (or, at the right edge, holding) the
    surrounding samples. The timeline is kept (bounded) for the power timeline file.
    """

    def __init__(self, source: str, read_watts: Callable[[], dict[str, float]], period_s: float = 0.005,
                 clock: Callable[[], float] = time.monotonic, background: bool = True, keep: int = 200_000,
                 initial: bool = True, total_rail: str | None = None):
        self.source = source
        self.reading: str | None = None  # what a reading is, where the sensor gives more than one kind
        self.scale = 1.0  # a calibration factor on the total (the Pi 5 PMIC's rails read below the board's draw)
        self.total_rail = total_rail  # a rail that already holds the others (a board's input): the total, alone
        self.warnings: dict[str, str] = {}  # rails that failed to read, and why
        self.update_period_s: float | None = period_s
        self._read, self._clock, self._period = read_watts, clock, period_s
        self._keep = keep
        self._lock = threading.Lock()
        self.times: list[float] = []
        self.rails: dict[str, list[float]] = {}
        self._windows = _Windows()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if initial:
            self.sample_once()
        if background:
            self._thread = threading.Thread(target=self._run, name=f"meter-{source}", daemon=True)
            self._thread.start()

    def sample_once(self) -> None:
        """Read the sensor now and append to the timeline."""
        watts = self._read()
        self._append(self._clock(), watts)

    def _append(self, t: float, watts: dict[str, float]) -> None:
        with self._lock:
            self.times.append(t)
            for rail, w in watts.items():
                self.rails.setdefault(rail, []).append(w)
            if len(self.times) > self._keep:
                drop = len(self.times) - self._keep
                del self.times[:drop]
                for values in self.rails.values():
                    del values[:drop]

    def snapshot(self) -> tuple[list[float], dict[str, list[float]]]:
        """A consistent copy of the timeline: (monotonic seconds, watts per rail)."""
        with self._lock:
            return list(self.times), {rail: list(v) for rail, v in self.rails.items()}

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.sample_once()
            except (OSError, ValueError, MeterError):
                continue  # a failed read leaves a gap; windows over it are interpolated

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self._period + 1)

    def begin(self, key: str) -> None:
        """Open a window now."""
        self._windows.open(key, self._clock(), None)

    def end(self, key: str) -> EnergyDelta:
        """Integrate every rail over the window, with what has been sampled so far.

        This runs on the per-sample data path, so it never waits for the next sample and never
        copies the timeline: past the last sample the last reading is held, and a window with
        fewer than two samples inside is marked approximate.
        """
        t0, _ = self._windows.close(key)
        t1 = self._clock()
        with self._lock:
            rails_j, inside = {}, 0
            for rail, watts in self.rails.items():
                rails_j[rail], inside = integrate(self.times, watts, t0, t1)
        total = rails_j[self.total_rail] if self.total_rail in rails_j else sum(rails_j.values())
        return EnergyDelta(total * self.scale, t1 - t0, self.source, inside < 2, rails_j)

    def achieved_period_s(self) -> float | None:
        """The median interval between the last 2,000 samples; None before three samples.

        Every read waits for the sensor (an INA3221 conversion, a vcgencmd call), so it can be
        longer than the period asked for; the manifest keeps both.
        """
        with self._lock:
            t = self.times[-2001:]
        gaps = sorted(b - a for a, b in zip(t, t[1:]))
        return gaps[len(gaps) // 2] if len(gaps) >= 2 else None

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "update_period_s": self.update_period_s,
                "achieved_period_s": self.achieved_period_s(), "rails": sorted(self.rails),
                "total": self.total_rail or "sum of the rails", **({"reading": self.reading} if self.reading else {}),
                **({"unreadable_rails": dict(self.warnings)} if self.warnings else {})}


class CounterTimeline(PowerTimelineMeter):
    """A power timeline recorded from a cumulative energy counter.

    Every ``period_s`` the counter is read; the energy since the previous read over the
    time between them is the mean power of that interval, stamped at its midpoint.
    """

    def __init__(self, source: str, read: Callable[[], dict[str, int]],
                 delta_j: Callable[[dict[str, int], dict[str, int]], dict[str, float]], period_s: float,
                 clock: Callable[[], float] = time.monotonic, background: bool = True):
        self._read_counter, self._delta_j = read, delta_j
        self._prev: tuple[float, dict[str, int]] | None = None
        super().__init__(source, lambda: {}, period_s, clock, background)

    def sample_once(self) -> None:
        """Read the counter; append the mean power since the previous read."""
        reading, t = self._read_counter(), self._clock()
        if self._prev is not None and t > self._prev[0]:
            t_prev, previous = self._prev
            joules = self._delta_j(previous, reading)
            self._append((t_prev + t) / 2, {rail: j / (t - t_prev) for rail, j in joules.items()})
        self._prev = (t, reading)


# Where INA rails live: (device glob, label glob, rail number from the label file's name, fallback label prefix,
# power file, millivolt file, milliamp file); hwmon power is in uW, iio ``in_power`` in mW.
_INA_LAYOUTS: dict[str, tuple[str, str, Callable[[str], str], str, str, str, str]] = {
    "hwmon": ("hwmon*", "in*_label", lambda name: name[2:-6], "in", "power{n}_input", "in{n}_input",
              "curr{n}_input"),
    "iio": ("iio:device*", "rail_name_*", lambda name: name.rsplit("_", 1)[1], "", "in_power{n}_input",
            "in_voltage{n}_input", "in_current{n}_input"),
}


def _find_rails(root: Path, layout: str) -> dict[str, tuple[Path, ...]]:
    dev_glob, label_glob, number, prefix, power_f, volts_f, amps_f = _INA_LAYOUTS[layout]
    rails: dict[str, tuple[Path, ...]] = {}
    for dev in sorted(root.glob(dev_glob)):
        try:
            chip = (dev / "name").read_text().strip()
        except OSError:
            continue
        if chip.rstrip("x") not in INA_CHIPS:  # iio's driver is ina3221x
            continue
        if layout == "hwmon" and not any(dev.glob(label_glob)) and (dev / "power1_input").is_file():
            rails[f"{chip}.{dev.name}"] = (dev / "power1_input",)  # one-channel INA2xx (INA238, INA226): no labels
            continue
        for label_file in sorted(dev.glob(label_glob)):
            n = number(label_file.name)
            label = label_file.read_text().strip() or f"{dev.name}.{prefix}{n}"
            power = dev / power_f.format(n=n)
            volts, amps = dev / volts_f.format(n=n), dev / amps_f.format(n=n)
            if power.is_file():
                rails[label] = (power,)
            elif volts.is_file() and amps.is_file():
                rails[label] = (volts, amps)
    return rails


def find_ina_rails(root: Path = HWMON_ROOT) -> dict[str, tuple[Path, ...]]:
    """INA power rails under hwmon: label -> (power_uW file,) or (millivolt file, milliamp file)."""
    return _find_rails(root, "hwmon")


def find_ina_iio_rails(root: Path = IIO_ROOT) -> dict[str, tuple[Path, ...]]:
    """INA rails under iio (Jetson TX2/Xavier on L4T 32, driver ``ina3221x``).

    Labels come from ``rail_name_<n>``; power from ``in_power<n>_input`` (mW), else
    ``in_voltage<n>_input`` (mV) times ``in_current<n>_input`` (mA).
    """
    return _find_rails(root, "iio")


def read_ina_watts(rails: dict[str, tuple[Path, ...]], failed: dict[str, str] | None = None) -> dict[str, float]:
    """Watts per rail: power in uW (hwmon) or mW (iio ``in_power``), or millivolts times milliamps.

    A rail that cannot be read (a disabled channel answers ENODATA) is left out of this reading and
    noted in ``failed`` (rail -> why); only when no rail reads does it raise.
    """
    out = {}
    for label, files in rails.items():
        try:
            if len(files) == 1:
                scale = 1e3 if files[0].name.startswith("in_power") else 1e6
                out[label] = int(files[0].read_text()) / scale
            else:
                out[label] = int(files[0].read_text()) * int(files[1].read_text()) / 1e6
        except (OSError, ValueError) as e:
            if failed is not None:
                failed[label] = f"{type(e).__name__}: {e}"
    if rails and not out:
        raise MeterError(f"no INA rail could be read: {failed or 'every read failed'}")
    return out


#: a Jetson's input rail, which already carries every other rail (Orin, Xavier NX, TX2: VDD_IN; Nano: POM_5V_IN)
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
#: how the Jetson device trees label a channel with nothing connected
UNCONNECTED = ("NC",)


def ina_meter(root: Path = HWMON_ROOT, period_s: float = 0.005, iio_root: Path = IIO_ROOT,
              **kwargs: Any) -> PowerTimelineMeter:
    """A timeline meter over every INA rail found under ``root`` (hwmon), else under ``iio_root``.

    The energy of a window is the board's input rail where it has one (the other rails are its
    breakdown, kept per rail: summing them with it counted them twice), else the sum of the
    rails; channels labelled unconnected are left out.
    """
    rails = {k: v for k, v in (find_ina_rails(root) or find_ina_iio_rails(iio_root)).items() if k not in UNCONNECTED}
    if not rails:
        raise MeterError(f"no INA3221/INA238 power rail under {root} or {iio_root}")
    total = next((r for r in INPUT_RAILS if r in rails), None)
    failed: dict[str, str] = {}
    meter = PowerTimelineMeter("ina", lambda: read_ina_watts(rails, failed), period_s, total_rail=total, **kwargs)
    meter.warnings = failed  # rails skipped because they did not read; in the manifest
    return meter


def find_ina_energy(root: Path = HWMON_ROOT) -> dict[str, Path]:
    """INA2xx chips under hwmon with an energy accumulator (INA228, INA700, INA780, SQ52206).

    Returns rail -> its ``energy1_input`` file.
    """
    found = {}
    for dev in sorted(root.glob("hwmon*")):
        try:
            chip = (dev / "name").read_text().strip()
        except OSError:
            continue
        if chip.lower() in INA_CHIPS and (dev / "energy1_input").is_file():
            found[f"{chip}.{dev.name}"] = dev / "energy1_input"
    return found


class InaEnergyMeter(CounterMeter):
    """Energy from the INA2xx's own accumulator (``energy1_input``, microjoules per the hwmon ABI).

    The chip integrates power at every conversion, so no conversion between two reads is lost, as
    a sampled ``power1_input`` would lose it. A reading below the previous one is a reset (the
    driver clears the accumulator when it is reconfigured): the count goes on from the last value.
    """

    source = "ina-energy"

    def __init__(self, root: Path = HWMON_ROOT, clock: Callable[[], float] = time.monotonic):
        self.files = find_ina_energy(root)
        if not self.files:
            raise MeterError(f"no INA2xx energy1_input under {root}")
        self._last: dict[str, int] = {}
        self._base: dict[str, int] = {}
        self._lock = threading.Lock()
        super().__init__(clock, None)

    def read(self) -> dict[str, int]:
        """Every accumulator in microjoules, continued across resets."""
        with self._lock:
            try:
                raw = {rail: int(f.read_text()) for rail, f in self.files.items()}
            except (OSError, ValueError) as e:
                raise MeterError(f"cannot read INA energy1_input: {e}") from e
            for rail, value in raw.items():
                if value < self._last.get(rail, -1):
                    self._base[rail] = self._base.get(rail, 0) + self._last[rail]
                self._last[rail] = value
            return {rail: value + self._base.get(rail, 0) for rail, value in raw.items()}

    def delta_j(self, start: dict[str, int], stop: dict[str, int]) -> dict[str, float]:
        """Joules per chip between two readings."""
        return {rail: (stop[rail] - start[rail]) / 1e6 for rail in self.files}

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "update_period_s": self.update_period_s, "rails": sorted(self.files)}


class NvmlMeter(CounterMeter):
    """GPU energy from NVML's cumulative counter (millijoules), summed over the GPUs given.

    ``nvml`` is the ``pynvml`` module (or a stand-in with the same functions); NVML errors
    are translated to :class:`MeterError` here, once.
    """

    source = "nvml"

    def __init__(self, nvml: object | None = None, indices: list[int] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self._nvml = nvml if nvml is not None else _import_pynvml()
        n: Any = self._nvml
        try:
            n.nvmlInit()
            count = n.nvmlDeviceGetCount()
            self.indices = indices if indices is not None else list(range(count))
            self._handles = {i: n.nvmlDeviceGetHandleByIndex(i) for i in self.indices}
            for h in self._handles.values():
                n.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception as e:  # pynvml raises its own NVMLError subclasses
            raise MeterError(f"NVML energy counter unavailable: {e}") from e
        if not self._handles:
            raise MeterError("NVML sees no GPU")
        super().__init__(clock)

    def read(self) -> dict[str, int]:
        """Cumulative energy per GPU, millijoules."""
        try:
            return {f"gpu{i}": int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h))  # type: ignore[attr-defined]
                    for i, h in self._handles.items()}
        except Exception as e:  # NVMLError
            raise MeterError(f"NVML read failed: {e}") from e

    def delta_j(self, start: dict[str, int], stop: dict[str, int]) -> dict[str, float]:
        """Joules per GPU between two readings."""
        return {g: (stop[g] - start[g]) / 1e3 for g in stop}

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "gpus": self.indices, "update_period_s": self.update_period_s}


#: NVML's field id of instant power (mW), where the driver has it (R530 and newer)
NVML_FI_DEV_POWER_INSTANT = 186


def nvml_power_meter(nvml: object | None = None, period_s: float = 0.01, **kwargs) -> PowerTimelineMeter:
    """Sampled-power fallback for GPUs without the energy counter.

    It reads instant power (the field value ``NVML_FI_DEV_POWER_INSTANT``, mW) where every GPU
    answers it, else ``nvmlDeviceGetPowerUsage`` (mW; a one-second average on Ampere and newer);
    ``describe()`` says which (``reading``).
    """
    n = nvml if nvml is not None else _import_pynvml()
    try:
        n.nvmlInit()  # type: ignore[attr-defined]
        handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]  # type: ignore[attr-defined]
    except Exception as e:  # NVMLError
        raise MeterError(f"NVML unavailable: {e}") from e
    if not handles:
        raise MeterError("NVML sees no GPU")

    field = getattr(n, "NVML_FI_DEV_POWER_INSTANT", NVML_FI_DEV_POWER_INSTANT)

    def instant(h: object) -> float | None:
        try:
            [value] = n.nvmlDeviceGetFieldValues(h, [field])  # type: ignore[attr-defined]
            return None if value.nvmlReturn != 0 else value.value.uiVal / 1e3
        except Exception:  # an older driver or pynvml: no such field
            return None

    def read_instant() -> dict[str, float]:
        out = {f"gpu{i}": instant(h) for i, h in enumerate(handles)}
        return {k: w for k, w in out.items() if w is not None}

    def read_average() -> dict[str, float]:
        return {f"gpu{i}": n.nvmlDeviceGetPowerUsage(h) / 1e3 for i, h in enumerate(handles)}  # type: ignore[attr-defined]

    has_instant = all(instant(h) is not None for h in handles)
    meter = PowerTimelineMeter("nvml-power", read_instant if has_instant else read_average, period_s, **kwargs)
    meter.reading = ("instant power (NVML field POWER_INSTANT)" if has_instant else
                     "nvmlDeviceGetPowerUsage: a one-second average on Ampere and newer GPUs, so short windows blur")
    return meter


_PMIC = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.]+)[AV]\s*$")


def parse_pmic(text: str) -> dict[str, float]:
    """Watts per rail from ``vcgencmd pmic_read_adc`` output (rails with both volts and amps)."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(3))
    rails = {rail: volts[rail] * amps[rail] for rail in amps if rail in volts}
    if not rails:
        raise MeterError("vcgencmd pmic_read_adc printed no rail with both current and voltage")
    return rails


def pmic_meter(command: tuple[str, ...] = ("vcgencmd", "pmic_read_adc"), period_s: float = 0.1,
               scale: float | None = None, **kwargs) -> PowerTimelineMeter:
    """Raspberry Pi 5 PMIC rails, read by running the command every ``period_s`` (each run costs ~23 ms).

    The rails are what the PMIC regulates, not the board's draw (the USB ports, the 5 V rail's own
    losses are outside them), so their sum reads low. ``scale`` (the board's draw over the rail sum,
    measured once against a wall meter) multiplies the total; without it the total is the rails
    only, and ``describe()`` says so.
    """

    def read() -> dict[str, float]:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=2, check=True).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise MeterError(f"{' '.join(command)} failed: {e}") from e
        return parse_pmic(out)

    meter = PowerTimelineMeter("pmic", read, period_s, **kwargs)
    meter.scale = scale or 1.0
    meter.reading = (f"PMIC rails x {scale} (calibrated against the board's draw)" if scale else
                     "PMIC rails only: below the board's draw (set meter.scale from a wall meter)")
    return meter


def parse_power_line(line: str) -> tuple[float | None, float]:
    """``"<watts>"`` or ``"<unix_seconds> <watts>"`` -> (timestamp or None, watts)."""
    parts = line.replace(",", " ").split()
    try:
        if len(parts) == 1:
            return None, float(parts[0])
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise MeterError(f"cannot read a power reading from {line.strip()!r}; expected '<watts>' or '<unix_s> <watts>'")


class ExternalMeter(PowerTimelineMeter):
    """Power streamed by a command, one reading per line, integrated like any timeline.

    Readings stamped by the meter (unix seconds) are mapped onto this host's monotonic
    clock with the offset seen at the first reading; unstamped ones are stamped on arrival.
    """

    def __init__(self, command: list[str], clock: Callable[[], float] = time.monotonic,
                 first_reading_s: float = 10.0):
        super().__init__("external", lambda: {}, period_s=0.0, clock=clock, background=False, initial=False)
        self.update_period_s = None
        self.command = command
        self._offset: float | None = None
        self._first = threading.Event()
        try:
            self._proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as e:
            raise MeterError(f"cannot start the external meter {command!r}: {e}") from e
        self._reader = threading.Thread(target=self._pump, name="meter-external", daemon=True)
        self._reader.start()
        if not self._first.wait(first_reading_s):
            self.close()
            raise MeterError(f"the external meter {command!r} printed no reading within {first_reading_s} s")

    def sample_once(self) -> None:
        """Readings arrive from the command; nothing to poll."""

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                stamp, watts = parse_power_line(line)
            except MeterError:
                continue
            now = self._clock()
            if stamp is not None:
                if self._offset is None:
                    self._offset = now - stamp
                now = stamp + self._offset
            self._append(now, {"external": watts})
            self._first.set()

    def close(self) -> None:
        """Stop the command."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(2)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def replay_meter(times: list[float], rails: dict[str, list[float]], clock: Callable[[], float]) -> PowerTimelineMeter:
    """A meter over a recorded timeline (seconds, watts per rail): windows integrate it as the live meter did."""
    meter = PowerTimelineMeter("replay", lambda: {}, period_s=0.0, clock=clock, background=False, initial=False)
    for i, t in enumerate(times):
        meter._append(t, {rail: values[i] for rail, values in rails.items()})
    return meter


def _open_nvml() -> EnergyMeter:
    """The energy counter where the GPU has one, else sampled power."""
    try:
        meter = NvmlMeter()
    except MeterError:
        return nvml_power_meter()
    meter.update_period_s = detect_update_period(lambda: sum(meter.read().values()), max_s=0.3)
    meter.record()
    return meter


def _open_ina(hwmon_root: Path, iio_root: Path) -> EnergyMeter:
    """The chips' energy accumulators where every INA chip has one, else sampled power."""
    energy, power = find_ina_energy(hwmon_root), find_ina_rails(hwmon_root)
    if energy and set(energy) >= set(power):  # a board with an INA3221 too would lose its rails
        meter = InaEnergyMeter(hwmon_root)
        meter.update_period_s = detect_update_period(lambda: sum(meter.read().values()), max_s=0.3)
        meter.record()
        return meter
    return ina_meter(hwmon_root, iio_root=iio_root)


class CompositeMeter:
    """Several meters read together, for a machine whose draw no single one of them sees.

    A GPU server: RAPL for the CPU packages and DRAM, NVML for the GPUs. A window's energy is the
    sum; rails are named ``<source>:<rail>``.
    """

    def __init__(self, meters: list[Any]):
        self.meters = meters
        self.source = "+".join(m.source for m in meters)
        periods = [m.update_period_s for m in meters if getattr(m, "update_period_s", None)]
        self.update_period_s = max(periods) if periods else None

    def begin(self, key: str) -> None:
        """Open the window on every meter."""
        for m in self.meters:
            m.begin(key)

    def end(self, key: str) -> EnergyDelta:
        """Close it on every meter; the energy is their sum (unknown if any is unknown)."""
        parts = [m.end(key) for m in self.meters]
        known = [d.energy_j for d in parts if d.energy_j is not None]
        rails = {f"{m.source}:{r}": j for m, d in zip(self.meters, parts) for r, j in (d.rails_j or {}).items()}
        return EnergyDelta(sum(known) if len(known) == len(parts) else None, max(d.duration_s for d in parts),
                           self.source, any(d.approx for d in parts), rails)

    def snapshot(self) -> tuple[list[float], dict[str, list[float]]]:
        """Every meter's timeline on the first one's sample times (the others interpolated)."""
        import numpy as np

        times: list[float] = []
        rails: dict[str, list[float]] = {}
        for m in self.meters:
            get = getattr(m, "snapshot", None)
            if get is None:
                continue
            t, r = get()
            if not t:
                continue
            if not times:
                times = list(t)
            for name, values in r.items():
                rails[f"{m.source}:{name}"] = [float(x) for x in np.interp(times, t, values)]
        return times, rails

    def describe(self) -> dict:
        """For the manifest."""
        return {"source": self.source, "update_period_s": self.update_period_s,
                "parts": [m.describe() for m in self.meters]}

    def close(self) -> None:
        """Stop every meter's sampling thread."""
        for m in self.meters:
            close = getattr(m, "close", None)
            if close is not None:
                close()


def _import_pynvml() -> object:
    try:
        import pynvml  # optional: only GPU devices install nvidia-ml-py
    except ImportError as e:
        raise MeterError("NVML needs `pip install nvidia-ml-py` on this device") from e
    return pynvml


def open_meter(kind: str = "auto", rapl_root: Path = RAPL_ROOT, idle_w: float | None = None,
               busy_w: float | None = None, hwmon_root: Path = HWMON_ROOT,
               command: list[str] | None = None, iio_root: Path = IIO_ROOT,
               scale: float | None = None) -> EnergyMeter:
    """The meter ``kind`` names; ``auto`` probes rapl, nvml, ina, pmic, then model (if calibrated), then none.

    ``auto`` on a machine with both RAPL and NVML (a GPU server) reads them together
    (:class:`CompositeMeter`): RAPL alone would leave its GPUs out.

    ``external`` runs ``command`` and is never probed: it has to be named.

    Raises:
        MeterError: a named kind is not available here (with why).
    """
    if kind in ("rapl", "auto"):
        try:
            meter = RaplMeter(rapl_root)
            meter.measure_update_period()
            meter.record()
        except MeterError:
            if kind == "rapl":
                raise
        else:
            if kind == "rapl":
                return meter
            try:
                return CompositeMeter([meter, _open_nvml()])
            except MeterError:
                return meter
    if kind in ("nvml", "auto"):
        try:
            return _open_nvml()
        except MeterError:
            if kind == "nvml":
                raise
    if kind in ("ina", "auto"):
        try:
            return _open_ina(hwmon_root, iio_root)
        except MeterError:
            if kind == "ina":
                raise
    if kind in ("pmic", "auto"):
        try:
            probe = pmic_meter(background=False)
            probe.sample_once()  # the command works and prints rails
            probe.close()
            return pmic_meter(scale=scale)
        except MeterError:
            if kind == "pmic":
                raise
    if kind == "external":
        if not command:
            raise MeterError("meter 'external' needs a command that prints watts, one reading per line")
        return ExternalMeter(command)
    if kind in ("model", "auto") and idle_w is not None and busy_w is not None:
        return ModelMeter(idle_w, busy_w)
    if kind == "model":
        raise MeterError("meter 'model' needs idle_w and busy_w (watts) in the inventory's meter settings")
    if kind in ("none", "auto"):
        return NullMeter()
    raise MeterError(f"unknown meter {kind!r}; choose auto, rapl, nvml, ina, pmic, external, model or none")
