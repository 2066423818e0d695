"""The agents on the boards' oldest Python (JetPack 5: CPython 3.8, numpy 1.24.4, onnxruntime 1.19.2).

`make test` builds `.venv38` where a Python 3.8 is installed (pyenv or python3.8); without one these
tests are skipped and say why.
"""

import json
import subprocess

import pandas as pd
import pytest
import yaml

from testbed.cli import main

from conftest import ROOT, write_experiment, write_inventory
from loopback.helpers import only_run

PY38 = ROOT / ".venv38" / "bin" / "python"
pytestmark = [pytest.mark.loopback, pytest.mark.skipif(not PY38.exists(), reason=(
    "no .venv38: no Python 3.8 on this machine (pyenv 3.8.x or python3.8); `make test` builds it where there is"))]
MODULES = ["protocol", "runtime", "meters", "netio", "shaper", "facts", "agent", "__main__"]


def test_every_agent_module_imports_on_python_38():
    code = "; ".join(f"import agents.{m}" for m in MODULES) + "; import sys; print(sys.version_info[:2])"
    r = subprocess.run([str(PY38), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(3, 8)"


def test_a_loopback_run_whose_agents_use_python_38_writes_its_rows(tiny_bundle, tmp_path):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_bundle.root,
                           [{"name": "all-cloud"}, {"name": "early-exit", "thresholds": {"mobile": 0.8, "edge": 0.8}}],
                           count=20, warmup=1, name="py38")
    inv = write_inventory(tmp_path / "inv.yaml")
    doc = yaml.safe_load(inv.read_text())
    for dev in doc["devices"]:
        dev["python"] = str(PY38)
    inv.write_text(yaml.safe_dump(doc))
    assert main(["run", str(exp), "--inventory", str(inv), "--results", str(tmp_path / "results"), "-q"]) == 0
    run_dir = only_run(tmp_path / "results")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == 42
    assert {a["facts"]["python"][:3] for a in manifest["agents"].values()} == {"3.8"}
    df = pd.read_parquet(run_dir / "samples.parquet")
    cloud = df[(df.policy == "all-cloud") & (df.phase == "measure")].set_index("sample_id")
    table = tiny_bundle.exits("test").set_index("sample_id")
    assert (cloud.prediction == table.loc[cloud.index, "prediction_cloud"]).all()  # same answers as on 3.11
