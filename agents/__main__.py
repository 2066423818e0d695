"""``python -m agents``: start a device agent; ``python -m agents meter``: check this board's energy meter."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["meter"]:
        from agents.metercheck import main as meter_main

        sys.exit(meter_main(sys.argv[2:]))
    from agents.agent import main

    sys.exit(main())
