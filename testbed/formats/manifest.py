"""The run manifest (``manifest.json``): a typed, versioned record of everything needed to repeat a run.

Sections are absent (null) until known, never placeholder strings. The top level and the
sections every run has are typed; sections whose content depends on the devices and the
shaping backend (``shaping``, ``energy``, ``deploy``) are mappings, described in docs/results.md.
Unknown keys are kept, so a manifest written by a newer testbed still loads.

Format history:
    1: (before 2026-12-01) no ``format_version``; ``shaping`` and ``energy`` held placeholder
       strings until the devices were shaped and the agents had said Hello; each resolved
       policy entry listed every policy's parameters, null where not given.
    2: ``format_version``; placeholders replaced by null; a resolved policy entry holds its
       name, label and its own keys only; loaded through :func:`load`.
    3: ``tiers``: the run's tiers in order (its bundle's); a manifest of format 1 or 2 had
       mobile, edge and cloud.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.protocol import DEFAULT_TIERS
from testbed.core.errors import ResultsError

MANIFEST_FORMAT = 3
MANIFEST = "manifest.json"
Status = Literal["running", "complete", "failed", "interrupted", "lost"]


class Section(BaseModel):
    """A manifest section: typed keys, and any others a newer writer added kept as they are."""

    model_config = ConfigDict(extra="allow")


class FileRecord(Section):
    """An input file, verbatim and as validated."""

    path: str
    yaml: str = Field(description="the file's text, verbatim")
    sha256: str | None = None
    resolved: dict[str, Any] = Field(description="the validated model, defaults filled in")


class BundleRecord(Section):
    """The bundle the run used."""

    path: str
    name: str
    sha256: dict[str, str] = Field(description="every file of the bundle, verified before the run")
    exits: dict[str, dict[str, Any]] = Field(description="tier -> its exit's layer and accuracies")
    model: dict[str, Any]
    build: str = Field(description="the bundle's build record, as YAML")


class ControllerRecord(Section):
    """The machine the controller ran on."""

    host: str
    platform: str
    versions: dict[str, str]
    pid: int | None = Field(None, description="the controller's process id (a run whose controller is gone is lost)")
    pid_starttime: str | None = Field(None, description="its start time in clock ticks since boot (/proc/PID/stat "
                                      "field 22), so a reused pid is not taken for it")


class AgentExit(Section):
    """How an agent ended."""

    exit_status: int | None
    served: int | None = Field(description="samples it served, from its Bye; null when it sent none")


class RunManifest(Section):
    """The whole ``manifest.json``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    format_version: int = MANIFEST_FORMAT
    schema_version: int = Field(description="the samples.parquet schema version")
    run_id: str
    tiers: list[str] = Field(description="the run's tiers in the order a sample crosses them (the bundle's)")
    status: Status = "running"
    started_at: str
    ended_at: str | None = None
    error: str | None = None
    rows: int | None = None
    rows_rescued: int = Field(0, description="rows the run directory could not take (a full disk), written to the "
                              "rescue file its error names")
    command: list[str]
    experiment: FileRecord
    inventory: FileRecord
    bundle: BundleRecord
    git: dict[str, Any]
    controller: ControllerRecord
    cost_model: dict[str, Any]
    shaping: dict[str, Any] | None = Field(None, description="backend, links, kernel read-back, probes, schedule")
    cpu: dict[str, Any] | None = Field(None, description="the CPU schedule and every cap applied: device, kind, value, "
                                       "when due and applied, what the agent wrote")
    deploy: dict[str, Any] | None = None
    owned: dict[str, Any] | None = None
    agents: dict[str, dict[str, Any]] = {}
    energy: dict[str, Any] | None = Field(None, description="meters, idle baselines, windows, timelines")
    bytes_wire: dict[str, dict[str, str]] = {}
    policies: dict[str, dict[str, Any]] = {}
    agent_exit: dict[str, AgentExit] = {}
    teardown_problems: list[str] = []
    rejected_messages: dict[str, int] = Field({}, description="control messages the run ignored, by reason: "
                                              "undecodable, from an identity it did not start, forged Results")
    attempts: list[dict[str, Any]] = Field([], description="earlier attempts of a resumed run (testbed run "
                                           "--resume): when each ran, how it ended, its rows, controller and agents")
    resumed: dict[str, Any] | None = Field(None, description="the last resume: rows replayed to the policies, "
                                           "rows issued, replayed choices that came out otherwise")

    def to_json(self) -> bytes:
        """The file's bytes."""
        return json.dumps(self.model_dump(mode="json"), indent=2, default=str).encode()


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A manifest of any earlier format, as the current one would say it."""
    version = data.get("format_version", 1)
    if version == 1:
        data = dict(data)
        for key, placeholder in (("shaping", "backend"), ("energy", "meters")):
            section = data.get(key)
            if isinstance(section, dict) and isinstance(section.get(placeholder), str) and (
                    section.get(placeholder) == "pending" or str(section.get(placeholder)).startswith("filled in")):
                data[key] = None
        exp = data.get("experiment")
        if isinstance(exp, dict) and isinstance(exp.get("resolved"), dict):
            resolved = dict(exp["resolved"])
            resolved["policies"] = [{k: v for k, v in entry.items() if v is not None or k in ("name", "label")}
                                    if isinstance(entry, dict) else entry for entry in resolved.get("policies", [])]
            data["experiment"] = {**exp, "resolved": resolved}
        data["format_version"] = 2
    if data["format_version"] == 2:
        data = {**data, "tiers": list(DEFAULT_TIERS), "format_version": MANIFEST_FORMAT}
    return data


def load(run_dir: Path) -> RunManifest:
    """The manifest of a run directory, upgraded to the current format."""
    path = run_dir / MANIFEST
    if not path.is_file():
        raise ResultsError(f"{run_dir} is not a run directory (no {MANIFEST}); give results/<experiment>/<run_id>")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: not readable JSON ({e}); the run's manifest is damaged") from e
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version", 1)
    if not isinstance(version, int) or version > MANIFEST_FORMAT:
        raise ResultsError(f"{path}: manifest format {version!r} is newer than this testbed's ({MANIFEST_FORMAT}); "
                           "upgrade testbed to read it")
    try:
        return RunManifest.model_validate(upgrade(data))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        raise ResultsError(f"{path}: not a testbed run manifest ({problems})") from e
