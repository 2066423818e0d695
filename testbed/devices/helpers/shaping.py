"""Runs on the controller's machine: the shaping facts alone."""

from __future__ import annotations

import json
from typing import Any

from testbed.devices.helpers.prelude import say
from testbed.devices.helpers.shaping_facts import shaping_facts

facts: dict[str, Any] = {}
shaping_facts(facts)
say(json.dumps(facts))
