"""Every malformed file in tests/data/bad_configs is refused with the error text its ``# expect:`` lines give.

Files named ``exp-*`` are experiments, ``inv-*`` inventories, each loaded alone; ``full-*`` are experiments
checked as ``testbed validate`` checks them, against the bundle (here the tiny test bundle) and the shipped
inventory. Each error must also name the file.
"""

from pathlib import Path

import pytest

from testbed.cli.common import load_all
from testbed.core.config import load_experiment, load_inventory
from testbed.core.errors import ConfigError

from conftest import ROOT

BAD = sorted((ROOT / "tests" / "data" / "bad_configs").glob("*.yaml"))


def _expected(path: Path) -> list[str]:
    return [line[len(b"# expect: "):].decode().strip() for line in path.read_bytes().splitlines()
            if line.startswith(b"# expect: ")]


def _against(path: Path, bundle: Path, tmp_path: Path) -> Path:
    """A copy of the experiment that names ``bundle``."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace("partitions/minilm-sentiment", str(bundle)))
    return copy


def test_there_are_at_least_thirty():
    assert len(BAD) >= 30


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_each_bad_file_gets_its_located_error(path, tiny_bundle, tmp_path):
    expected = _expected(path)
    assert expected, f"{path.name} says no # expect: line"
    if path.name.startswith("full-"):
        path = _against(path, tiny_bundle.root, tmp_path)
        with pytest.raises(ConfigError) as e:
            load_all(path, ROOT / "inventory.yaml")
    else:
        load = load_experiment if path.name.startswith("exp-") else load_inventory
        with pytest.raises(ConfigError) as e:
            load(path)
    text = " ".join(str(e.value).split())
    assert str(path) in text
    for want in expected:
        assert want in text, f"{path.name}: {want!r} not in {text!r}"
