"""What the kernel can shape with (tc, netem, htb): part of the preflight, and asked alone of the controller."""

from __future__ import annotations

import glob
import os
import platform
import shutil
from typing import Any


def read_text(path: str) -> str | None:
    """A small sysfs or proc file's text, stripped; None when unreadable."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _has_qdisc(kind: str, release: str, builtin: str) -> bool:
    return bool(os.path.exists(f"/sys/module/sch_{kind}") or f"sch_{kind}" in builtin
                or glob.glob(f"/lib/modules/{release}/kernel/net/sched/sch_{kind}.ko*"))


def shaping_facts(out: dict[str, Any]) -> None:
    """Fill ``out`` with the kernel release, the tc binary, and whether netem and htb are there."""
    release = platform.release()
    out["kernel"] = release
    out["tc"] = shutil.which("tc") or (os.path.exists("/sbin/tc") and "/sbin/tc") or None
    builtin = read_text(f"/lib/modules/{release}/modules.builtin") or ""
    out["netem"] = _has_qdisc("netem", release, builtin)
    out["htb"] = _has_qdisc("htb", release, builtin)
