"""A one-machine testbed of real hosts: network namespaces, veth links, an sshd per device, CPU caps.

``up`` creates one namespace per tier (mobile, edge and cloud unless told other tiers, e.g.
two: mobile and cloud) and one for the controller, a point-to-point veth link for every
pair that talks (controller to each device, each tier to the next: mobile-edge, edge-cloud) on
addresses of the benchmarking range 198.18.0.0/15 (RFC 2544), an sshd in each device
namespace with its own host key and an authorised key made for the emulation, a CPU cap
per tier (cgroups: a mobile tier much slower than the cloud tier), and an inventory of it
all. No namespace has a default route, so nothing sent inside the emulation can leave the
machine; the controller runs in its own namespace (the CLI enters it) and checks every
device address routes through these links before it connects. ``down`` removes exactly what
``state.json`` says ``up`` made, and can run any number of times.

The commands are argv lists built by pure functions (:func:`link_plan`), so they are
tested as golden lists; :class:`Emulation` runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.protocol import DEFAULT_TIERS
from testbed.core.errors import EmulationError

DEFAULT_STATE = Path("/tmp/testbed-emulate")
DEFAULT_PREFIX = "tb"
DEFAULT_SUBNET = "198.18.0"  # a /24 of 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks
DEFAULT_CPU = {"mobile": 0.25, "edge": 0.5, "cloud": 1.0}  # cores; a tier not named here gets 1
CONTROLLER = "ctl"
SSHD = "/usr/sbin/sshd"


def iface(peer: str) -> str:
    """The interface, inside a namespace, that leads to ``peer``."""
    return f"to-{peer}"


def netns_name(prefix: str, node: str) -> str:
    """The namespace of a node (a tier or ``ctl``)."""
    return f"{prefix}-{node}"


@dataclass(frozen=True)
class Link:
    """One veth pair: ``a`` and ``b`` nodes with their addresses on a /30."""

    a: str
    b: str
    addr_a: str
    addr_b: str


def nodes(tiers: tuple[str, ...] = DEFAULT_TIERS, counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """The emulated devices as (node, tier): a tier's name for one device, ``<tier><i>`` for several."""
    out = []
    for t in tiers:
        n = (counts or {}).get(t, 1)
        out += [(t, t)] if n == 1 else [(f"{t}{i}", t) for i in range(1, n + 1)]
    return out


def pairs(tiers: tuple[str, ...] = DEFAULT_TIERS, counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """The nodes that talk: the controller with every device, then every device of a tier with every one of the next.

    Each pair has a link of its own, so any assignment of devices to the next tier's runs on links
    no other pair shares.
    """
    ns = nodes(tiers, counts)
    by_tier = {t: [n for n, x in ns if x == t] for t in tiers}
    return [(CONTROLLER, n) for n, _ in ns] + [(a, b) for t, u in zip(tiers, tiers[1:], strict=False)
                                                for a in by_tier[t] for b in by_tier[u]]


#: /30 links in the emulation's /24
MAX_LINKS = 63


def links(subnet: str = DEFAULT_SUBNET, tiers: tuple[str, ...] = DEFAULT_TIERS,
          counts: dict[str, int] | None = None) -> list[Link]:
    """The emulation's links: the k-th pair gets ``subnet.(4k+1)`` and ``.(4k+2)`` on a /30."""
    ps = pairs(tiers, counts)
    if len(ps) > MAX_LINKS:
        raise EmulationError(f"{len(ps)} links (the controller to each device, each device to each of the next tier) "
                             f"do not fit the /24 {subnet}.0 ({MAX_LINKS} at most): emulate fewer devices")
    return [Link(a, b, f"{subnet}.{4 * k + 1}", f"{subnet}.{4 * k + 2}") for k, (a, b) in enumerate(ps)]


def upstream(tiers: tuple[str, ...], counts: dict[str, int] | None, node: str) -> list[str]:
    """The nodes a device takes Work from: the controller for the first tier, else every device of the tier before."""
    ns = nodes(tiers, counts)
    tier = dict(ns)[node]
    i = tiers.index(tier)
    return [CONTROLLER] if i == 0 else [n for n, t in ns if t == tiers[i - 1]]


def link_plan(prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
              tiers: tuple[str, ...] = DEFAULT_TIERS, counts: dict[str, int] | None = None) -> list[list[str]]:
    """Commands that create the namespaces and links (argv lists, in order).

    A device with several upstream devices advertises its address on the link to the first; each
    other one gets a /32 route to that address over its own link to the device.
    """
    names = [CONTROLLER, *(n for n, _ in nodes(tiers, counts))]
    cmds = [["ip", "netns", "add", netns_name(prefix, n)] for n in names]
    cmds += [["ip", "-n", netns_name(prefix, n), "link", "set", "lo", "up"] for n in names]
    for ln in links(subnet, tiers, counts):
        na, nb = netns_name(prefix, ln.a), netns_name(prefix, ln.b)
        cmds.append(["ip", "link", "add", iface(ln.b), "netns", na, "type", "veth", "peer", "name", iface(ln.a),
                     "netns", nb])
        cmds += [["ip", "-n", na, "addr", "add", f"{ln.addr_a}/30", "dev", iface(ln.b)],
                 ["ip", "-n", nb, "addr", "add", f"{ln.addr_b}/30", "dev", iface(ln.a)],
                 # MTU-sized packets, as on a real link: a rate limiter fed 64 KB GSO bursts lets the first
                 # one through free and measures coarse (+25% at 1 Mbit/s on a 256 KB probe)
                 ["ip", "-n", na, "link", "set", "dev", iface(ln.b), "gso_max_size", "1500", "gso_max_segs", "1"],
                 ["ip", "-n", nb, "link", "set", "dev", iface(ln.a), "gso_max_size", "1500", "gso_max_segs", "1"],
                 ["ip", "-n", na, "link", "set", iface(ln.b), "up"],
                 ["ip", "-n", nb, "link", "set", iface(ln.a), "up"]]
    addr = addresses(subnet, tiers, counts)
    for node, _ in nodes(tiers, counts):
        ups = upstream(tiers, counts, node)
        for up in ups[1:]:
            cmds.append(["ip", "-n", netns_name(prefix, up), "route", "add", f"{addr[(node, ups[0])]}/32", "dev",
                         iface(node)])
    return cmds


def addresses(subnet: str = DEFAULT_SUBNET, tiers: tuple[str, ...] = DEFAULT_TIERS,
              counts: dict[str, int] | None = None) -> dict[tuple[str, str], str]:
    """(node, peer) -> the node's address on its link to peer."""
    out = {}
    for ln in links(subnet, tiers, counts):
        out[(ln.a, ln.b)] = ln.addr_a
        out[(ln.b, ln.a)] = ln.addr_b
    return out


def sshd_config(state: Path, tier: str, listen: str) -> str:
    """sshd_config of one emulated device: key auth for the emulation's key only, its own host key."""
    d = state / tier
    return "\n".join([
        f"ListenAddress {listen}:22", f"HostKey {d / 'ssh_host_ed25519_key'}",
        f"AuthorizedKeysFile {state / 'authorized_keys'}", f"PidFile {d / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp", "LogLevel VERBOSE", "MaxStartups 50:30:100",
        "MaxSessions 50", ""])


def inventory(state: Path, prefix: str, subnet: str, python: str, cpu: dict[str, float],
              caps_applied: bool, tiers: tuple[str, ...] = DEFAULT_TIERS,
              counts: dict[str, int] | None = None) -> dict[str, Any]:
    """The inventory of an emulation (what ``up`` writes): one device ``<node>-emu`` per node."""
    addr = addresses(subnet, tiers, counts)
    devices = []
    ns = nodes(tiers, counts)
    for node, tier in ns:
        peers = {p: iface(p) for (n, p) in addr if n == node}
        devices.append({
            "id": f"{node}-emu", "tier": tier, "host": addr[(node, CONTROLLER)],
            "data_host": addr[(node, upstream(tiers, counts, node)[0])], "controller_host": addr[(CONTROLLER, node)],
            "workdir": str(state / "work" / f"{node}-emu"), "interface": iface(CONTROLLER),
            "interfaces": {("controller" if p == CONTROLLER else p): i for p, i in peers.items()}
            | {f"{p}-emu": i for p, i in peers.items() if p != CONTROLLER},  # by peer device too (shaping per pair)
            "facts": {"netns": netns_name(prefix, node),
                      "cpu_quota_cores": cpu.get(tier, 1.0) if caps_applied else None,
                      "addresses": {("controller" if p == CONTROLLER else p): a for (n, p), a in addr.items()
                                    if n == node}}})
    return {
        "controller": {"bind": "0.0.0.0", "netns": netns_name(prefix, CONTROLLER),
                       "route_via": [iface(n) for n, _ in ns],
                       "interfaces": {f"{n}-emu": iface(n) for n, _ in ns}},
        "defaults": {"launcher": "ssh", "port": 22, "user": "root", "key_file": str(state / "id_ed25519"),
                     "known_hosts": str(state / "known_hosts"), "python": python, "threads": 1,
                     "meter": {"kind": "model", "idle_w": 1.0, "busy_w": 4.0}},
        "devices": devices,
    }


def _run(argv: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise EmulationError(f"{what}: `{' '.join(argv)}` could not run ({e}); the emulation needs root, iproute2 and "
                             "openssh-server (apt-get install iproute2 openssh-server)") from e
    if check and done.returncode != 0:
        raise EmulationError(f"{what}: `{' '.join(argv)}` exited with status {done.returncode}: "
                             f"{done.stderr.strip()[-500:]}")
    return done


def missing_requirements() -> list[str]:
    """What this machine lacks for an emulation (empty when it can run one)."""
    out = []
    if os.geteuid() != 0:
        out.append("root (network namespaces and cgroups need it)")
    for tool, pkg in (("ip", "iproute2"), ("tc", "iproute2"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            out.append(f"{tool} ({pkg})")
    if not os.access(SSHD, os.X_OK):
        out.append(f"{SSHD} (openssh-server)")
    return out


class Cgroups:
    """CPU caps per emulated device (named by its node) under cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us)."""

    def __init__(self, root: Path = Path("/sys/fs/cgroup"), prefix: str = DEFAULT_PREFIX):
        self.v2 = (root / "cgroup.controllers").is_file()
        self.base = (root if self.v2 else root / "cpu") / f"testbed-{prefix}"

    def path(self, tier: str) -> Path:
        """The cgroup of a tier."""
        return self.base / tier

    def create(self, tier: str, cores: float, period_us: int = 100_000) -> Path:
        """Make the tier's cgroup with a quota of ``cores`` CPUs."""
        d = self.path(tier)
        if self.v2:
            self.base.mkdir(exist_ok=True)
            (self.base.parent / "cgroup.subtree_control").write_text("+cpu")
            (self.base / "cgroup.subtree_control").write_text("+cpu")
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{int(cores * period_us)} {period_us}")
        else:
            d.mkdir(parents=True, exist_ok=True)
            (d / "cpu.cfs_period_us").write_text(str(period_us))
            (d / "cpu.cfs_quota_us").write_text(str(int(cores * period_us)))
        return d

    def add(self, tier: str, pid: int) -> None:
        """Move a process (and so its future children) into the tier's cgroup."""
        (self.path(tier) / "cgroup.procs").write_text(str(pid))

    def remove(self) -> list[str]:
        """Remove the devices' cgroups and the base, deepest first; returns the paths removed.

        An agent given a CPU cap made a group of its own inside its device's; one killed before it
        could remove it leaves it there, empty, and the device's group cannot go before it does.
        """
        if not self.base.is_dir():
            return []
        gone = []
        groups = [d for d in self.base.rglob("*") if d.is_dir()]
        for d in sorted(groups, key=lambda x: (-len(x.parts), str(x))):
            d.rmdir()
            gone.append(str(d))
        self.base.rmdir()
        return gone + [str(self.base)]


class Emulation:
    """Bring an emulated testbed of ``tiers`` up or down; ``state.json`` records what exists."""

    def __init__(self, state_dir: Path = DEFAULT_STATE, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET,
                 tiers: tuple[str, ...] = DEFAULT_TIERS, counts: dict[str, int] | None = None):
        self.state_dir = state_dir
        self.prefix = prefix
        self.subnet = subnet
        self.tiers = tiers
        self.counts = counts or {}  # devices per tier (1 where not named)
        self.nodes = nodes(tiers, self.counts)
        self.state_file = state_dir / "state.json"

    def _load(self) -> dict[str, Any]:
        if self.state_file.is_file():
            return json.loads(self.state_file.read_text())
        return {}

    def _save(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def up(self, inventory_path: Path, cpu: dict[str, float] | None = None,
           python: str | None = None) -> dict[str, Any]:
        """Create everything and write the inventory; on failure, remove what was made and raise."""
        missing = missing_requirements()
        if missing:
            raise EmulationError(f"this machine lacks {', '.join(missing)}; install them (apt-get install iproute2 "
                                 "openssh-server) and run as root")
        if self._load().get("netns"):
            raise EmulationError(f"an emulation is already recorded in {self.state_file}; run `testbed emulate down` "
                                 "first")
        self._check_range_free()
        cpu = {**DEFAULT_CPU, **(cpu or {})}
        state: dict[str, Any] = {"prefix": self.prefix, "subnet": self.subnet, "tiers": list(self.tiers),
                                 "devices_per_tier": {t: self.counts.get(t, 1) for t in self.tiers},
                                 "netns": [], "sshd": {},
                                 "cgroups": None, "inventory": str(inventory_path), "cpu": cpu,
                                 "started_at": time.time()}
        try:
            self._save(state)
            for argv in link_plan(self.prefix, self.subnet, self.tiers, self.counts):
                _run(argv, "creating the emulated network")
                if argv[:3] == ["ip", "netns", "add"]:
                    state["netns"].append(argv[3])
                    self._save(state)
            self._keys()
            caps_applied, why = self._caps(state, cpu)
            state["cpu_caps"] = "applied" if caps_applied else f"not applied: {why}"
            addr = addresses(self.subnet, self.tiers, self.counts)
            for node, _ in self.nodes:
                state["sshd"][node] = self._sshd(node, addr[(node, CONTROLLER)], state if caps_applied else None)
                self._save(state)
            self._known_hosts(addr)
            inv = inventory(self.state_dir, self.prefix, self.subnet, python or sys.executable, cpu, caps_applied,
                            self.tiers, self.counts)
            inventory_path.parent.mkdir(parents=True, exist_ok=True)
            inventory_path.write_text("# written by `testbed emulate up`; removed devices come back with "
                                      "`testbed emulate down && testbed emulate up`\n" + yaml.safe_dump(inv,
                                                                                                      sort_keys=False))
            state["inventory_written"] = True
            self._save(state)
            return state
        except BaseException:
            self.down()
            raise

    def _check_range_free(self) -> None:
        """Refuse when this machine already has an address or route in the emulation's /24."""
        for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show"]):
            out = _run(argv, "checking the address range").stdout
            if f"{self.subnet}." in out:
                raise EmulationError(f"{self.subnet}.0/24 is already in use on this machine ({' '.join(argv)} shows "
                                     "it); take the emulation down or pick another --subnet")

    def _keys(self) -> None:
        key = self.state_dir / "id_ed25519"
        if not key.is_file():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testbed-emulation", "-f", str(key)],
                 "making the emulation's SSH key")
        auth = self.state_dir / "authorized_keys"
        auth.write_text((self.state_dir / "id_ed25519.pub").read_text())
        auth.chmod(0o600)

    def _caps(self, state: dict[str, Any], cpu: dict[str, float]) -> tuple[bool, str]:
        cg = Cgroups(prefix=self.prefix)
        try:
            for node, tier in self.nodes:  # each device its own cap, its tier's
                cg.create(node, cpu.get(tier, 1.0))
                state["cgroups"] = str(cg.base)
            self._save(state)
            return True, ""
        except OSError as e:
            return False, f"cgroups are not writable here ({e})"

    def _sshd(self, tier: str, listen: str, capped: dict[str, Any] | None) -> dict[str, Any]:
        d = self.state_dir / tier
        d.mkdir(parents=True, exist_ok=True)
        hostkey = d / "ssh_host_ed25519_key"
        if not hostkey.is_file():
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"testbed-{tier}", "-f", str(hostkey)],
                 f"making the host key of {tier}")
        conf = d / "sshd_config"
        conf.write_text(sshd_config(self.state_dir, tier, listen))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        pidfile = d / "sshd.pid"
        pidfile.unlink(missing_ok=True)
        # `ip netns exec` gives sshd a mount namespace of its own: there the machine's shell start-up file is
        # replaced by an empty one, so every SSH command does not pay for this machine's own shell set-up
        # (pyenv and the like: 0.2 s of CPU per command here, 0.8 s under the mobile tier's cap)
        empty = self.state_dir / "empty_rc"
        empty.write_text("")
        masks = " ".join(f"[ -f {rc} ] && mount --bind {empty} {rc};" for rc in ("/root/.bashrc",))
        _run(["ip", "netns", "exec", netns_name(self.prefix, tier), "sh", "-c",
              f"{masks} exec {SSHD} -f {conf} -E {d / 'sshd.log'}"], f"starting sshd for {tier}")
        for _ in range(50):
            if pidfile.is_file() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        else:
            raise EmulationError(f"sshd of {tier} wrote no pid file; its log: {(d / 'sshd.log').read_text()[-500:]}")
        pid = int(pidfile.read_text().strip())
        if capped is not None:
            Cgroups(prefix=self.prefix).add(tier, pid)
        return {"pid": pid, "config": str(conf), "listen": listen}

    def _known_hosts(self, addr: dict[tuple[str, str], str]) -> None:
        lines = []
        for node, _ in self.nodes:
            pub = (self.state_dir / node / "ssh_host_ed25519_key.pub").read_text().split()
            lines.append(f"{addr[(node, CONTROLLER)]} {pub[0]} {pub[1]}\n")
        kh = self.state_dir / "known_hosts"
        kh.write_text("".join(lines))
        kh.chmod(0o600)

    def down(self) -> list[str]:
        """Kill what runs in the namespaces, stop sshd, delete namespaces and cgroups; returns what was removed."""
        state = self._load()
        removed: list[str] = []
        for ns in state.get("netns", []):
            if not Path("/run/netns", ns).exists():
                continue
            pids = _run(["ip", "netns", "pids", ns], "listing the processes of " + ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    removed.append(f"process {pid} in {ns}")
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(0.1 if removed else 0)
        for ns in state.get("netns", []):
            if Path("/run/netns", ns).exists():
                _run(["ip", "netns", "del", ns], "deleting " + ns)
                removed.append(f"netns {ns}")
        if state.get("cgroups"):
            for _ in range(20):
                try:
                    removed += [f"cgroup {p}" for p in Cgroups(prefix=state.get("prefix", self.prefix)).remove()]
                    break
                except OSError:
                    time.sleep(0.1)  # processes just killed may take a moment to leave
        self.state_file.unlink(missing_ok=True)
        return removed
