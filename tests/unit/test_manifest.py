"""The run manifest: typed, versioned, and a loader that upgrades what older testbeds wrote."""

import json

import pytest
from test_results import minimal_manifest

from testbed.core.errors import ResultsError
from testbed.formats import manifest
from testbed.formats.manifest import MANIFEST_FORMAT

#: what a run of the testbed before format 2 left while still running (placeholders, every policy key)
FORMAT_1 = {
    "schema_version": 3, "run_id": "20261130T000000Z-abcd", "status": "running", "started_at": "2026-11-30",
    "command": ["testbed", "run"], "experiment": {"path": "e.yaml", "yaml": "name: e", "sha256": "00",
                                                 "resolved": {"name": "e", "policies": [
                                                     {"name": "splitee", "alpha": 0.7, "c": None, "mu": None,
                                                      "label": None}]}},
    "inventory": {"path": "i.yaml", "yaml": "", "resolved": {}},
    "bundle": {"path": "b", "name": "b", "sha256": {}, "exits": {}, "model": {}, "build": ""},
    "git": {"sha": None}, "controller": {"host": "h", "platform": "p", "versions": {}}, "cost_model": {},
    "shaping": {"backend": "pending", "note": "filled in once the devices are deployed and shaped"},
    "energy": {"meters": "filled in when the agents have said Hello"},
}


def test_a_format_1_manifest_is_upgraded_on_load(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(FORMAT_1))
    m = manifest.load(tmp_path)
    assert m.format_version == MANIFEST_FORMAT
    assert m.shaping is None and m.energy is None  # placeholders become "not known yet"
    assert m.experiment.resolved["policies"] == [{"name": "splitee", "alpha": 0.7, "label": None}]


def test_a_manifest_round_trips_and_keeps_keys_it_does_not_know(tmp_path):
    m = minimal_manifest("r").model_copy(update={"status": "failed", "error": "boom"})
    data = json.loads(m.to_json()) | {"future_key": {"x": 1}}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    back = manifest.load(tmp_path)
    assert back.status == "failed" and back.error == "boom" and back.model_extra == {"future_key": {"x": 1}}


def test_a_newer_or_damaged_manifest_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(FORMAT_1 | {"format_version": MANIFEST_FORMAT + 1}))
    with pytest.raises(ResultsError, match="newer than this testbed"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ResultsError, match="not readable JSON"):
        manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "r"}))
    with pytest.raises(ResultsError, match="not a testbed run manifest"):
        manifest.load(tmp_path)


def test_a_status_outside_the_four_is_refused_on_assignment():
    m = minimal_manifest("r")
    with pytest.raises(ValueError):
        m.status = "done"  # type: ignore[assignment]


def test_a_format_2_manifest_gets_the_three_tiers_its_run_had(tmp_path):
    data = json.loads(minimal_manifest("r").to_json())
    del data["tiers"]
    (tmp_path / "manifest.json").write_text(json.dumps(data | {"format_version": 2}))
    m = manifest.load(tmp_path)
    assert m.format_version == MANIFEST_FORMAT == 3 and m.tiers == ["mobile", "edge", "cloud"]
