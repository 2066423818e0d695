import json

import pandas as pd
import pytest

from agents.protocol import DEFAULT_TIERS
from testbed.core.errors import ResultsError
from testbed.formats.manifest import BundleRecord, ControllerRecord, FileRecord, RunManifest
from testbed.formats.results import PARTS, RunWriter, load_manifest, load_samples, new_run_id
from testbed.formats.schema import SCHEMA_VERSION, for_tiers, tiers_in, tiers_of

SCHEMA = for_tiers(DEFAULT_TIERS)
ARROW_SCHEMA, COLUMN_NAMES, check_row, docs_table = SCHEMA.arrow, SCHEMA.names, SCHEMA.check_row, SCHEMA.docs_table


def row(i, phase="measure"):
    r = {c: None for c in COLUMN_NAMES}
    r.update({"run_id": "r", "experiment": "e", "policy": "all-cloud", "seq": i, "sample_id": i, "split": "test",
              "phase": phase, "exit_tier": "cloud", "exit_layer": 6, "tier_path": "mobile>edge>cloud", "label": 1,
              "prediction": 1, "correct": True, "confidence": 0.9, "latency_ms": 10.0 + i, "queue_ms": 0.1,
              "t_issue_unix_ns": i, "t_scheduled_unix_ns": i, "latency_scheduled_ms": 10.0 + i,
              "energy_source": "none", "energy_approx": False})
    for h in ("controller_mobile", "mobile_edge", "edge_cloud", "return"):
        r[f"bytes_{h}"] = 8
    return r


def test_every_column_has_a_unit_suffix_or_is_dimensionless():
    for field in ARROW_SCHEMA:
        unit = field.metadata[b"unit"].decode()
        if unit in ("ms", "bytes", "J", "ns"):
            assert {"ms": "_ms", "bytes": "bytes_", "J": "_j", "ns": "_ns"}[unit] in field.name, field.name
    assert "latency_ms" in docs_table()


def test_check_row_catches_missing_unknown_and_nulls():
    r = row(0)
    del r["latency_ms"]
    r["latency_s"] = 1.0
    r["policy"] = None
    r["phase"] = "warm"
    problems = check_row(r)
    assert "missing column latency_ms" in problems and "unknown column latency_s" in problems
    assert "policy is null" in problems and any("phase" in p for p in problems)


def minimal_manifest(run_id: str) -> RunManifest:
    f = FileRecord(path="x.yaml", yaml="", resolved={})
    return RunManifest(schema_version=SCHEMA_VERSION, run_id=run_id, tiers=list(DEFAULT_TIERS),
                       started_at="2026-12-01T00:00:00+00:00",
                       command=["testbed"], experiment=f, inventory=f,
                       bundle=BundleRecord(path="b", name="b", sha256={}, exits={}, model={}, build=""), git={},
                       controller=ControllerRecord(host="h", platform="p", versions={}), cost_model={})


def test_rows_flush_in_parts_and_join_on_close(tmp_path):
    w = RunWriter(tmp_path / "run", DEFAULT_TIERS, flush_rows=4)
    for i in range(10):
        w.append(row(i, "warmup" if i < 2 else "measure"))
    assert len(list((tmp_path / "run" / PARTS).glob("*.parquet"))) == 2  # 8 rows flushed, 2 buffered
    w.write_manifest(minimal_manifest("r").model_copy(update={"status": "complete"}))
    path = w.close()
    df = pd.read_parquet(path)
    assert list(df["seq"]) == list(range(10)) and (df["phase"] == "warmup").sum() == 2
    assert not (tmp_path / "run" / PARTS).exists()
    loaded, complete = load_samples(tmp_path / "run")
    assert complete and len(loaded) == 10
    assert load_manifest(tmp_path / "run").status == "complete"
    import pyarrow.parquet as pq
    assert pq.read_schema(path).metadata[b"testbed.schema_version"] == str(SCHEMA_VERSION).encode()


def test_a_crash_keeps_every_flushed_part(tmp_path):
    w = RunWriter(tmp_path / "run", DEFAULT_TIERS, flush_rows=3)
    for i in range(7):
        w.append(row(i))
    # no close(): the process died here
    df, complete = load_samples(tmp_path / "run")
    assert not complete and list(df["seq"]) == list(range(6))


def test_run_directory_is_never_overwritten(tmp_path):
    RunWriter(tmp_path / "run", DEFAULT_TIERS)
    with pytest.raises(ResultsError, match="never overwritten"):
        RunWriter(tmp_path / "run", DEFAULT_TIERS)


def test_bad_row_is_refused_with_the_problem(tmp_path):
    w = RunWriter(tmp_path / "run", DEFAULT_TIERS)
    bad = row(0)
    bad["exit_tier"] = None
    with pytest.raises(ResultsError, match="exit_tier is null"):
        w.append(bad)


def test_not_a_run_dir(tmp_path):
    with pytest.raises(ResultsError, match="not a run directory"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(ResultsError, match="no row was measured"):
        load_samples(tmp_path)


def test_run_ids_sort_by_time_and_differ():
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)  # one instant: two calls may straddle a second otherwise
    ids = {new_run_id(now) for _ in range(20)}
    assert len(ids) > 1 and all(i.startswith("20261202T010203Z-") for i in ids)
    assert new_run_id(datetime(2026, 12, 2, 1, 2, 4, tzinfo=UTC)) > max(ids)


def test_a_two_tier_schema_has_one_offload_hop_and_records_its_tiers(tmp_path):
    two = for_tiers(("mobile", "cloud"))
    assert two.hops == ("controller_mobile", "mobile_cloud", "return") and two.wire_hops == ("mobile_cloud",)
    assert "bytes_wire_mobile_cloud" in two.names and not [n for n in two.names if "edge" in n]
    assert two.arrow.metadata[b"testbed.tiers"] == b"mobile,cloud"
    r = {c: None for c in two.names} | {k: v for k, v in row(0).items() if k in two.names}
    r |= {"tier_path": "mobile>cloud", "bytes_mobile_cloud": 8, "bytes_controller_mobile": 8, "bytes_return": 8}
    assert two.check_row(r) == []
    assert "unknown column bytes_edge_cloud" in two.check_row(r | {"bytes_edge_cloud": 8})
    w = RunWriter(tmp_path / "run", ("mobile", "cloud"), flush_rows=2)
    for i in range(3):
        w.append(r | {"seq": i})
    w.close()
    df, complete = load_samples(tmp_path / "run")
    assert complete and df.columns.tolist() == two.names and tiers_in(df.columns) == ("mobile", "cloud")
    with pytest.raises(ValueError, match="two or more distinct tiers"):
        for_tiers(("mobile",))


def test_a_schema_3_file_without_tiers_reads_as_the_three_tiers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "old"
    run.mkdir()
    table = pa.Table.from_pylist([row(0)], schema=ARROW_SCHEMA).replace_schema_metadata(
        {"testbed.schema_version": "3"})
    pq.write_table(table, run / "samples.parquet")
    assert tiers_of(pq.read_schema(run / "samples.parquet").metadata) == DEFAULT_TIERS
    df, _ = load_samples(run)
    assert df.columns.tolist() == COLUMN_NAMES and tiers_in(df.columns) == DEFAULT_TIERS


def test_a_running_run_whose_controller_is_gone_is_marked_lost(tmp_path):
    import platform

    from testbed.formats.results import mark_lost

    w = RunWriter(tmp_path / "run", DEFAULT_TIERS, flush_rows=2)
    for i in range(5):
        w.append(row(i))  # 4 flushed, 1 only in memory: the controller "dies" here
    m = minimal_manifest("r")
    m.controller = m.controller.model_copy(update={"host": platform.node(), "pid": 4242, "pid_starttime": "77"})
    w.write_manifest(m)
    assert mark_lost(tmp_path / "run", lambda pid, start: True).status == "running"  # still alive: untouched
    lost = mark_lost(tmp_path / "run", lambda pid, start: False)
    assert lost.status == "lost" and lost.rows == 4 and "pid 4242" in lost.error
    assert load_manifest(tmp_path / "run").status == "lost"
    other = minimal_manifest("r2")
    other.controller = other.controller.model_copy(update={"host": "another-host", "pid": 1})
    w2 = RunWriter(tmp_path / "run2", DEFAULT_TIERS)
    w2.write_manifest(other)
    assert mark_lost(tmp_path / "run2", lambda pid, start: False).status == "running"  # not ours to judge
