"""The device-side helpers: real modules that become one ``python -c`` text, runnable on a board's Python."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.devices import helpers

NAMES = sorted(p.stem for p in helpers.HERE.glob("*.py") if p.stem not in ("__init__",))
#: the interpreters of the boards the agent targets (JetPack 5: 3.8; Raspberry Pi OS Bullseye: 3.9), when present
BOARD_PYTHONS = [p for p in (os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3"), shutil.which("python3.8"))
                 if p and Path(p).is_file() and "shims" not in p][:1]


def test_a_helper_inlines_what_it_imports_once_and_puts_the_future_import_first():
    text = helpers.source("preflight")
    lines = text.splitlines()
    assert lines[0] == "from __future__ import annotations"
    assert "from __future__" not in "\n".join(lines[1:])
    assert "from testbed" not in text and "import testbed" not in text  # a device has no testbed package
    assert text.count("def say(") == 1 and text.count("def shaping_facts(") == 1
    compile(text, "preflight", "exec")


def test_an_unknown_helper_is_refused():
    with pytest.raises(ValueError, match="no device helper"):
        helpers.source("nope")


@pytest.mark.parametrize("name", NAMES)
def test_every_helper_compiles(name):
    compile(helpers.source(name), name, "exec")


@pytest.mark.parametrize("python", BOARD_PYTHONS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no Python 3.8 here (pyenv 3.8.18 or python3.8); the boards' oldest interpreter"))])
def test_helpers_run_on_the_oldest_board_python(python, tmp_path):
    for name in NAMES:
        r = subprocess.run([python, "-c", f"compile({helpers.source(name)!r}, {name!r}, 'exec')"],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{name} does not compile on {python}: {r.stderr}"
    (tmp_path / "f").write_bytes(b"abc")
    r = subprocess.run([python, "-c", helpers.source("hashes"), str(tmp_path)], input=json.dumps(["f", "g"]),
                       capture_output=True, text=True)
    got = json.loads(r.stdout.splitlines()[-1])
    assert got == {"f": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "g": None}
    r = subprocess.run([python, "-c", helpers.source("preflight"), str(tmp_path), "[3, 8]", '["json", "nosuchmod"]'],
                       capture_output=True, text=True)
    facts = json.loads(r.stdout.splitlines()[-1])
    assert facts["python"].startswith("3.8") and facts["python_ok"] and facts["workdir_writable"]
    assert "json" in facts["modules"] and facts["missing"][0].startswith("nosuchmod")
    assert "netem" in facts and "htb" in facts


def test_procctl_reports_a_process_that_is_not_ours():
    text = helpers.source("procctl")
    r = subprocess.run([sys.executable, "-c", text, "check", str(os.getpid()), "not-its-start"],
                       capture_output=True, text=True)
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["alive"] and not out["ours"]
