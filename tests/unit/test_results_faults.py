"""A results directory that cannot take a run: refused before anything starts; a disk that fills: rows rescued."""

import os
import subprocess
import tempfile

import pandas as pd
import pytest
from test_results import row

from agents.protocol import DEFAULT_TIERS
from testbed.core.errors import ResultsError
from testbed.formats.results import RunWriter, load_samples, restore_rescued


@pytest.fixture
def mount(tmp_path):
    """Mount a tmpfs with the given options (root can write where modes say no; a read-only mount stops even root)."""
    mounted = []

    def make(options):
        where = tmp_path / f"m{len(mounted)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_read_only_results_directory_is_refused_before_anything_starts(mount):
    ro = mount("ro,size=1m")
    with pytest.raises(ResultsError, match=r"cannot write the run directory .*: Read-only file system; give --results"):
        RunWriter(ro / "exp" / "run1", DEFAULT_TIERS)


def test_a_nearly_full_disk_is_refused_before_anything_starts(mount):
    small = mount("size=1m")
    with pytest.raises(ResultsError, match=r"MB free; a run needs at least 67 MB there"):
        RunWriter(small / "run1", DEFAULT_TIERS)


def test_a_disk_that_fills_mid_run_loses_no_row(mount):
    small = mount("size=256k")
    w = RunWriter(small / "run1", DEFAULT_TIERS, flush_rows=50, min_free_bytes=0)
    written = 0
    with pytest.raises(ResultsError, match="rows not yet on disk are kept") as e:
        for i in range(100_000):
            w.append(row(i))
            written += 1
    assert "No space left on device" in str(e.value)
    with pytest.raises(ResultsError, match="they are in") as e:
        w.close()
    rescued = str(e.value).rsplit("they are in ", 1)[1]
    assert rescued.startswith(tempfile.gettempdir())
    on_disk = sum(len(pd.read_parquet(p)) for p in (small / "run1" / "samples.parts").glob("part-*.parquet"))
    assert on_disk == w.rows_written and w.rows_rescued == len(pd.read_parquet(rescued))
    assert on_disk + w.rows_rescued == written + 1  # every appended row, the one that hit the full disk too
    # once the disk has room, the rescued rows go back among the run's parts (report, clean and --resume do it)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
    restored = restore_rescued(small / "run1")
    assert len(restored) == 1 and f"{w.rows_rescued} rescued rows" in restored[0] and not os.path.exists(rescued)
    df, complete = load_samples(small / "run1")
    assert not complete and len(df) == written + 1 and df["seq"].is_unique


def test_rows_are_buffered_not_lost_when_a_flush_fails(tmp_path):
    w = RunWriter(tmp_path / "run", DEFAULT_TIERS, flush_rows=100, min_free_bytes=0)
    for i in range(3):
        w.append(row(i))
    (tmp_path / "run" / "samples.parts").rename(tmp_path / "moved")  # the parts folder vanishes
    with pytest.raises(ResultsError):
        w.flush()
    rescued = w.rescue()
    assert rescued is not None and w.rows_rescued == 3 and len(pd.read_parquet(rescued)) == 3
    os.remove(rescued)
