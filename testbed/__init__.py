"""testbed: the controller side of a three-tier inference testbed.

Config, CLI, bundle building, policies, controller, results and report live here;
the device agent lives in ``agents/`` and is imported only through ``agents.protocol``.
"""

__version__ = "0.1.0"
