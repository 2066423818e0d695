"""``python -m testbed``: the CLI."""

import sys

from testbed.cli import main

sys.exit(main())
