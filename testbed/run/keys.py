"""Per-run CurveZMQ keys: one pair for the controller and one per agent, made fresh for every run.

Each agent's file (its own pair, the controller's public key, every public key of the run) goes
to its device readable by its user only (over SFTP, or a private temporary file for a local
agent) and is handed to the agent by path; the agent deletes it once read
(``agents/security.py``). Secret keys are never on a command line, in the results or in a log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import zmq


@dataclass
class RunKeys:
    """The run's key pairs (z85 text): the controller's and each device's."""

    controller_public: str
    controller_secret: str
    devices: dict[str, tuple[str, str]] = field(default_factory=dict)  # device id -> (public, secret)

    @classmethod
    def create(cls, device_ids: list[str]) -> RunKeys:
        """Fresh pairs for the controller and every device."""
        pub, sec = zmq.curve_keypair()
        keys = cls(pub.decode(), sec.decode())
        for d in device_ids:
            p, s = zmq.curve_keypair()
            keys.devices[d] = (p.decode(), s.decode())
        return keys

    def public(self, device_id: str) -> str:
        """A device's public key."""
        return self.devices[device_id][0]

    @cached_property
    def _by_public(self) -> dict[str, str]:
        return {p: d for d, (p, _) in self.devices.items()}

    def device_of(self, public: str) -> str | None:
        """The device whose public key this is (None: not one of the run's); asked of every control message."""
        return self._by_public.get(public)

    def agent_file(self, device_id: str) -> bytes:
        """What the device's key file holds (JSON)."""
        pub, sec = self.devices[device_id]
        peers = [self.controller_public, *(p for p, _ in self.devices.values())]
        return json.dumps({"public": pub, "secret": sec, "controller": self.controller_public,
                           "peers": peers}).encode()
