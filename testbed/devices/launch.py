"""Start and stop agent processes. ``LocalLauncher`` runs them on this machine.

Agents run in their own session (process group), so a Ctrl-C in the terminal
reaches the controller, which stops them in order; stop escalates from Stop
message (done by the controller) to SIGTERM, then SIGKILL, and always reaps.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import agents
from testbed.core.config import DeviceSpec
from testbed.core.errors import AgentStartError

#: the directory that holds the agents/ package a device runs (found from the package itself, not this file)
AGENTS_PARENT = Path(agents.__file__).resolve().parent.parent


@dataclass(frozen=True)
class AgentArgs:
    """What every agent is started with."""

    controller: str
    heartbeat_s: float
    liveness: int
    first_contact_s: float = 60.0
    keys: bytes = b""  # the agent's CurveZMQ key file (empty: plain sockets); written 0600, never on argv


class AgentHandle(Protocol):
    """A started agent."""

    device_id: str
    log_path: Path

    def returncode(self) -> int | None:
        """None while running, else the exit status."""
        ...

    def stop(self, timeout_s: float) -> int | None:
        """Make sure it is gone: SIGTERM, wait, SIGKILL, reap. Returns the exit status."""
        ...

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        ...

    @property
    def pid(self) -> int:
        """Process id on its host."""
        ...

    def partition_path(self, file: str) -> str:
        """Where the agent finds bundle file ``file`` (what Configure.partition_path says)."""
        ...

    def fetch_log(self) -> None:
        """Bring the agent's log into the run directory (a no-op where it is already there)."""
        ...


def agent_argv(device: DeviceSpec, args: AgentArgs, python: str, workdir: str, bind: str) -> list[str]:
    """``python -m agents ...`` for one device, the same for every launcher."""
    argv = [python, "-m", "agents", "--controller", args.controller, "--id", device.id,
            "--tier", device.tier, "--bind", bind, "--heartbeat-s", str(args.heartbeat_s),
            "--liveness", str(args.liveness), "--first-contact-s", str(args.first_contact_s), "--workdir", workdir]
    if device.cpus:
        argv += ["--cpus", ",".join(str(c) for c in device.cpus)]
    argv += ["--meter", device.meter.kind]
    if device.meter.command:
        argv += ["--meter-command", shlex.join(device.meter.command)]
    if device.meter.scale is not None:
        argv += ["--meter-scale", str(device.meter.scale)]
    if device.meter.idle_w is not None and device.meter.busy_w is not None:
        argv += ["--idle-w", str(device.meter.idle_w), "--busy-w", str(device.meter.busy_w)]
    return argv


class LocalAgent:
    """An agent process on this machine."""

    def __init__(self, device_id: str, proc: subprocess.Popen, log_path: Path, bundle_root: Path = Path(".")):
        self.device_id = device_id
        self.bundle_root = bundle_root
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        """Process id."""
        return self.proc.pid

    def returncode(self) -> int | None:
        """None while running."""
        return self.proc.poll()

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait, SIGKILL the process group, reap."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout_s)
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def partition_path(self, file: str) -> str:
        """Absolute path of the bundle file (the agent shares this machine's disk)."""
        return str((self.bundle_root / file).resolve())

    def fetch_log(self) -> None:
        """The log is written into the run directory already."""

    def log_tail(self, lines: int = 20) -> str:
        """Last lines of the log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LocalLauncher:
    """Starts ``python -m agents`` as a local process per device."""

    def __init__(self, log_dir: Path, python: str | None = None, bundle_root: Path = Path(".")):
        self.log_dir = log_dir
        self.python = python or sys.executable
        self.bundle_root = bundle_root

    def start(self, device: DeviceSpec, args: AgentArgs) -> LocalAgent:
        """Start one agent; its stdout and stderr go to ``<log_dir>/<id>.log``."""
        log_path = self.log_dir / f"{device.id}.log"
        log_dir = self.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        argv = agent_argv(device, args, device.python or self.python, device.workdir or ".", device.host)
        argv += ["--models", str(self.bundle_root.resolve())]  # it shares this disk: the bundle, nothing else
        if args.keys:  # a private file (0600, mkstemp) the agent deletes once read
            fd, key_path = tempfile.mkstemp(prefix=f"testbed-keys-{device.id}-", suffix=".json")
            with os.fdopen(fd, "wb") as f:
                f.write(args.keys)
            argv += ["--keys", key_path]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(AGENTS_PARENT), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = str(device.threads)
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, start_new_session=True)
        except OSError as e:
            raise AgentStartError(f"cannot start the agent of {device.id} ({device.tier}) with {argv[0]!r}: "
                                  f"{e.strerror or e}; check devices[id={device.id}].python in the inventory") from e
        return LocalAgent(device.id, proc, log_path, self.bundle_root)
