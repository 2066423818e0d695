"""Routing policies: pure classes, seeded randomness, no I/O, no clock; one module per policy.

See :mod:`testbed.policies.base` for what a policy is and :mod:`testbed.policies.registry` for
how an experiment's entry becomes one. Names, as in experiment files and the ``policy``
column: ``all-mobile``, ``all-edge``, ``all-cloud``, ``random``, ``oracle``, ``early-exit``,
``cartography``, ``splitee``, ``splitee-s``, ``adaptive-resnet`` (:func:`names`).
"""

from testbed.policies.base import ALWAYS, NEVER, Policy, StaticPolicy, at_tier, decide
from testbed.policies.registry import (
    bundle_problems,
    check,
    claim_of,
    context_for,
    keys_of,
    make,
    names,
    paper_cost,
    parse,
    record,
    types,
)

__all__ = ["ALWAYS", "NEVER", "Policy", "StaticPolicy", "at_tier", "bundle_problems", "check", "claim_of",
           "paper_cost", "context_for", "decide", "keys_of", "make", "names", "parse", "record", "types"]
