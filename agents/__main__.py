"""``python -m agents``: start a device agent."""

import sys

from agents.agent import main

if __name__ == "__main__":
    sys.exit(main())
