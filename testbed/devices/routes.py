"""Network safety: check where a packet to a device would go, and where the controller runs.

An address that exists only inside a network namespace is not reachable from outside it;
there it follows the default route and leaves the machine. So before any connection to a
device of an inventory that names ``controller.route_via``, every device address is
resolved with ``ip route get`` and must leave through one of those interfaces; and an
inventory that names ``controller.netns`` is only used from inside that namespace.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from testbed.core.config import Inventory
from testbed.core.errors import RouteError

NETNS_DIR = Path("/run/netns")


def parse_route_dev(output: str) -> tuple[str | None, str | None]:
    """``(dev, gateway)`` of one ``ip route get`` answer (gateway None on a direct route)."""
    dev = re.search(r"\bdev (\S+)", output)
    via = re.search(r"\bvia (\S+)", output)
    return (dev.group(1) if dev else None), (via.group(1) if via else None)


def ip_route_get(addr: str) -> str:
    """Run ``ip route get ADDR`` here (in this process's namespace)."""
    try:
        done = subprocess.run(["ip", "route", "get", addr], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        raise RouteError(f"cannot check the route to {addr}: `ip route get` failed ({e}); install iproute2") from e
    if done.returncode != 0:
        raise RouteError(f"no route to {addr} ({done.stderr.strip()}); nothing was sent to it")
    return done.stdout


def check_routes(inv: Inventory, addrs: dict[str, list[str]],
                 route_get: Callable[[str], str] = ip_route_get) -> dict[str, str]:
    """Refuse unless every address (device id -> addresses) routes out through ``controller.route_via``.

    Returns address -> interface. Does nothing (returns {}) for an inventory without ``route_via``
    (a lab whose routes are its own).
    """
    allowed = inv.controller.route_via
    if not allowed:
        return {}
    seen: dict[str, str] = {}
    for dev_id, dev_addrs in addrs.items():
        for addr in dev_addrs:
            try:
                dev, via = parse_route_dev(route_get(addr))
            except RouteError as e:
                raise RouteError(f"device {dev_id}: {e}; run `testbed emulate up` if the emulation is down") from e
            if dev not in allowed or via is not None:
                raise RouteError(
                    f"device {dev_id}: {addr} routes {'via ' + via + ' ' if via else ''}through {dev!r}, not through "
                    f"the emulation's links {allowed}; packets to it would leave this machine, so nothing was sent. "
                    f"Run inside the controller namespace (the CLI enters controller.netns itself), or run "
                    f"`testbed emulate up` again if the namespaces are gone")
            seen[addr] = dev
    return seen


def current_netns_matches(name: str, netns_dir: Path = NETNS_DIR) -> bool:
    """True when this process runs in network namespace ``name`` (``ip netns`` naming)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(netns_dir / name).st_ino
    except OSError:
        return False


def netns_exists(name: str, netns_dir: Path = NETNS_DIR) -> bool:
    """True when ``ip netns`` knows ``name``."""
    return (netns_dir / name).exists()
