"""``testbed``: the command line, one module per command group. Only this package prints or exits.

Exit codes: 0 ok; 1 other testbed error; 2 config or bundle; 3 agent start;
4 agent lost; 5 protocol; 6 results; 7 build; 8 deploy; 9 route; 10 emulation;
11 preflight; 12 clean left entries; 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys

from testbed import __version__
from testbed.cli import analysis, build, devices, docs, experiment
from testbed.cli.common import err
from testbed.core.errors import TestbedError


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs): every command group adds its own commands."""
    ap = argparse.ArgumentParser(prog="testbed", description="three-tier distributed inference testbed")
    ap.add_argument("--version", action="version", version=f"testbed {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (experiment, analysis, build, devices, docs):
        group.add_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``testbed``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    try:
        devices.maybe_enter_netns(args, argv)
        return int(args.func(args))
    except TestbedError as e:
        err.print(f"error: {e}", highlight=False, markup=False, style="red")
        return e.exit_code
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the rows are saved: more presses change nothing now
        err.print("interrupted; agents stopped, measured rows saved", style="yellow")
        return 130


def entry() -> None:
    """Run the CLI and exit with its code (``python -m testbed``)."""
    sys.exit(main())

