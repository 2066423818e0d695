"""``python -m testbed.cli``: the command line (used to re-run it inside a network namespace)."""

from testbed.cli import entry

entry()
