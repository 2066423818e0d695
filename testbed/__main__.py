"""``python -m testbed``: the CLI."""

from testbed.cli import entry

entry()
