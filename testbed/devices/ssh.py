"""SSH to devices through paramiko: key auth only, host keys verified against known_hosts.

An unknown host is refused with its fingerprint and the way to trust it
(``--trust-new-hosts``, which appends it to the known_hosts file); a changed key is
refused with the way to remove the stale entry. Every command runs with its exit
status checked; files move over SFTP, written to ``<name>.part`` and renamed into
place so a device never sees half a file. paramiko errors become ``DeployError``
here, once, naming the device, host and port.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from testbed.core.errors import DeployError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass(frozen=True)
class SshTarget:
    """How to reach one device over SSH (also kept in the ownership record, so `clean` can come back)."""

    device: str
    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None

    @property
    def where(self) -> str:
        """``user@host:port`` for messages."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def known_hosts_path(self) -> Path:
        """The known_hosts file host keys are checked against."""
        return Path(os.path.expanduser(self.known_hosts or DEFAULT_KNOWN_HOSTS))

    @property
    def host_key_name(self) -> str:
        """The name of this host in known_hosts (OpenSSH's ``[host]:port`` off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def to_dict(self) -> dict[str, object]:
        """JSON-able form for the ownership record."""
        return {"device": self.device, "host": self.host, "port": self.port, "user": self.user,
                "key_file": self.key_file, "known_hosts": self.known_hosts}


@dataclass(frozen=True)
class CmdResult:
    """A finished remote command."""

    rc: int
    out: str
    err: str


class Watch(Protocol):
    """A long-running command on a device, checked without a round trip."""

    def finished(self) -> bool:
        """True once the command has exited (or its connection is gone)."""
        ...

    def output(self) -> str:
        """Its stdout (complete once finished)."""
        ...

    def output_so_far(self) -> str:
        """What it has printed up to now, without waiting."""
        ...

    def close(self) -> None:
        """Stop watching."""
        ...


class _ChannelWatch:
    """A paramiko channel running one command."""

    def __init__(self, channel: paramiko.Channel):
        self.channel = channel
        self._out = b""

    def finished(self) -> bool:
        """Exit status arrived, or the transport is closed."""
        while self.channel.recv_ready():
            self._out += self.channel.recv(65536)
        return self.channel.exit_status_ready() or self.channel.closed or not self.channel.get_transport().is_active()

    def output(self) -> str:
        """What it printed so far."""
        while self.channel.recv_ready():
            self._out += self.channel.recv(65536)
        return self._out.decode(errors="replace")

    output_so_far = output

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


class _ProcWatch:
    """A local process running one command."""

    def __init__(self, argv: list[str]):
        import subprocess
        import threading

        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.append(line)

    def finished(self) -> bool:
        """It exited and its output is read."""
        if self.proc.poll() is None:
            return False
        self._reader.join(5)
        return True

    def output(self) -> str:
        """Its stdout so far."""
        return "".join(self._out)

    output_so_far = output

    def close(self) -> None:
        """Kill it if still running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Remote(Protocol):
    """What deploy, shaping and clean need from a device connection (real: :class:`SshRemote`)."""

    target: SshTarget

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 60.0,
            stdin: bytes | None = None) -> CmdResult:
        """Run a command (argv list: quoted for the remote shell); raise on non-zero status when ``check``."""
        ...

    def makedirs(self, remote_dir: str) -> list[str]:
        """Create a directory and its parents; returns the ones created."""
        ...

    def exchange(self, argv: list[str], rounds: int) -> list[tuple[int, int, int]]:
        """Start ``argv``, send it ``rounds`` lines one at a time; (sent ns, its answer as int, received ns)."""
        ...

    def watch(self, argv: list[str]) -> Watch:
        """Start a long-running command; check it later without a round trip."""
        ...

    def put(self, local: Path, remote: str) -> None:
        """Copy a file to the device atomically (``remote`` absolute)."""
        ...

    def put_secret(self, data: bytes, remote: str) -> None:
        """Write ``data`` to ``remote`` readable by the device user only (0600 before a byte is written)."""
        ...

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the device."""
        ...

    def close(self) -> None:
        """Close the connection; idempotent."""
        ...


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (``SHA256:...``, as ``ssh-keygen -lf`` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_line(name: str, key: paramiko.PKey) -> str:
    """The known_hosts line that trusts ``key`` for host ``name``."""
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def add_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append a host key to a known_hosts file, creating it (mode 600) and its directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(known_hosts_line(name, key))


class UnknownHostPolicy(paramiko.MissingHostKeyPolicy):
    """Refuses an unknown host key (naming its fingerprint), or with ``trust_new`` records it."""

    def __init__(self, target: SshTarget, trust_new: bool):
        self.target = target
        self.trust_new = trust_new
        self.recorded: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        """Paramiko's hook for a host key that is not in known_hosts."""
        t = self.target
        if not self.trust_new:
            raise DeployError(
                f"device {t.device}: host {t.host_key_name} is not in {t.known_hosts_path} (its {key.get_name()} "
                f"key has fingerprint {fingerprint(key)}). Check that fingerprint on the device "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then trust it: rerun with --trust-new-hosts, or "
                f"ssh-keyscan -p {t.port} {t.host} >> {t.known_hosts_path}")
        add_known_host(t.known_hosts_path, t.host_key_name, key)
        client.get_host_keys().add(t.host_key_name, key.get_name(), key)
        self.recorded = fingerprint(key)


class SshRemote:
    """A paramiko connection to one device."""

    def __init__(self, target: SshTarget, trust_new_hosts: bool = False, timeout_s: float = 10.0):
        self.target = target
        self.policy = UnknownHostPolicy(target, trust_new_hosts)
        self._client = paramiko.SSHClient()
        self._sftp: paramiko.SFTPClient | None = None
        kh = target.known_hosts_path
        t = target
        try:
            if kh.is_file():
                self._client.load_system_host_keys(str(kh))
            self._client.set_missing_host_key_policy(self.policy)
            key_file = os.path.expanduser(t.key_file) if t.key_file else None
            self._client.connect(t.host, port=t.port, username=t.user, key_filename=key_file,
                                 look_for_keys=key_file is None, allow_agent=key_file is None, timeout=timeout_s,
                                 banner_timeout=timeout_s, auth_timeout=timeout_s)
        except DeployError:
            self._client.close()
            raise
        except paramiko.BadHostKeyException as e:
            self._client.close()
            raise DeployError(
                f"device {t.device}: the host key of {t.host_key_name} CHANGED (now {fingerprint(e.key)}, "
                f"{kh} has {fingerprint(e.expected_key)}). If the device was reinstalled, remove the old entry "
                f"(ssh-keygen -f {kh} -R '{t.host_key_name}') and connect again; otherwise do not connect") from e
        except paramiko.AuthenticationException as e:
            self._client.close()
            raise DeployError(f"device {t.device}: {t.where} refused key authentication with "
                              f"{t.key_file or 'the default keys'} ({e}); put the public key in the device's "
                              "authorized_keys or fix devices[].key_file / user in the inventory") from e
        except (TimeoutError, OSError, paramiko.SSHException) as e:
            self._client.close()
            raise DeployError(f"device {t.device}: cannot reach {t.where} over SSH ({e}); check the device is up, "
                              "sshd runs, and devices[].host/port in the inventory") from e

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 60.0,
            stdin: bytes | None = None) -> CmdResult:
        """Run one command; its stdout and stderr are read in full."""
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        try:
            chan_in, chan_out, chan_err = self._client.exec_command(line, timeout=timeout)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            rc = chan_out.channel.recv_exit_status()
        except (TimeoutError, OSError, paramiko.SSHException) as e:
            raise DeployError(f"device {self.target.device}: running `{line[:200]}` on {self.target.where} "
                              f"failed: {e}") from e
        if check and rc != 0:
            raise DeployError(f"device {self.target.device}: `{line[:200]}` exited with status {rc} on "
                              f"{self.target.where}: {(err or out).strip()[-800:]}")
        return CmdResult(rc, out, err)

    def exchange(self, argv: list[str], rounds: int) -> list[tuple[int, int, int]]:
        """Line-by-line exchange with one remote process (the clock check)."""
        import time

        out = []
        try:
            chan_in, chan_out, _ = self._client.exec_command(shlex.join(argv), timeout=30)
            for _ in range(rounds):
                t0 = time.time_ns()
                chan_in.write("x\n")
                chan_in.flush()
                line = chan_out.readline()
                t1 = time.time_ns()
                out.append((t0, int(line.strip()), t1))
            chan_in.channel.shutdown_write()
            chan_out.channel.recv_exit_status()
        except (OSError, ValueError, paramiko.SSHException) as e:
            raise DeployError(f"device {self.target.device}: the clock exchange with {self.target.where} failed "
                              f"({e})") from e
        return out

    def watch(self, argv: list[str]) -> Watch:
        """Run ``argv`` on its own channel."""
        try:
            transport = self._client.get_transport()
            assert transport is not None
            channel = transport.open_session()
            channel.exec_command(shlex.join(argv))
        except (OSError, paramiko.SSHException, AssertionError) as e:
            raise DeployError(f"device {self.target.device}: cannot start a watcher on {self.target.where} "
                              f"({e})") from e
        return _ChannelWatch(channel)

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
        return self._sftp

    def makedirs(self, remote_dir: str) -> list[str]:
        """Create a directory and its parents; returns the ones this call created (outermost first)."""
        sftp = self._sftp_client()
        missing: list[str] = []
        d = remote_dir.rstrip("/")
        while d and d != "/":
            try:
                if stat.S_ISDIR(sftp.stat(d).st_mode or 0):
                    break
                raise DeployError(f"device {self.target.device}: {d} exists and is not a directory")
            except FileNotFoundError:
                missing.append(d)
                d = os.path.dirname(d)
        for m in reversed(missing):
            sftp.mkdir(m)
        return list(reversed(missing))

    def put(self, local: Path, remote: str) -> None:
        """SFTP to ``remote.part``, then rename over ``remote``."""
        sftp = self._sftp_client()
        part = remote + ".part"
        try:
            sftp.put(str(local), part)
            sftp.posix_rename(part, remote)
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"device {self.target.device}: cannot copy {local} to {self.target.where}:{remote} "
                              f"({e}); check the workdir's disk space and permissions") from e

    def put_secret(self, data: bytes, remote: str) -> None:
        """SFTP ``data`` into ``remote.part`` made 0600 first, then rename over ``remote``."""
        sftp = self._sftp_client()
        part = remote + ".part"
        try:
            with sftp.open(part, "wb") as f:
                sftp.chmod(part, 0o600)
                f.write(data)
            sftp.posix_rename(part, remote)
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"device {self.target.device}: cannot write {self.target.where}:{remote} ({e})") from e

    def get(self, remote: str, local: Path) -> None:
        """SFTP a file back."""
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sftp_client().get(remote, str(local))
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"device {self.target.device}: cannot fetch {self.target.where}:{remote} ({e})") from e

    def close(self) -> None:
        """Close SFTP and SSH."""
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self._client.close()


class LocalRemote:
    """The :class:`Remote` interface on this machine (local devices in preflight, and tests)."""

    def __init__(self, device: str):
        self.target = SshTarget(device, "local", 0)

    def run(self, cmd: str | list[str], *, check: bool = True, timeout: float = 60.0,
            stdin: bytes | None = None) -> CmdResult:
        """Run through ``sh -c`` here."""
        import subprocess

        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        try:
            done = subprocess.run(["sh", "-c", line], input=stdin, capture_output=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise DeployError(f"device {self.target.device}: `{line[:200]}` failed here: {e}") from e
        res = CmdResult(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))
        if check and res.rc != 0:
            raise DeployError(f"device {self.target.device}: `{line[:200]}` exited with status {res.rc}: "
                              f"{(res.err or res.out).strip()[-800:]}")
        return res

    def exchange(self, argv: list[str], rounds: int) -> list[tuple[int, int, int]]:
        """Line-by-line exchange with a local process."""
        import subprocess
        import time

        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        out = []
        try:
            for _ in range(rounds):
                t0 = time.time_ns()
                proc.stdin.write("x\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                out.append((t0, int(line.strip()), time.time_ns()))
        finally:
            proc.stdin.close()
            proc.wait(10)
        return out

    def watch(self, argv: list[str]) -> Watch:
        """Run ``argv`` as a local process."""
        return _ProcWatch(argv)

    def makedirs(self, remote_dir: str) -> list[str]:
        """Create a directory and its parents; returns the ones created."""
        missing = []
        d = Path(remote_dir)
        while not d.exists():
            missing.append(str(d))
            d = d.parent
        Path(remote_dir).mkdir(parents=True, exist_ok=True)
        return list(reversed(missing))

    def put(self, local: Path, remote: str) -> None:
        """Copy, then rename into place."""
        import shutil

        part = remote + ".part"
        shutil.copyfile(local, part)
        os.replace(part, remote)

    def put_secret(self, data: bytes, remote: str) -> None:
        """Write ``data`` into a 0600 file, then rename into place."""
        part = remote + ".part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(part, remote)

    def get(self, remote: str, local: Path) -> None:
        """Copy back."""
        import shutil

        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)

    def close(self) -> None:
        """Nothing to close."""
