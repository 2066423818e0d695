"""The README and docs/: the two commands first, short, self-contained, and generated pages in sync with the code."""

import re

import pytest
import yaml

from testbed import reference
from testbed.cli.docs import results_page
from testbed.core.config import Experiment

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```") + 1:lines.index("```", lines.index("```") + 1)]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_refers_outside_the_repository_and_every_link_resolves(page):
    text = page.read_text()
    assert "../shared" not in text, f"{page.name} refers to ../shared, which a clone does not have"
    prose = re.sub(r"`[^`]*`", "", text)  # code spans hold brackets that are not links
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", prose):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which is not there"


def test_the_key_reference_is_generated_from_the_models_and_current():
    assert (ROOT / "docs" / "reference.md").read_text() == reference.render(), "run `make docs`"


def test_every_key_a_user_writes_has_a_description():
    assert reference.undocumented() == []


def test_the_key_reference_lists_nested_keys_with_their_bounds():
    text = reference.render()
    assert "| `shaping.links.<key>.schedule[].at_s` | float | required | >= 0 |" in text
    assert "| `policies[].name` | str | required |" in text
    assert "| `devices[].meter.kind` | str | 'auto' | matches" in text
    assert "| `run.concurrency` | int | 1 | >= 1, <= 64 |" in text


def test_the_results_page_holds_the_schema_table():
    text = (ROOT / "docs" / "results.md").read_text()
    assert results_page(text) == text, "run `make docs`"


def test_the_readme_experiment_example_validates():
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert example is not None
    exp = Experiment.model_validate(yaml.safe_load(example.group(1)))
    assert exp.devices == {"mobile": "mobile-1", "edge": "edge-1", "cloud": "cloud-1"}


def test_cli_help_lists_the_subcommands(capsys):
    from testbed.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("validate", "plan", "run", "report", "partition", "deploy", "preflight", "clean", "emulate", "docs"):
        assert cmd in out
