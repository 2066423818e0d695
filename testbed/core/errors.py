"""One exception hierarchy; the CLI maps each class to an exit code.

Messages say what failed, where (file and YAML path, device, host), the value, and
what to try. Foreign errors (zmq, onnxruntime, torch) are translated once at their
boundary with ``raise ... from``.
"""

from __future__ import annotations


class TestbedError(Exception):
    """Base of every error the testbed raises on purpose."""

    exit_code = 1
    __test__ = False  # not a pytest test class


class ConfigError(TestbedError):
    """An experiment, inventory or spec file is invalid; ``problems`` lists every one."""

    exit_code = 2

    def __init__(self, file: str, problems: list[str]):
        self.file = file
        self.problems = list(problems)
        head = f"{file}: {len(self.problems)} problem(s)"
        super().__init__(head + "\n" + "\n".join(f"  {file}: {p}" for p in self.problems))


class BundleError(TestbedError):
    """A partition bundle is missing, incomplete or fails verification."""

    exit_code = 2


class AgentStartError(TestbedError):
    """An agent did not start, did not say Hello, or could not load its partition."""

    exit_code = 3


class AgentLostError(TestbedError):
    """An agent died or stopped answering during a run."""

    exit_code = 4

    def __init__(self, device: str, why: str, log_tail: str = ""):
        self.device = device
        self.log_tail = log_tail
        tail = f"\nlast lines of its log:\n{log_tail}" if log_tail else ""
        super().__init__(f"agent {device}: {why}{tail}")


class RunProtocolError(TestbedError):
    """An agent spoke a protocol version or message this controller does not accept."""

    exit_code = 5


class ResultsError(TestbedError):
    """A run directory exists, is unreadable, or is not a run."""

    exit_code = 6


class BuildError(TestbedError):
    """Building a partition bundle failed (model, data, export or parity)."""

    exit_code = 7


class DeployError(TestbedError):
    """Reaching, checking, copying to or starting on a device over SSH failed."""

    exit_code = 8


class RouteError(TestbedError):
    """A device address would not route through the links the inventory allows; nothing was sent."""

    exit_code = 9


class EmulationError(TestbedError):
    """Setting up or tearing down the emulated testbed (namespaces, links, sshd, cgroups) failed."""

    exit_code = 10
