"""``testbed run --resume``: a stopped run goes on in its directory, issuing exactly the samples without a row."""

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testbed.cli import main
from testbed.core.config import load_experiment, load_inventory
from testbed.formats.results import load_samples
from testbed.run import resume as resuming
from testbed.run.controller import Controller

from conftest import write_experiment, write_inventory
from loopback.helpers import only_run

pytestmark = pytest.mark.loopback
POLICIES = [{"name": "splitee-s", "alpha": 0.6}, {"name": "random", "shares": {"mobile": 0.4, "edge": 0.3,
                                                                               "cloud": 0.3}}]
COUNT = 30  # per policy, no warmup: seq 0..59


class Stop(KeyboardInterrupt):
    pass


def _run(tmp_path, bundle, results, on_progress=lambda _: None, resume=None, concurrency=1):
    exp_path = tmp_path / "exp.yaml"
    if not exp_path.exists():
        write_experiment(exp_path, bundle.root, POLICIES, count=COUNT, warmup=0, seed=7,
                         run={"concurrency": concurrency, "flush_rows": 4})
        write_inventory(tmp_path / "inv.yaml")
    inv_path = tmp_path / "inv.yaml"
    ctrl = Controller(load_experiment(exp_path), exp_path, load_inventory(inv_path), inv_path, bundle, results,
                      on_progress=on_progress, resume=resume)
    return ctrl.run()


def _drop(run_dir, seqs):
    """Take rows off the disk as a crash would have lost them: the file keeps the others."""
    path = run_dir / "samples.parquet"
    table = pq.read_table(path)
    keep = pa.compute.invert(pa.compute.is_in(table["seq"], pa.array(sorted(seqs))))
    pq.write_table(table.filter(keep), path)


def test_an_interrupted_run_resumes_to_what_an_uninterrupted_run_writes(tiny_bundle, tmp_path):
    whole = _run(tmp_path, tiny_bundle, tmp_path / "whole")
    ref = pd.read_parquet(whole.run_dir / "samples.parquet").set_index("seq")

    def stop(pr):
        if pr.policy == "random" and pr.done == 10:
            raise Stop()

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_bundle, tmp_path / "r", stop)
    run_dir = only_run(tmp_path / "r")
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    assert main(["report", str(run_dir), "--out", str(tmp_path / "page")]) == 0  # a stopped run reports, and says so
    page = (tmp_path / "page" / "index.html").read_text()
    assert "<th>status</th><td>interrupted</td>" in page and "interrupted by the user" in page
    _drop(run_dir, {3, 17, 31})  # gaps inside the rows: resume goes by seq, not by position
    before, _ = load_samples(run_dir)
    missing = set(range(2 * COUNT)) - set(before["seq"])
    assert {3, 17, 31} <= missing and len(missing) >= 3 + 20

    done = _run(tmp_path, tiny_bundle, tmp_path / "r", resume=resuming.load(run_dir))
    assert done.run_dir == run_dir and done.status == "complete"
    df = pd.read_parquet(run_dir / "samples.parquet")
    assert sorted(df["seq"]) == list(range(2 * COUNT))  # every sample once: none lost, none twice
    started = json.loads((run_dir / "manifest.json").read_text())["started_at"]
    new = df[df["t_issue_unix_ns"] >= pd.Timestamp(started).value]
    assert set(new["seq"]) == missing  # exactly the samples without a row were issued
    df = df.set_index("seq").sort_index()
    # the bandit learned from the replayed rows, and the random draws went on where they were
    assert (df["policy_choice"] == ref["policy_choice"]).all()
    assert (df["exit_tier"] == ref["exit_tier"]).all() and (df["sample_id"] == ref["sample_id"]).all()
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "complete" and m["rows"] == 2 * COUNT
    assert [a["status"] for a in m["attempts"]] == ["interrupted"] and m["attempts"][0]["rows"] == len(before) + 3
    assert m["resumed"]["rows_replayed"] == len(before) and m["resumed"]["rows_issued"] == len(missing)
    assert m["resumed"]["choices_differing"] == 0  # one in flight: the replay is the run as it went
    whole_rec = json.loads((whole.run_dir / "manifest.json").read_text())["policies"]["splitee-s"]
    assert m["policies"]["splitee-s"]["pulls"] == whole_rec["pulls"]


def test_resume_refuses_a_complete_run_and_changed_inputs(tiny_bundle, tmp_path, capsys):
    whole = _run(tmp_path, tiny_bundle, tmp_path / "whole")
    assert main(["run", "--resume", str(whole.run_dir), "-q"]) == 6
    assert "nothing to resume" in capsys.readouterr().err
    m = json.loads((whole.run_dir / "manifest.json").read_text())
    m["status"] = "interrupted"
    (whole.run_dir / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "exp.yaml").write_text((tmp_path / "exp.yaml").read_text() + "\n# edited\n")
    assert main(["run", "--resume", str(whole.run_dir), "-q"]) == 6
    err = capsys.readouterr().err
    assert "exp.yaml is not what the run started with" in err and "restore it" in err
    assert main(["run", "--resume", str(tmp_path / "nowhere"), "-q"]) == 6
    assert "no run" in capsys.readouterr().err


def test_with_many_in_flight_the_resumed_run_has_every_sample_once(tiny_bundle, tmp_path):
    def stop(pr):
        if pr.policy == "splitee-s" and pr.done == 17:
            raise Stop()

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_bundle, tmp_path / "r", stop, concurrency=6)
    run_dir = only_run(tmp_path / "r")
    before, _ = load_samples(run_dir)
    done = _run(tmp_path, tiny_bundle, tmp_path / "r", resume=resuming.load(run_dir))
    df = pd.read_parquet(done.run_dir / "samples.parquet")
    assert done.status == "complete" and sorted(df["seq"]) == list(range(2 * COUNT))
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["resumed"]["rows_replayed"] == len(before) and m["rows"] == 2 * COUNT
    # answers completed out of order: the stamps put each replayed observation where it happened
    assert m["resumed"]["choices_differing"] == 0 and m["resumed"]["feedback_unusable"] == 0
