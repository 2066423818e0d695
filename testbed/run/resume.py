"""``testbed run --resume RUN_DIR``: what a stopped run left on disk, and whether it may go on.

A run may go on when it stopped before its end (interrupted, failed, lost), its experiment,
inventory and bundle are byte for byte what it started with, and its rows are of this
testbed's schema. The rows on disk are keyed by ``seq``, the issue order, which the
experiment's plan fixes: the resumed run issues exactly the plan's entries whose seq has no
row, and replays the others to the policies (:meth:`testbed.run.issuer.Issuer._replay`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.core.errors import ResultsError
from testbed.formats import results
from testbed.formats.manifest import MANIFEST, RunManifest
from testbed.formats.schema import SCHEMA_VERSION
from testbed.policies import Policy

#: files beside the rows that a resumed run writes again; the earlier attempt's are moved to attempts/<n>/
SIDE_FILES = ("power_*.parquet", "thermal_*.parquet", results.ENERGY_WINDOWS)


@dataclass
class Resume:
    """A stopped run to go on with: its directory, manifest and rows on disk by seq."""

    run_dir: Path
    manifest: RunManifest
    done: dict[int, dict[str, Any]]

    @property
    def attempt(self) -> int:
        """The number of the attempt about to start (the first run was attempt 1)."""
        return len(self.manifest.attempts) + 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(run_dir: Path) -> Resume:
    """The run in ``run_dir``, checked that it may go on.

    Raises:
        ResultsError: it finished, it is still running, its inputs changed, or its rows are of
            another schema (each with what to do).
    """
    if not (run_dir / MANIFEST).is_file():
        raise ResultsError(f"{run_dir}: no run there (no {MANIFEST}); give the run directory, "
                           "results/<experiment>/<run id>")
    m = results.load_manifest(run_dir)
    if m.status == "complete":
        raise ResultsError(f"{run_dir}: the run is complete; there is nothing to resume")
    if m.status == "running":
        raise ResultsError(f"{run_dir}: the run is still running (controller pid {m.controller.pid} on "
                           f"{m.controller.host}); stop it first, or run `testbed report` to mark it lost if it died")
    if m.schema_version != SCHEMA_VERSION:
        raise ResultsError(f"{run_dir}: its rows are schema v{m.schema_version}, this testbed writes "
                           f"v{SCHEMA_VERSION}; resume it with the testbed that started it, or start a new run")
    for what, rec in (("experiment", m.experiment), ("inventory", m.inventory)):
        path = Path(rec.path)
        if not path.is_file() or path.read_text() != rec.yaml:
            raise ResultsError(f"{run_dir}: the {what} file {path} is not what the run started with; restore it "
                               f"(the manifest keeps its text under {what}.yaml) or start a new run")
    try:
        df, _ = results.load_samples(run_dir)
    except ResultsError:
        df = None  # stopped before its first flush: nothing to replay
    done: dict[int, dict[str, Any]] = {}
    for row in ([] if df is None else df.to_dict("records")):
        clean = {str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        done[int(row["seq"])] = clean
    return Resume(run_dir, m, done)


def check_bundle(resume: Resume, hashes: dict[str, str]) -> None:
    """Refuse a bundle whose files differ from the ones the run started with."""
    before = resume.manifest.bundle.sha256
    changed = sorted(f for f in set(before) | set(hashes) if before.get(f) != hashes.get(f))
    if changed:
        raise ResultsError(f"{resume.run_dir}: bundle files {changed} are not the ones the run started with; "
                           "resume needs the same bundle, or start a new run")


def set_aside(resume: Resume) -> list[str]:
    """Move the earlier attempt's side files (power timelines, thermal, energy windows) to attempts/<n>/."""
    dest = resume.run_dir / "attempts" / str(resume.attempt - 1)
    moved = []
    for pattern in SIDE_FILES:
        for f in sorted(resume.run_dir.glob(pattern)):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.move(str(f), dest / f.name)
            moved.append(str((dest / f.name).relative_to(resume.run_dir)))
    return moved


def attempt_record(m: RunManifest) -> dict[str, Any]:
    """What the manifest keeps of an attempt that ended, before the next one overwrites the live fields."""
    return {"started_at": m.started_at, "ended_at": m.ended_at, "status": m.status, "error": m.error,
            "rows": m.rows, "controller": m.controller.model_dump(), "agents": m.agents,
            "agent_exit": {k: v.model_dump() for k, v in m.agent_exit.items()},
            "rejected_messages": m.rejected_messages, "teardown_problems": m.teardown_problems}


class Replay:
    """The rows on disk played back to a policy in the order the run went.

    A replayed sample is decided again (the policy draws from its generator and picks as it did)
    and its ``policy_feedback`` is observed when the first run observed it: after every sample
    issued before its answer came back (``t_return_unix_ns``, the controller's clock, like
    ``t_issue_unix_ns``). With one sample in flight that is exactly the first run; the issuer
    drains live samples before it replays, so a re-issued sample's answer comes in its place.
    """

    def __init__(self, rows: dict[int, dict[str, Any]]):
        self.rows = rows
        # (t_return, seq, sample_id, feedback, the policy state it feeds): not yet observed
        self._pending: list[tuple[int, int, int, str, Policy]] = []
        self.replayed = 0
        self.choices_differing = 0  # the policy chose otherwise than the row says (state diverged)
        self.feedback_unusable = 0  # ... and the row's feedback did not fit its new choice

    def has(self, seq: int) -> bool:
        """Whether ``seq`` has a row on disk."""
        return seq in self.rows

    def device(self, seq: int) -> str | None:
        """The first-tier device the row on disk went to (its policy state, where there is one per source)."""
        row = self.rows.get(seq) or {}
        first = str(row.get("tier_path") or "").split(">")[0]
        return row.get(f"device_{first}") if first else None

    def play(self, seq: int, policy: Policy, rng: np.random.Generator, sample_id: int, phase: str) -> dict[str, Any]:
        """Decide ``seq`` again without sending it; its row.

        Raises:
            ResultsError: the row on disk is not the plan's sample at that seq.
        """
        row = self.rows[seq]
        if row["sample_id"] != sample_id or row["policy"] != policy.name or row["phase"] != phase:
            raise ResultsError(f"row seq {seq} on disk is {row['policy']}/{row['phase']}/sample {row['sample_id']}, "
                               f"but the experiment's plan puts {policy.name}/{phase}/sample {sample_id} there: "
                               "these rows are not this experiment's; start a new run")
        self.observe(before_ns=int(row["t_issue_unix_ns"]))
        policy.thresholds(sample_id, rng)
        policy.split(sample_id)
        policy.pools(sample_id)
        if policy.choice(sample_id) != row.get("policy_choice"):
            self.choices_differing += 1
        back = row.get("t_return_unix_ns")
        heapq.heappush(self._pending, (int(back) if back is not None else int(row["t_issue_unix_ns"]), seq,
                                       sample_id, row.get("policy_feedback") or "", policy))
        self.replayed += 1
        return row

    def observe(self, before_ns: int | None = None) -> None:
        """Feed the replayed answers that came back before ``before_ns`` (all of them: None), oldest first."""
        while self._pending and (before_ns is None or self._pending[0][0] < before_ns):
            _, _, sample_id, feedback, policy = heapq.heappop(self._pending)
            if not feedback:
                continue
            try:
                policy.observe(sample_id, json.loads(feedback))
            except (KeyError, ValueError, TypeError):  # a choice that diverged: this feedback does not fit it
                self.feedback_unusable += 1

    def record(self) -> dict[str, int]:
        """For the manifest's ``resumed``."""
        return {"rows_replayed": self.replayed, "choices_differing": self.choices_differing,
                "feedback_unusable": self.feedback_unusable}
