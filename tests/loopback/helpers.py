from __future__ import annotations

import json
import os
from pathlib import Path

import psutil


def only_run(results: Path) -> Path:
    runs = [p.parent for p in results.glob("*/*/manifest.json")]
    assert len(runs) == 1, runs
    return runs[0]


def agent_pids(run_dir: Path) -> list[int]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [p["pid"] for p in manifest["owned"]["processes"]]


def assert_gone(pids: list[int]) -> None:
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"agent processes left behind: {alive}"


def env() -> dict:
    e = dict(os.environ)
    e["HF_HUB_OFFLINE"] = "1"
    return e
