"""The devices of a run: start their agents (locally or deployed over SSH) and shape their links.

:class:`Fleet` is what the controller asks for agents. For ``launcher: local`` devices it
starts processes here; for ``launcher: ssh`` devices it checks the route (when the inventory
says which links are allowed), connects with the host key verified, runs the preflight,
pushes what changed and starts the agent detached. With SSH devices it also applies the
kernel's part of link shaping on each end of every shaped hop (htb rate, and netem where
that backend is chosen), reads the qdiscs back, and removes them at the end. Every process,
file and qdisc it makes is in the run's ownership record before the next step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed.core.config import DeviceSpec, Experiment, Inventory, LinkProfile
from testbed.core.errors import ConfigError, DeployError, TestbedError
from testbed.core.hops import CONTROLLER, link_ends  # CONTROLLER: tc runs here, not over SSH
from testbed.devices import shaping
from testbed.devices.deploy import (
    DeployRecord,
    bundle_dir_name,
    deploy_device,
    probe_link,
    run_steps,
    shaping_facts,
    start_agent,
    target_of,
    undo_remote,
)
from testbed.devices.launch import AgentArgs, AgentHandle, LocalLauncher
from testbed.devices.owned import REMOVED, Ownership, proc_starttime
from testbed.devices.routes import check_routes
from testbed.devices.ssh import LocalRemote, Remote, SshRemote
from testbed.formats.bundle import Bundle

PROBE_ATTEMPTS = 3  # a probe reading the link short of its rate is repeated, the best attempt kept
PROBE_SHORT_PCT = 5.0  # ... short: more than this under the configured rate


def controller_problems(facts: dict[str, Any], links: dict[str, LinkProfile], backend: str) -> list[str]:
    """What this machine's kernel lacks for its end of the shaped controller links, each with what to do.

    ``facts``: :func:`testbed.devices.deploy.shaping_facts` of this machine; ``backend``: the run's.
    """
    problems = []
    for what, hops in shaping.controller_needs(links, backend).items():
        if facts.get(what):
            continue
        names = ", ".join(f"shaping.links.{h}" for h in hops)
        if what == "tc":
            problems.append(f"controller (this machine): no tc, which {names} needs to shape the controller's end; "
                            "install iproute2, or shape delay and jitter only (backend userspace)")
        else:
            problems.append(f"controller (this machine, kernel {facts.get('kernel')}): no sch_{what}, which {names} "
                            f"needs at the controller's end under backend {backend}; load it (modprobe sch_{what})"
                            + (" or use shaping.backend: userspace" if what == "netem" else ""))
    return problems


class Fleet:
    """Starts, shapes and stops the agents of one run."""

    def __init__(self, exp: Experiment, inv: Inventory, bundle: Bundle, run_dir: Path, run_id: str,
                 owned: Ownership, trust_new_hosts: bool = False,
                 connect: Callable[[DeviceSpec], Remote] | None = None,
                 route_get: Callable[[str], str] | None = None, exp_path: Path | None = None):
        self.exp, self.inv, self.bundle = exp, inv, bundle
        self.exp_path = exp_path
        self.run_dir, self.run_id, self.owned = run_dir, run_id, owned
        self.trust_new_hosts = trust_new_hosts
        self._connect = connect or (lambda d: SshRemote(target_of(d), trust_new_hosts))
        self._route_get = route_get
        self.tiers = bundle.tiers  # the run's, in order
        # a tier's first device (links and shaping are per tier: several devices per tier shape in userspace only)
        self.devices = {t: inv.device(exp.tier_devices(t)[0]) for t in self.tiers}
        self.devices_by_id = {d: inv.device(d) for d in exp.device_ids()}
        self.remotes: dict[str, Remote] = {}
        self.deploys: dict[str, DeployRecord] = {}
        self.routes: dict[str, str] = {}
        self.qdiscs: list[tuple[int, str, str]] = []  # (ownership index, device id, interface)
        self.shaping_readback: dict[str, Any] = {}
        self.backend = "none"
        self.controller_facts: dict[str, Any] | None = None  # this machine's kernel, when it shapes its own end
        self._kernel_in_force: dict[str, tuple[float | None, ...]] = {}  # hop -> what tc applies there now

    @property
    def remote(self) -> bool:
        """True when the agents are deployed over SSH."""
        return any(d.launcher == "ssh" for d in self.devices_by_id.values())

    def connect_all(self) -> None:
        """Route check, then SSH to every ssh device, then preflight and push (one device at a time)."""
        ssh_devs = [d for d in self.devices_by_id.values() if d.launcher == "ssh"]
        if not ssh_devs:
            return
        addrs = {d.id: [d.host] + ([d.data_host] if d.tier == self.tiers[0] and d.data_host else []) for d in ssh_devs}
        kwargs = {"route_get": self._route_get} if self._route_get else {}
        self.routes = check_routes(self.inv, addrs, **kwargs)
        backend = self._requested_backend()
        for d in ssh_devs:
            remote = self._connect(d)
            self.remotes[d.id] = remote
            self.deploys[d.id] = deploy_device(remote, d, self.bundle, self.owned,
                                               self.exp.deploy.max_clock_offset_ms, backend)
            policy = getattr(remote, "policy", None)
            self.deploys[d.id].host_key_recorded = getattr(policy, "recorded", None)

    def _requested_backend(self) -> str | None:
        links, backend = self.exp.shaping.links, self.exp.shaping.backend
        if not links or backend == "none":
            return None
        return backend if backend != "auto" else None

    def choose_backend(self) -> str:
        """The shaping backend of this run: the experiment's, or with ``auto`` netem where every device has it."""
        links, backend = self.exp.shaping.links, self.exp.shaping.backend
        if not links or backend == "none":
            self.backend = "none"
        elif backend != "auto":
            self.backend = backend
        elif self.remote and self.deploys and all(r.facts.get("netem") for r in self.deploys.values()) and (
                "netem" not in shaping.controller_needs(links, "netem") or self._controller_kernel().get("netem")):
            self.backend = "netem"  # the controller's own end too, where a controller link is shaped
        else:
            self.backend = "userspace"
        _, problems = shaping.applicable(links, self.backend, self.remote)
        if self.remote and shaping.controller_needs(links, self.backend):
            problems += controller_problems(self._controller_kernel(), links, self.backend)
        if problems:
            raise ConfigError(str(self.exp_path or self.exp.name), problems)
        return self.backend

    def _controller_kernel(self) -> dict[str, Any]:
        """tc, netem and htb on this machine (read once): the controller's end of its links is shaped here."""
        if self.controller_facts is None:
            self.controller_facts = shaping_facts(*self._remote_of(CONTROLLER))
        return self.controller_facts

    def start(self, device: DeviceSpec, args: AgentArgs) -> AgentHandle:
        """Start one device's agent; recorded in the ownership record at once."""
        if device.launcher == "local":
            handle = LocalLauncher(self.run_dir / "logs", bundle_root=self.bundle.root).start(device, args)
            self.owned.add("process", {"local": True}, device=device.id, pid=handle.pid,
                           starttime=proc_starttime(handle.pid), log=str(handle.log_path))
            return handle
        remote = self.remotes[device.id]
        workdir = self.deploys[device.id].workdir
        return start_agent(remote, device, args, workdir, self.run_id, self.owned,
                           self.run_dir / "logs" / f"{device.id}.log", bundle_dir_name(self.bundle))

    # ------------------------------------------------------------------ shaping

    def pairs(self, hop: str) -> list[tuple[str, str]]:
        """The (sender, receiver) device ids that talk over ``hop`` (``controller`` for the controller's end).

        One pair per device of the hop's first end: a controller hop pairs the controller with each
        device of the tier, a device hop each device with the next-tier device it offloads to.
        """
        a, b = link_ends(hop)
        if a == CONTROLLER:
            return [(CONTROLLER, d) for d in self.exp.tier_devices(b)]
        if self.exp.per_sample:  # any device may send to any device of the next tier
            return [(d, e) for d in self.exp.tier_devices(a) for e in self.exp.tier_devices(b)]
        return [(d, self.exp.next_device(self.tiers, d) or d) for d in self.exp.tier_devices(a)]

    def _interface(self, me: str, peer: str, hop: str) -> tuple[str | None, str]:
        """The interface ``me`` sends to ``peer`` through on ``hop`` (device ids), and what to do if none is named."""
        if me == CONTROLLER:
            return self.inv.controller.interfaces.get(peer), (
                f"controller.interfaces.{peer}: shaping {hop} needs the controller's own interface toward {peer} "
                "(tc runs here, as root); name it, or shape delay and jitter only (backend userspace)")
        dev = self.devices_by_id[me]
        peer_tier = CONTROLLER if peer == CONTROLLER else self.devices_by_id[peer].tier
        # a device with several peers on the next tier names each peer's interface by the peer's id
        return dev.interfaces.get(peer) or dev.interface_to(peer_tier), (
            f"devices[id={dev.id}].interface: shaping {hop} needs the interface {dev.id} sends to {peer} through; "
            f"set interface, interfaces.{peer_tier} or interfaces.{peer}")

    def kernel_plans(self, links: dict[str, LinkProfile] | None = None) -> list[tuple[str, str, str,
                                                                                    list[shaping.Step]]]:
        """(hop, device id, interface, steps) of the kernel's part of the shaping, both ends of each device pair.

        ``links``: the profiles to plan (default: the experiment's, as they start); interfaces this
        run has shaped already get the change form of the plan. An interface several pairs share
        (one edge port to a switch of mobiles) is shaped once: its rate is theirs together.
        """
        out = []
        for hop, profile in (self.exp.shaping.links if links is None else links).items():
            seen: set[tuple[str, str]] = set()
            for x, y in self.pairs(hop):
                for me, peer in ((x, y), (y, x)):
                    ifname, missing = self._interface(me, peer, hop)
                    if (me, str(ifname)) in seen:
                        continue
                    seen.add((me, str(ifname)))
                    change = any(d == me and i == ifname for _, d, i in self.qdiscs)
                    steps = (shaping.plan(ifname or "<interface>", profile, self.backend, change)
                             if self.backend != "none" else [])
                    if steps:
                        if not ifname:
                            raise ConfigError("inventory", [missing])
                        out.append((hop, me, ifname, steps))
        return out

    def _remote_of(self, dev_id: str) -> tuple[Remote, str]:
        """Where a tc plan or probe end runs, and its Python: the device over SSH, or here for the controller."""
        if dev_id == CONTROLLER:
            if CONTROLLER not in self.remotes:
                self.remotes[CONTROLLER] = LocalRemote(CONTROLLER)
            return self.remotes[CONTROLLER], sys.executable
        return self.remotes[dev_id], self.devices_by_id[dev_id].python or "python3"

    def shape(self) -> dict[str, Any]:
        """Apply the kernel part on the devices over SSH; read every qdisc back. Returns the manifest record."""
        if not self.remote or self.backend == "none":
            return {}
        for hop, dev_id, ifname, steps in self.kernel_plans():
            back = self.shaping_readback.setdefault(hop, {})
            # one entry per device; a device with several pairs on the hop (an edge of three mobiles) per interface
            back[dev_id if dev_id not in back else f"{dev_id}/{ifname}"] = self.apply_kernel(hop, dev_id, ifname, steps)
        self._kernel_in_force = {hop: shaping.kernel_part(p, self.backend) for hop, p in self.exp.shaping.links.items()}
        return self.shaping_readback

    def reshape(self, hop: str, profile: LinkProfile) -> dict[str, Any]:
        """A schedule step: apply the kernel part of ``profile`` to ``hop`` now (tc replace on both ends).

        Returns per device what ran and the qdisc state read back; empty when the kernel has no
        part in it (loopback), or its part is unchanged (under userspace: a step of delay and
        jitter only, which the agents apply).
        """
        if not self.remote or self.backend == "none":
            return {}
        part = shaping.kernel_part(profile, self.backend)
        if self._kernel_in_force.get(hop) == part:
            return {}
        self._kernel_in_force[hop] = part
        out: dict[str, Any] = {}
        for h, dev_id, ifname, steps in self.kernel_plans({hop: profile}):
            got = self.apply_kernel(h, dev_id, ifname, steps)
            # one device, one interface (the record's shape since one device per tier); several: per interface
            out[dev_id if dev_id not in out else f"{dev_id}/{ifname}"] = got
        return out

    def apply_kernel(self, hop: str, dev_id: str, ifname: str, steps: list[shaping.Step]) -> dict[str, Any]:
        """Run the tc ``steps`` for one end of ``hop`` on ``dev_id``'s ``ifname``; the qdisc is this run's own."""
        remote, python = self._remote_of(dev_id)
        if not any(d == dev_id and i == ifname for _, d, i in self.qdiscs):
            root = steps[0].argv
            qdisc, handle = root[root.index("handle") + 2], root[root.index("handle") + 1]
            # recorded before it exists: clean checks the interface's root qdisc is this one before removing it
            where = {"local": True} if dev_id == CONTROLLER else remote.target.to_dict()
            idx = self.owned.add("qdisc", where, device=dev_id, dev=ifname, qdisc=qdisc,
                                 handle=handle, hop=hop, argv=[s.argv for s in steps])
            self.qdiscs.append((idx, dev_id, ifname))
        got = run_steps(remote, python, [s.argv for s in steps],
                        [shaping.show(ifname).argv, shaping.show_class(ifname).argv])
        return {"interface": ifname, "applied": [s.argv for s in steps], "tc_show": got["show"].strip().splitlines()}

    def probe(self) -> dict[str, Any]:
        """Configured vs measured, per shaped hop, device pair and direction: throughput at the receiver, TCP connect.

        A probe that reads the link more than PROBE_SHORT_PCT under its rate is repeated, up to
        PROBE_ATTEMPTS in all, and the best attempt is kept (a shaper never passes more than its
        rate; a busy end or a host stealing a VM's CPU only slows a stream down); every attempt's
        capacity is recorded. A hop of one pair keys its directions by tier (``mobile->edge``);
        with several pairs, by device (``mobile2-emu->edge-emu``).

        The userspace delay is not in these numbers (the agents add it to their messages); it is
        measured in the rows' net_ms columns; the report's fidelity lines put the two side by side.
        """
        if not self.remote or self.backend == "none":
            return {}
        out: dict[str, Any] = {}
        for hop, profile in self.exp.shaping.links.items():
            pairs = self.pairs(hop)
            for x, y in pairs:
                for src, dst in ((x, y), (y, x)):
                    ends = link_ends(hop) if src == x else tuple(reversed(link_ends(hop)))
                    key = f"{ends[0]}->{ends[1]}" if len(pairs) == 1 else f"{src}->{dst}"
                    out.setdefault(hop, {})[key] = self._probe_pair(src, dst, ends[0], profile.rate_mbit)
        return out

    def _probe_pair(self, src: str, dst: str, src_tier: str, rate: float | None) -> dict[str, Any]:
        """One direction of one device pair (ids, or ``controller``): the best of up to PROBE_ATTEMPTS probes."""
        nbytes = int(min(16e6, max(256e3, (rate or 100.0) * 1e6 / 8 * 1.5)))  # 1.5 s at the rate: a capped
        # device may be throttled a period or two while its probe starts (interpreter, SSH session)
        (s_remote, s_py), (r_remote, r_py) = self._remote_of(src), self._remote_of(dst)
        addr = (self.inv.controller_address(self.devices_by_id[src]) if dst == CONTROLLER
                else self._address_toward(self.devices_by_id[dst], src_tier))
        got: dict[str, Any] = {}
        tries: list[float] = []
        for _ in range(PROBE_ATTEMPTS):
            one = probe_link(s_remote, s_py, r_remote, r_py, addr, nbytes)
            # the rate counts headers too; the capacity (fastest stretch) is what the shaper lets through
            capacity = one.get("link_capacity_mbit", one.get("link_mbit", one["throughput_mbit"]))
            tries.append(capacity)
            if not got or capacity > got["_capacity"]:
                got = one | {"_capacity": capacity}
            if not rate or capacity >= rate * (1 - PROBE_SHORT_PCT / 100):
                break
        capacity = got.pop("_capacity")
        on_link = got.get("link_mbit", got["throughput_mbit"])
        got["configured_rate_mbit"] = rate
        got["rate_error_pct"] = round(100 * (capacity - rate) / rate, 2) if rate else None
        got["mean_rate_error_pct"] = round(100 * (on_link - rate) / rate, 2) if rate else None
        got["attempts_capacity_mbit"] = tries
        return got

    @staticmethod
    def _address_toward(device: DeviceSpec, peer: str) -> str:
        """The address ``device`` has on its link to ``peer``.

        From ``facts.addresses`` (the emulation writes them), else the device's data address.
        """
        return (device.facts.get("addresses") or {}).get(peer) or device.data_host or device.host

    def userspace_link(self, hop: str, t_s: float = 0.0) -> LinkProfile | None:
        """The profile the sending agent of ``hop`` applies itself (userspace backend), else None.

        ``t_s``: seconds into the run's samples, for links with a schedule.
        """
        if self.backend != "userspace":
            return None
        profile = self.exp.shaping.links.get(hop)
        return shaping.at(profile, t_s) if profile is not None else None

    # ------------------------------------------------------------------ teardown

    def unshape(self) -> list[str]:
        """Remove the qdiscs this run installed; returns problems (never raises)."""
        problems = []
        for idx, dev_id, ifname in reversed(self.qdiscs):
            entry = self.owned.entries[idx]
            if entry["state"] != "live":
                continue
            try:
                self.owned.mark(idx, undo_remote(entry, self._remote_of(dev_id)[0]))
            except TestbedError as e:
                problems.append(f"{dev_id} {ifname}: {e}")
        return problems

    def after_stop(self, handles: dict[str, AgentHandle]) -> list[str]:
        """Fetch logs, mark stopped processes, close connections; returns problems (never raises)."""
        problems = []
        for dev_id, h in handles.items():
            try:
                h.fetch_log()
            except DeployError as e:
                problems.append(str(e))
            if h.returncode() is not None:
                for i, ent in enumerate(self.owned.entries):
                    if ent["kind"] == "process" and ent.get("pid") == h.pid and ent["state"] == "live" and \
                            (ent["where"].get("local") or ent["where"].get("device") == dev_id):
                        self.owned.mark(i, REMOVED, "stopped at the end of the run")
        problems += self.unshape()
        for r in self.remotes.values():
            r.close()
        if self.owned.unsaved:
            problems.append(self.owned.unsaved + "; `testbed clean` cannot see what was undone since")
        return problems

    def record(self) -> dict[str, Any]:
        """The deploy part of the manifest."""
        return {"method": "ssh" if self.remote else "local", "routes": self.routes,
                "devices": {k: v.to_dict() for k, v in self.deploys.items()},
                **({"controller_kernel": self.controller_facts} if self.controller_facts else {}),
                "ownership_record": self.owned.path.name, "at": time.time()}
