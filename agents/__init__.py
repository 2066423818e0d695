"""The device agent: runs one partition of a model and passes samples down the tiers.

Runs on a Raspberry Pi: numpy, onnxruntime, pyzmq, msgpack and psutil only, and
nothing from ``testbed/``.
"""

from agents.protocol import AGENT_VERSION, PROTOCOL_VERSION

__all__ = ["AGENT_VERSION", "PROTOCOL_VERSION"]
