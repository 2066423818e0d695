from testbed.formats.schema import docs_table

from conftest import ROOT


def test_readme_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```") + 1:lines.index("```", lines.index("```") + 1)]
    assert [line.split()[:2] for line in block] == [["make", "demo"], ["make", "test"]]


def test_readme_schema_table_matches_the_registry():
    assert docs_table() in (ROOT / "README.md").read_text()


def test_cli_help_lists_the_subcommands(capsys):
    import pytest

    from testbed.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("validate", "plan", "run", "report", "partition", "deploy", "preflight", "clean", "emulate"):
        assert cmd in out
