"""Run directories: ``results/<experiment>/<run_id>/{samples.parquet, manifest.json, logs/}``.

Rows are written while the run goes, as complete parquet files of ``flush_rows``
rows each under ``samples.parts/``; a crash loses at most the rows not yet flushed.
``close()`` joins the parts into ``samples.parquet``. A run directory is never
overwritten. A run whose parts were never joined still loads (marked incomplete).
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from testbed.core.errors import ResultsError
from testbed.formats import manifest, schema
from testbed.formats.manifest import MANIFEST, RunManifest
from testbed.formats.schema import SCHEMA_VERSION, VERSION_KEY

PARTS = "samples.parts"
SAMPLES = "samples.parquet"


#: free space a run directory needs before any agent starts
MIN_FREE = 64 * 1024 * 1024


def new_run_id(now: datetime | None = None) -> str:
    """``20261123T101500Z-3fa2``: sortable by time, unique by a random suffix."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunWriter:
    """Writes one run directory: rows in flushed parts, and the manifest.

    ``tiers``: the run's tiers in order (its bundle's); they decide the columns.
    """

    def __init__(self, run_dir: Path, tiers: Sequence[str], flush_rows: int = 64, min_free_bytes: int = MIN_FREE,
                 resume: bool = False):
        try:
            run_dir.mkdir(parents=True, exist_ok=resume)
            (run_dir / PARTS).mkdir(exist_ok=resume)
            (run_dir / "logs").mkdir(exist_ok=resume)
            probe = run_dir / ".write-probe"
            probe.write_bytes(b"\0" * 4096)  # a read-only mount refuses even root
            probe.unlink()
        except FileExistsError as e:
            raise ResultsError(f"run directory {run_dir} already exists; a run is never overwritten") from e
        except OSError as e:
            raise ResultsError(f"cannot write the run directory {run_dir}: {e.strerror or e}; give --results a "
                               "writable directory (nothing was started)") from e
        free = shutil.disk_usage(run_dir).free
        if free < min_free_bytes:
            raise ResultsError(f"{run_dir} has {free / 1e6:.1f} MB free; a run needs at least "
                               f"{min_free_bytes / 1e6:.0f} MB there: free some space or give --results another "
                               "disk (nothing was started)")
        self.run_dir = run_dir
        self.schema = schema.for_tiers(tiers)
        self.flush_rows = flush_rows
        self.rows_written = 0
        self.rows_rescued = 0  # rows written outside the run directory because it could not take them
        self._buffer: list[dict[str, Any]] = []
        self._parts = 0
        self._closed = False
        if resume:
            self._parts = _unjoin(run_dir)
            self.rows_written = sum(pq.read_metadata(p).num_rows for p in (run_dir / PARTS).glob("part-*.parquet"))

    @classmethod
    def reopen(cls, run_dir: Path, tiers: Sequence[str], flush_rows: int = 64,
               min_free_bytes: int = MIN_FREE) -> RunWriter:
        """The writer of an existing run directory, to add rows to it (``testbed run --resume``).

        Rows already joined into ``samples.parquet`` go back among the parts, so the next
        :meth:`close` joins the old rows and the new into one file; nothing is rewritten before then.
        """
        return cls(run_dir, tiers, flush_rows, min_free_bytes, resume=True)

    def append(self, row: dict[str, Any]) -> None:
        """Add one row; flushes a part when ``flush_rows`` are buffered."""
        problems = self.schema.check_row(row)
        if problems:
            raise ResultsError(f"row for sample {row.get('sample_id')} does not fit schema v{SCHEMA_VERSION}: "
                               + "; ".join(problems))
        self._buffer.append(row)
        if len(self._buffer) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one complete parquet part."""
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=self.schema.arrow)
        path = self.run_dir / PARTS / f"part-{self._parts:05d}.parquet"
        try:
            pq.write_table(table, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        except OSError as e:  # the rows stay buffered: close() rescues them elsewhere
            path.with_suffix(".tmp").unlink(missing_ok=True)
            raise ResultsError(f"cannot write rows to {path.parent}: {e.strerror or e}; the {len(self._buffer)} "
                               "rows not yet on disk are kept and written elsewhere when the run stops") from e
        self._parts += 1
        self.rows_written += len(self._buffer)
        self._buffer.clear()

    def close(self) -> Path:
        """Flush, join the parts into ``samples.parquet``, remove the parts; idempotent.

        Where the run directory cannot take the last rows (a full disk), they go to
        :meth:`rescue` and the ResultsError names that file.
        """
        if self._closed:
            return self.run_dir / SAMPLES
        try:
            self.flush()
        except ResultsError as e:
            where = self.rescue()
            raise ResultsError(f"{e}; they are in {where}" if where else f"{e}; and no other disk took them") from e
        parts = sorted((self.run_dir / PARTS).glob("part-*.parquet"))
        arrow = self.schema.arrow
        table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else arrow.empty_table()
        tmp = self.run_dir / (SAMPLES + ".tmp")
        try:
            pq.write_table(table.replace_schema_metadata(arrow.metadata), tmp)
        except OSError as e:  # a full disk has no room for the joined copy: the parts are the rows
            tmp.unlink(missing_ok=True)
            raise ResultsError(f"cannot join the rows into {self.run_dir / SAMPLES}: {e.strerror or e}; they stay in "
                               f"{self.run_dir / PARTS}/, which `testbed report` and `testbed run --resume` "
                               "read") from e
        os.replace(tmp, self.run_dir / SAMPLES)
        shutil.rmtree(self.run_dir / PARTS)
        self._closed = True
        return self.run_dir / SAMPLES

    def rescue(self) -> Path | None:
        """Write the buffered rows to the system's temporary directory (another disk, often); its path or None."""
        if not self._buffer:
            return None
        path = Path(tempfile.gettempdir()) / f"testbed-rescued-{self.run_dir.name}-{self._parts:05d}.parquet"
        try:
            pq.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema.arrow), path)
        except OSError:
            return None
        self.rows_rescued = len(self._buffer)
        self._buffer.clear()
        return path

    def write_manifest(self, manifest: RunManifest) -> None:
        """Write ``manifest.json`` atomically (at the start, after each phase, and at the end)."""
        try:
            _atomic_write(self.run_dir / MANIFEST, manifest.to_json())
        except OSError:
            self.run_dir.joinpath(MANIFEST + ".tmp").unlink(missing_ok=True)
            raise

    def rescue_manifest(self, manifest: RunManifest) -> Path | None:
        """The manifest written beside the rescued rows, when the run directory cannot take it; its path or None."""
        path = Path(tempfile.gettempdir()) / f"testbed-rescued-{self.run_dir.name}-manifest.json"
        try:
            path.write_bytes(manifest.to_json())
        except OSError:
            return None
        return path


def _unjoin(run_dir: Path) -> int:
    """Move a joined ``samples.parquet`` back among the parts; the number the next part takes."""
    parts = run_dir / PARTS
    parts.mkdir(exist_ok=True)
    n = max([int(p.stem.split("-")[1]) for p in parts.glob("part-*.parquet")] or [-1]) + 1
    if (run_dir / SAMPLES).is_file():
        os.replace(run_dir / SAMPLES, parts / f"part-{n:05d}.parquet")
        n += 1
    return n


def rescued_files(run_dir: Path) -> tuple[list[Path], Path | None]:
    """The rows and the manifest a run wrote to the temporary directory because its own was full."""
    tmp = Path(tempfile.gettempdir())
    rows = sorted(tmp.glob(f"testbed-rescued-{run_dir.name}-[0-9]*.parquet"))
    man = tmp / f"testbed-rescued-{run_dir.name}-manifest.json"
    return rows, man if man.is_file() else None


def restore_rescued(run_dir: Path) -> list[str]:
    """Put rescued rows back among the run's parts and its rescued manifest in place, once the disk has room.

    Returns what was restored (for the user); nothing when there was nothing, or the disk still
    refuses (then the files stay where they are).
    """
    rows, man = rescued_files(run_dir)
    done = []
    parts = run_dir / PARTS
    for f in rows:
        try:
            n = _unjoin(run_dir)  # already joined: the rescued rows become the next part
            shutil.copyfile(f, parts / f"part-{n:05d}.tmp")
            os.replace(parts / f"part-{n:05d}.tmp", parts / f"part-{n:05d}.parquet")
            f.unlink()
            done.append(f"{pq.read_metadata(parts / f'part-{n:05d}.parquet').num_rows} rescued rows from {f}")
        except OSError:
            return done
    if man is not None:
        try:
            _atomic_write(run_dir / MANIFEST, man.read_bytes())
            man.unlink()
            done.append(f"the final manifest from {man}")
        except OSError:
            pass
    return done


def mark_lost(run_dir: Path, alive: Callable[[int, str | None], bool]) -> RunManifest:
    """The run's manifest; a run still ``running`` whose controller (on this host) is gone is marked ``lost``.

    ``alive(pid, starttime)``: whether that process still runs (the start time tells a reused pid
    apart). The manifest is rewritten with the rows that reached the disk.
    """
    m = load_manifest(run_dir)
    c = m.controller
    if m.status != "running" or c.host != platform.node() or c.pid is None or alive(c.pid, c.pid_starttime):
        return m
    df, _ = load_samples(run_dir)
    m.status, m.rows = "lost", len(df)
    m.error = (f"the controller (pid {c.pid} on {c.host}) ended without finishing the run (killed, or its "
               f"machine restarted); the {len(df)} rows it had flushed are kept")
    _atomic_write(run_dir / MANIFEST, m.to_json())
    return m


def load_manifest(run_dir: Path) -> RunManifest:
    """A run's manifest, upgraded to the current format (:func:`testbed.formats.manifest.load`)."""
    return manifest.load(run_dir)


def load_samples(run_dir: Path) -> tuple[pd.DataFrame, bool]:
    """A run's rows and whether they are complete (False: read from unjoined parts after a crash)."""
    path = run_dir / SAMPLES
    if path.is_file():
        table = pq.read_table(path)
        complete = True
    else:
        parts = sorted((run_dir / PARTS).glob("part-*.parquet"))
        if not parts:
            raise ResultsError(f"{run_dir} has no {SAMPLES} and no flushed parts: no row was measured")
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        complete = False
    meta = table.schema.metadata or {}
    version = meta.get(VERSION_KEY.encode(), b"1").decode()
    if int(version) > SCHEMA_VERSION:
        raise ResultsError(f"{run_dir}: schema v{version} is newer than this testbed (v{SCHEMA_VERSION}); upgrade it")
    df = table.to_pandas()
    names = schema.for_tiers(schema.tiers_of(meta)).names
    return df[[c for c in names if c in df.columns]], complete


def find_runs(results: Path, experiment: str | None = None) -> list[Path]:
    """Run directories under ``results/``, oldest first."""
    pattern = f"{experiment}/*/{MANIFEST}" if experiment else f"*/*/{MANIFEST}"
    return sorted((p.parent for p in results.glob(pattern)), key=lambda p: p.name)


def write_power_timeline(run_dir: Path, device: str, t_unix_ns: list[int] | Any, rails_w: dict[str, Any],
                         source: str) -> Path:
    """``power_<device>.parquet``: controller-clock timestamps and watts per rail."""
    columns = {"t_unix_ns": pa.array(t_unix_ns, pa.int64())}
    columns |= {f"power_w_{rail}": pa.array(values, pa.float64()) for rail, values in rails_w.items()}
    table = pa.table(columns).replace_schema_metadata({"testbed.device": device, "testbed.energy_source": source})
    path = run_dir / f"power_{device}.parquet"
    pq.write_table(table, path)
    return path


def write_thermal(run_dir: Path, device: str, t_unix_ns: Any, temps_c: dict[str, Any], throttled: Any) -> Path:
    """``thermal_<device>.parquet``: controller-clock timestamps, degrees C per zone, throttle flags (-1: none)."""
    columns = {"t_unix_ns": pa.array(t_unix_ns, pa.int64())}
    columns |= {f"temp_c_{zone}": pa.array(values, pa.float64()) for zone, values in temps_c.items()}
    columns["throttled_flags"] = pa.array(throttled, pa.int64())
    path = run_dir / f"thermal_{device}.parquet"
    pq.write_table(pa.table(columns).replace_schema_metadata({"testbed.device": device}), path)
    return path


ENERGY_WINDOWS = "energy_windows.parquet"
_WINDOW_SCHEMA = pa.schema([
    ("device", pa.string()), ("batch", pa.int64()), ("start_unix_ns", pa.int64()), ("end_unix_ns", pa.int64()),
    ("duration_ms", pa.float64()), ("energy_j", pa.float64()), ("energy_net_j", pa.float64()),
    ("energy_approx", pa.bool_()), ("samples", pa.int64()), ("compute_ms_sum", pa.float64()),
    ("run_seqs", pa.list_(pa.int64())),
])


def write_energy_windows(run_dir: Path, windows: list[dict[str, Any]]) -> Path:
    """``energy_windows.parquet``: each batch energy window as the device measured it (see testbed.run.energy)."""
    path = run_dir / ENERGY_WINDOWS
    pq.write_table(pa.Table.from_pylist(windows, schema=_WINDOW_SCHEMA), path)
    return path
