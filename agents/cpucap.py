"""CPU caps the controller may change mid-run: CPU time through a cgroup, or the clock through cpufreq.

Two kinds, each opened at Configure (so a device without the rights is refused before any
sample, with the reason) and changed by :class:`agents.protocol.Limit` messages:

- ``cores``: the agent moves itself into a cgroup of its own and writes its quota. On cgroup
  v1 (``/sys/fs/cgroup/cpu``, Documentation/scheduler/sched-bwc.rst) the new group is a child
  of the agent's current one, so a cap the emulation or the board already puts on that group
  still holds; ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. On cgroup v2
  (Documentation/admin-guide/cgroup-v2.rst) a group with processes cannot enable controllers
  for children, so the new group is a sibling of the current one, ``cpu.max`` is
  ``"$QUOTA $PERIOD"``, and the current group's own ``cpu.max`` (if any) is kept as a ceiling.
- ``max_freq_mhz``: ``scaling_max_freq`` of every CPU's cpufreq policy
  (Documentation/admin-guide/pm/cpufreq.rst), clamped to ``cpuinfo_min_freq`` /
  ``cpuinfo_max_freq``; the values found at open come back at close. This limits the whole
  board, not only the agent.

Nothing here runs on import; every path is under ``root`` (``/`` on a device, a fixture's
tree in tests).
"""

from __future__ import annotations

import os
from pathlib import Path

from agents.protocol import CPU_CAPS as KINDS

PERIOD_US = 100_000


class CpuCapError(Exception):
    """A cap cannot be opened or set here; the message says why and what would allow it."""


def _write(path: Path, value: str, what: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CpuCapError(f"{what}: writing {value!r} to {path} failed ({e.strerror or e}); the agent needs write "
                          "access to it: run it as root, or give its user a delegated cgroup (systemd-run --scope "
                          "-p Delegate=yes) or the cpufreq files") from e


def _own_cgroups(root: Path) -> dict[str, str]:
    """Controller (or "" for v2's unified line) -> this process's cgroup path, from /proc/self/cgroup."""
    text = (root / "proc/self/cgroup").read_text()
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(",") if parts[1] else [""]:
                out[c] = parts[2]
    return out


class CgroupCap:
    """The agent's own cgroup with a CPU-time quota (``cores`` CPUs' worth per period)."""

    def __init__(self, root: Path = Path("/"), pid: int | None = None, name: str = "testbed-agent"):
        self.root = root
        self.pid = pid if pid is not None else os.getpid()
        base = root / "sys/fs/cgroup"
        self.v2 = (base / "cgroup.controllers").is_file()
        cpu = base if self.v2 else next((base / d for d in ("cpu", "cpu,cpuacct")
                                         if (base / d / "cpu.cfs_quota_us").is_file()), None)
        if cpu is None:
            raise CpuCapError(f"no cgroup cpu controller under {base} (neither cgroup v2's cgroup.controllers nor "
                              "v1's cpu/cpu.cfs_quota_us): this kernel cannot cap CPU time; use max_freq_mhz")
        try:
            own = _own_cgroups(root)
        except OSError as e:
            raise CpuCapError(f"cannot tell this process's cgroup: {e}") from e
        self.mount = cpu
        self.home = cpu / own.get("" if self.v2 else "cpu", "/").lstrip("/")
        # v2: a sibling (a group with processes enables no controller for children); v1: a child
        parent = (self.home.parent if self.home != base else base) if self.v2 else self.home
        self.path = parent / f"{name}-{self.pid}"
        self.ceiling = self._ceiling()
        self.cores: float | None = None

    def _ceiling(self) -> float | None:
        """On v2, the cores the agent's current group allows (None: unlimited); v1 nests the groups instead."""
        f = self.home / "cpu.max"
        if not self.v2 or not f.is_file():
            return None
        quota, _, period = f.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or PERIOD_US)

    def open(self) -> None:
        """Make the group and move this process (every thread of it) in."""
        if self.v2:
            _write(self.path.parent / "cgroup.subtree_control", "+cpu", "enabling the cpu controller")
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise CpuCapError(f"making the cgroup {self.path} failed ({e.strerror or e}): run the agent as root or "
                              "in a delegated cgroup (systemd-run --scope -p Delegate=yes)") from e
        _write(self.path / "cgroup.procs", str(self.pid), "moving the agent into its cgroup")

    def set(self, cores: float | None) -> str:
        """Cap at ``cores`` CPUs (None: no cap); returns what was written, for the record."""
        if cores is not None and self.ceiling is not None:
            cores = min(cores, self.ceiling)
        if cores is None and self.ceiling is not None:
            cores = self.ceiling
        quota = -1 if cores is None else max(1000, int(cores * PERIOD_US))
        if self.v2:
            value = f"{'max' if quota < 0 else quota} {PERIOD_US}"
            _write(self.path / "cpu.max", value, "capping CPU time")
            self.cores = cores
            return f"{self.path / 'cpu.max'} = {value}"
        _write(self.path / "cpu.cfs_period_us", str(PERIOD_US), "setting the CFS period")
        _write(self.path / "cpu.cfs_quota_us", str(quota), "capping CPU time")
        self.cores = cores
        return f"{self.path / 'cpu.cfs_quota_us'} = {quota} per {PERIOD_US} us"

    def throttled_ns(self) -> int:
        """Time the kernel has held this group throttled (cpu.stat: v1 throttled_time ns, v2 throttled_usec)."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_time":
                return int(value)
            if key == "throttled_usec":
                return int(value) * 1000
        return 0

    def close(self) -> None:
        """Move back to the group the agent started in and remove its own; never raises."""
        try:
            (self.home / "cgroup.procs").write_text(str(self.pid))
            self.path.rmdir()
        except OSError:
            pass


class CpufreqCap:
    """A ceiling on every CPU's clock through cpufreq's ``scaling_max_freq`` (kHz in sysfs)."""

    def __init__(self, root: Path = Path("/")):
        base = root / "sys/devices/system/cpu"
        found = base.glob("cpu[0-9]*/cpufreq")
        self.policies: list[Path] = sorted(p for p in found if (p / "scaling_max_freq").is_file())
        if not self.policies:
            raise CpuCapError(f"no cpufreq under {base} (cpu*/cpufreq/scaling_max_freq): this board's clock cannot "
                              "be capped; use cores (a cgroup quota)")
        self.original = {p: (p / "scaling_max_freq").read_text().strip() for p in self.policies}
        self.mhz: float | None = None

    def open(self) -> None:
        """Check that every policy's ceiling can be written (by writing back what it holds)."""
        for p, value in self.original.items():
            _write(p / "scaling_max_freq", value, "capping the CPU clock")

    def set(self, mhz: float | None) -> str:
        """Cap every CPU at ``mhz`` (clamped to what it can do; None: the values found at open)."""
        written = []
        for p in self.policies:
            if mhz is None:
                value = self.original[p]
            else:
                lo = int((p / "cpuinfo_min_freq").read_text()) if (p / "cpuinfo_min_freq").is_file() else 0
                hi = int((p / "cpuinfo_max_freq").read_text()) if (p / "cpuinfo_max_freq").is_file() else 1 << 40
                value = str(min(hi, max(lo, int(mhz * 1000))))
            _write(p / "scaling_max_freq", value, "capping the CPU clock")
            written.append(value)
        self.mhz = mhz
        return f"scaling_max_freq = {','.join(sorted(set(written)))} kHz on {len(self.policies)} CPUs"

    def close(self) -> None:
        """Put back the ceilings found at open; never raises."""
        for p, value in self.original.items():
            try:
                (p / "scaling_max_freq").write_text(value)
            except OSError:
                pass


class CpuCaps:
    """The caps a run asked for at Configure, opened; ``set(kind, value)`` from Limit messages."""

    def __init__(self, kinds: list[str], root: Path = Path("/")):
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise CpuCapError(f"cpu cap kinds {bad}: known are {KINDS}")
        self.caps: dict[str, object] = {}
        self._throttled_ns: int | None = None
        try:
            for kind in kinds:
                cap = CgroupCap(root) if kind == "cores" else CpufreqCap(root)
                cap.open()
                self.caps[kind] = cap
        except (CpuCapError, OSError) as e:
            self.close()
            raise e if isinstance(e, CpuCapError) else CpuCapError(f"opening the {kind} cap: {e}") from e

    def set(self, kind: str, value: float | None) -> str:
        """Apply one limit (None or 0 lifts it); returns what was written. Raises CpuCapError."""
        cap = self.caps.get(kind)
        if cap is None:
            raise CpuCapError(f"a {kind} limit, but Configure opened only {sorted(self.caps) or 'none'}")
        applied = cap.set(value or None)  # type: ignore[attr-defined]
        if isinstance(cap, CgroupCap):  # the next sample's throttled time counts from the new cap, not the old
            try:
                self._throttled_ns = cap.throttled_ns()
            except (OSError, ValueError):
                self._throttled_ns = None
        return applied

    def throttled_ms(self) -> float:
        """Milliseconds the agent's cgroup was throttled since the last call (-1 without a cores cap)."""
        cap = self.caps.get("cores")
        if not isinstance(cap, CgroupCap):
            return -1.0
        try:
            now = cap.throttled_ns()
        except (OSError, ValueError):
            return -1.0
        last, self._throttled_ns = self._throttled_ns, now
        return 0.0 if last is None else max(0, now - last) / 1e6

    def close(self) -> None:
        """Lift every cap; never raises."""
        for cap in self.caps.values():
            cap.close()  # type: ignore[attr-defined]
        self.caps = {}
