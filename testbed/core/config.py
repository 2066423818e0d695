"""Experiment and inventory files: typed models, one validation pass, every error at once.

Each problem names its YAML path (``policies[1].thresholds.mobile``), its line, the
bad value and what to do; an unknown key gets a "did you mean". The structural pass
is pydantic's; the semantic pass (:func:`testbed.checks.check_experiment`) checks what only the
pair experiment + inventory can tell (devices exist, tiers match, policy names).
This module reads files but keeps no state and starts nothing.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.protocol import tier_name_problem
from testbed.core.errors import ConfigError
from testbed.core.hops import shaped_links

M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- models


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are frozen, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PolicySpec(BaseModel):
    """One policy to run: its name, an optional label, and the policy's own keys.

    The policy's keys (``thresholds``, ``alpha``, ...) are checked by the policy itself
    (:func:`testbed.policies.check`): each policy module declares the keys it takes, with
    their defaults, bounds and meaning (docs/reference.md lists them per policy).
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(description="the policy: one of `testbed.policies.names()` (see the policy keys below)")
    label: str | None = Field(None, description="name in results; defaults to name")

    @property
    def key(self) -> str:
        """The value of the ``policy`` column."""
        return self.label or self.name


class SampleSpec(Strict):
    """Which samples the run draws from the bundle."""

    split: str = Field("test", description="the bundle's split the samples come from (val or test)")
    count: int | None = Field(None, ge=1, description="first N of the split; all when absent")
    warmup: int = Field(8, ge=0, description="warmup samples per policy, recorded with phase=warmup")
    repeat: int = Field(1, ge=1, le=10_000, description="cycle through the samples this many times per policy "
                        "(a long run from a small split: count x repeat measured samples; rows are streamed to disk)")


class RunSpec(Strict):
    """How samples are issued and rows written."""

    scenario: Literal["closed", "single-stream", "server", "offline"] = Field(
        "closed", description="MLPerf's load scenarios: closed (up to concurrency in flight, paced by interval_ms on "
        "a fixed grid); single-stream (one in flight); server (Poisson arrivals at rate_per_s from each first-tier "
        "device, latency counted from the scheduled time, so a slow system is not flattered by coordinated "
        "omission); offline (every sample issued at once: throughput)")
    rate_per_s: float | None = Field(None, gt=0, le=1_000_000, description="server: mean arrivals per second of "
                                     "each first-tier device")
    max_in_flight: int = Field(512, ge=1, le=100_000, description="server and offline: samples outstanding at once "
                               "at most (beyond it arrivals wait at the controller, and the wait counts)")
    concurrency: int = Field(1, ge=1, le=64, description="closed: samples in flight at once")
    interval_ms: float = Field(0.0, ge=0, description="closed: the k-th sample leaves no earlier than k x this after "
                               "the first (0: as soon as a slot is free); a fixed grid, so pacing does not drift; "
                               "paced samples meet the same idle tiers and token buckets whatever the links' delays")
    flush_rows: int = Field(64, ge=1, description="rows per parquet part written during the run")
    wait: Literal["block", "spin"] = Field(
        "block", description="how the controller waits for answers: block (sleeps in poll), or spin (busy-polls "
        "its socket, so an answer is stamped as it lands instead of when a sleeping CPU wakes, about 0.1 ms per "
        "answer on a VM; it keeps one CPU of the controller's machine busy for the run, so leave it off where "
        "agents share that machine with a package-level energy meter); agents always block")
    schedule_clock: Literal["run", "policy"] = Field(
        "run", description="what the link and CPU schedules' at_s count from: the run's first sample (run), or each "
        "policy's first sample, with every link and cap put back as configured before each policy (policy: every "
        "policy meets the same shortage, so an adaptive one can be set beside one that does not adapt)")


class TimeoutSpec(Strict):
    """Timeouts, in seconds, and the heartbeat liveness count."""

    hello_s: float = Field(60.0, ge=1, le=86_400, description="from starting the agents to every Hello (and each "
                           "clock ping)")
    configure_s: float = Field(60.0, ge=1, le=86_400, description="from Configure to Ready: loading the partitions")
    heartbeat_s: float = Field(0.5, ge=0.01, le=60, description="period of the heartbeats both ways")
    liveness: int = Field(6, ge=2, le=1000, description="heartbeats missed before a silent agent (or controller) is "
                          "declared lost")
    sample_s: float = Field(30.0, ge=0.01, le=86_400, description="longest wait for one sample's answer")
    stop_s: float = Field(5.0, ge=0.1, le=3600, description="grace after Stop before an agent is terminated, then "
                          "killed")


class EnergySpec(Strict):
    """Energy settings of a run."""

    idle_s: float = Field(2.0, ge=0, le=600, description="idle baseline per agent before samples; 0: none")
    batch_samples: int = Field(1, ge=1, le=100_000, description="samples per energy window on each device; above 1 "
                               "the window's energy is shared out by compute time (for meters slower than a sample)")
    min_window_s: float = Field(0.0, ge=0, le=600, description="an energy window also stays open at least this "
                                "long: set it to the slowest meter's update period so no window is approximate")


class DeploySpec(Strict):
    """Deploy and preflight settings of a run (SSH devices)."""

    max_clock_offset_ms: float = Field(100.0, gt=0, description="refuse a device whose clock is further off the "
                                       "controller's")


class ShapeStep(Strict):
    """A point of a link schedule: from ``at_s`` seconds into the run, these values replace the profile's."""

    at_s: float = Field(ge=0, description="seconds after the first sample is issued")
    delay_ms: float | None = Field(None, ge=0, description="the new one-way delay; absent: unchanged")
    jitter_ms: float | None = Field(None, ge=0, description="the new jitter; absent: unchanged")
    loss_pct: float | None = Field(None, ge=0, le=100, description="the new loss; absent: unchanged")
    rate_mbit: float | None = Field(None, gt=0, description="the new rate; absent: unchanged")


class LinkProfile(Strict):
    """How one hop is shaped, in both directions: delay, jitter, loss, rate, optionally a schedule."""

    delay_ms: float = Field(0.0, ge=0, description="one-way delay added in each direction")
    jitter_ms: float = Field(0.0, ge=0, description="uniform spread around the delay (at most the delay)")
    loss_pct: float = Field(0.0, ge=0, le=100, description="share of packets (netem) or messages (userspace) "
                            "dropped")
    rate_mbit: float | None = Field(None, gt=0, description="rate limit; none: unlimited")
    schedule: list[ShapeStep] | None = Field(None, description="changes during the run, in time order")


class CpuStep(Strict):
    """A point of the CPU schedule: from ``at_s`` seconds on, ``device`` gets this cap (one of the three)."""

    at_s: float = Field(ge=0, description="seconds after the first sample is issued (run.schedule_clock: of the run "
                        "or of each policy)")
    device: str = Field(description="a device id of the experiment, or a tier name (every device of that tier)")
    cores: float | None = Field(None, gt=0, le=1024, description="CPU time the agent may use, in cores (a cgroup "
                                "quota: cpu.max on cgroup v2, cpu.cfs_quota_us on v1); 0.5 is half of one core")
    max_freq_mhz: float | None = Field(None, gt=0, le=100_000, description="a ceiling on every CPU's clock "
                                       "(cpufreq scaling_max_freq; the whole board)")
    lift: bool = Field(False, description="remove this device's caps of the kinds it had (the cap it started with)")

    @model_validator(mode="after")
    def _one(self) -> CpuStep:
        given = [k for k in ("cores", "max_freq_mhz") if getattr(self, k) is not None] + (["lift"] if self.lift else [])
        if len(given) != 1:
            raise ValueError(f"a CPU step gives exactly one of cores, max_freq_mhz or lift: true; this one gives "
                             f"{given or 'none'}")
        return self


class CpuSpec(Strict):
    """CPU shortage during a run: caps that change on a schedule (emulated hosts, and boards that allow it)."""

    schedule: list[CpuStep] = Field(default_factory=list, description="changes during the run, in time order")

    def kinds(self, device: str, tier: str) -> list[str]:
        """The cap kinds the schedule changes on ``device`` (of ``tier``), so its agent opens them at Configure."""
        out = []
        for step in self.schedule:
            if step.device in (device, tier):
                kinds = ["cores" if step.cores is not None else "max_freq_mhz"] if not step.lift else []
                out += [k for k in kinds if k not in out]
        return out


class ShapingSpec(Strict):
    """Link shaping of a run: the backend and a profile per hop."""

    backend: str = Field("auto", pattern=r"^(auto|netem|userspace|none)$",
                         description="netem: tc on the devices; userspace: tbf/htb rate in the kernel, delay, jitter "
                                     "and loss in the agents; auto: netem where the kernel has it")
    links: dict[str, LinkProfile] = Field(default_factory=dict, description="mobile-edge, edge-cloud, "
                                          "controller-mobile, controller-edge, controller-cloud -> profile")


class CostSpec(Strict):
    """The paper cost model the report predicts with: a preset, optionally with some values replaced."""

    preset: str = Field("dimee", description="dimee, dimec-dc or splitee (testbed.core.costmodel.PRESETS), or a preset "
                        "of ``file``")
    file: str | None = Field(None, description="a presets file written by `testbed calibrate`")
    lam: dict[str, float] | None = Field(None, description="tier -> cost per layer, replacing the preset's")
    o: dict[str, float] | None = Field(None, description="hop (mobile-edge, edge-cloud) -> cost per offload")
    sweep_o: list[float] | None = Field(None, description="report the cost reductions again with every hop's o set "
                                        "to each of these (routes as measured)")
    sweep_lam: list[float] | None = Field(None, description="... and with every tier's lambda set to each of these")


#: names that become file names (experiments, device ids): no '/', no '..', no leading '-' or '.'
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def safe_name(value: str) -> str:
    """``value`` when it can name a file or directory of its own; else ValueError saying what can."""
    if not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{value[:80]!r} cannot name a file: use 1-64 letters, digits, '_', '.' or '-', starting "
                         "with a letter or digit")
    return value


#: a name that becomes a file name (:func:`safe_name`)
SafeName = Annotated[str, AfterValidator(safe_name)]
#: an onnxruntime execution provider's name
Provider = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,40}ExecutionProvider$")]


class TopologySpec(Strict):
    """Several devices per tier: which device of the next tier each device sends its offloads to."""

    assign: Literal["round-robin", "least-loaded", "hash"] | dict[str, str] = Field(
        "round-robin", description="round-robin: the i-th device of a tier offloads to the (i mod n)-th of the next; "
        "a map of device id -> next-tier device id (every device of a tier with a next tier named once); or per "
        "sample, the controller choosing each sample's device on every later tier: least-loaded (the one with the "
        "fewest samples in flight routed through it; ties in turn) or hash (by sample id: a sample always takes "
        "the same devices)")
    issue: Literal["round-robin", "least-loaded", "hash"] = Field(
        "round-robin", description="how samples are spread over the first tier's devices: round-robin (in turn, by "
        "issue order), least-loaded (the device with the fewest samples in flight; ties in turn) or hash (by sample "
        "id: a sample always goes to the same device); the server scenario draws each arrival's device itself")
    policy_state: Literal["per-source", "shared"] = Field(
        "per-source", description="a learning policy (SplitEE) keeps one state per first-tier device (per-source), "
        "as each device would learn on its own, or one for all of them (shared)")


class Experiment(Strict):
    """``experiments/<name>.yaml``."""

    name: SafeName = Field(description="results go to results/<name>/<run_id>/: 1-64 letters, digits, '_', '.', "
                           "'-', starting with a letter or digit")
    description: str = Field("", description="free text, kept in the manifest")
    bundle: str = Field(description="the partition bundle's directory (built by `testbed partition`)")
    devices: dict[str, str | list[str]] = Field(
        description="tier -> device id in the inventory, or a list of them (several devices per tier: see "
        "topology), for each of the bundle's tiers (mobile, edge and cloud; or two tiers such as mobile and cloud)")
    topology: TopologySpec = TopologySpec()
    samples: SampleSpec = SampleSpec()
    policies: list[PolicySpec] = Field(min_length=1, description="run one after the other, on the same samples")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of every random choice of the run (random policy, "
                      "bandits' ties)")
    run: RunSpec = RunSpec()
    energy: EnergySpec = EnergySpec()
    timeouts: TimeoutSpec = TimeoutSpec()
    cost: CostSpec = CostSpec()
    shaping: ShapingSpec = ShapingSpec()
    cpu: CpuSpec = CpuSpec()
    deploy: DeploySpec = DeploySpec()

    def tier_devices(self, tier: str) -> list[str]:
        """The device ids of ``tier``, in the order given (one or more)."""
        d = self.devices[tier]
        return [d] if isinstance(d, str) else list(d)

    def device_ids(self) -> list[str]:
        """Every device id of the run, tier by tier."""
        return [d for t in self.devices for d in self.tier_devices(t)]

    def next_device(self, tiers: Sequence[str], device: str) -> str | None:
        """The device of the next tier that ``device`` offloads to (None on the last tier)."""
        tier = next(t for t in tiers if device in self.tier_devices(t))
        i = list(tiers).index(tier)
        if i + 1 == len(tiers):
            return None
        nxt = self.tier_devices(tiers[i + 1])
        if isinstance(self.topology.assign, dict):
            return self.topology.assign[device]
        return nxt[self.tier_devices(tier).index(device) % len(nxt)]

    @property
    def per_sample(self) -> bool:
        """Whether the controller routes each sample over the later tiers' devices (topology.assign)."""
        return self.topology.assign in ("least-loaded", "hash")

    @property
    def several(self) -> bool:
        """Whether some tier has more than one device."""
        return any(len(self.tier_devices(t)) > 1 for t in self.devices)


class MeterSpec(Strict):
    """Which energy meter the agent opens; ``model`` needs calibrated idle and busy watts."""

    kind: str = Field("auto", pattern=r"^(auto|rapl|nvml|ina|pmic|external|model|none)$",
                      description="the meter; auto: the first of rapl, nvml, ina, pmic the device has, else none")
    idle_w: float | None = Field(None, ge=0, description="model: the device's idle power, calibrated")
    busy_w: float | None = Field(None, ge=0, description="model: its power with one core busy, calibrated")
    command: list[str] | None = Field(None, description="external: argv of a command printing watts per line")
    scale: float | None = Field(None, gt=0, le=10, description="pmic: the board's draw over the sum of the Pi 5 "
                                "PMIC's rails, measured once against a wall meter (the rails alone read low); "
                                "default: the rails only")


class DeviceSpec(Strict):
    """One device of ``inventory.yaml``.

    ``launcher: local`` runs the agent as a process of this machine; ``launcher: ssh`` deploys
    it over SSH (``host``, ``port``, ``user``, ``key_file``, host key checked against
    ``known_hosts``) into ``workdir`` and starts it there with ``python``.
    """

    id: SafeName = Field(description="the name experiments use for the device (its log file's name too): 1-64 "
                         "letters, digits, '_', '.', '-', starting with a letter or digit")
    tier: str = Field(description="mobile, edge or cloud: the tier it can serve")
    host: str = Field("127.0.0.1", description="address the controller reaches it at (SSH, probes)")
    launcher: str = Field("local", pattern=r"^(local|ssh)$", description="local: a process of this machine; "
                          "ssh: deployed and started over SSH")
    port: int = Field(22, ge=1, le=65535, description="ssh port")
    user: str | None = Field(None, description="ssh user; default: the controller's user")
    key_file: str | None = Field(None, description="ssh private key (key auth only)")
    known_hosts: str | None = Field(None, description="known_hosts file the host key is checked against; "
                                    "default ~/.ssh/known_hosts")
    workdir: str | None = Field(None, description="where the agent and its files live on the device "
                                "(default ~/testbed over SSH, the current directory locally)")
    python: str | None = Field(None, description="the device's interpreter (default python3 over SSH, this "
                               "one locally)")
    threads: int = Field(1, ge=1, le=256, description="onnxruntime intra-op threads")
    providers: list[Provider] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1,
                                      description="onnxruntime execution providers to try, in order (e.g. "
                                      "[TensorrtExecutionProvider, CUDAExecutionProvider] on a Jetson with the "
                                      "vendor's onnxruntime-gpu); those the device's onnxruntime lacks are left "
                                      "out, the CPU is the last resort, and the manifest records what ran")
    cpus: list[int] | None = Field(None, description="CPU ids the agent is pinned to (local emulation)")
    interface: str | None = Field(None, description="network interface shaping applies to")
    interfaces: dict[str, str] = Field(default_factory=dict, description="peer (tier, 'controller', or a device "
                                       "id where the next tier has several) -> interface toward it, where it "
                                       "differs from ``interface``")
    data_host: str | None = Field(None, description="address the previous tier (or the controller, for the first "
                                  "tier) reaches this agent's data socket at; default: host")
    controller_host: str | None = Field(None, description="address this device reaches the controller at; "
                                        "default: controller.advertise or controller.bind")
    meter: MeterSpec = MeterSpec()
    facts: dict[str, Any] = Field({}, description="what you know of the board (model, power supply), kept in "
                                  "the manifest")

    def interface_to(self, peer: str) -> str | None:
        """The interface this device sends to ``peer`` (a tier name or 'controller') through."""
        return self.interfaces.get(peer, self.interface)


class ControllerSpec(Strict):
    """Where the controller listens, and where it may run."""

    bind: str = Field("127.0.0.1", description="address the control socket binds to (0.0.0.0 only inside a "
                      "namespace of the emulation)")
    advertise: str | None = Field(None, description="address devices reach the controller at; default: bind")
    security: Literal["curve", "none"] = Field("curve", description="curve: every link CurveZMQ with keys made "
                                               "for the run (only its agents get in; each Result checked against "
                                               "its sender's key); none: plain sockets, for a network nobody else "
                                               "reaches")
    netns: str | None = Field(None, description="network namespace the controller must run in (the emulation's); "
                              "the CLI enters it")
    route_via: list[str] | None = Field(None, description="interfaces every device address must route through "
                                        "(checked with `ip route get` before any connection)")
    interfaces: dict[str, str] = Field(default_factory=dict, description="device id -> the controller's own "
                                       "interface toward it: a rate on a controller-<tier> link shapes its egress "
                                       "here with tc (needs root; the emulation names its veths)")


class Inventory(Strict):
    """``inventory.yaml``: the devices a run may use.

    ``defaults`` (ansible-style group vars) fill every key a device does not set itself.
    """

    controller: ControllerSpec = ControllerSpec()
    defaults: dict[str, Any] = Field(default_factory=dict, description="keys every device inherits")
    devices: list[DeviceSpec] = Field(min_length=1)

    def device(self, device_id: str) -> DeviceSpec:
        """The device with this id (KeyError when absent)."""
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def controller_address(self, device: DeviceSpec) -> str:
        """The address ``device`` reaches the controller at (its agent connects there; probes too).

        ``controller_host``, else ``controller.advertise``, else ``controller.bind``; a wildcard
        bind means 127.0.0.1 for a local agent (an SSH device without either key is refused
        when the inventory is loaded).
        """
        host = device.controller_host or self.controller.advertise or self.controller.bind
        return "127.0.0.1" if host in WILDCARDS else host


WILDCARDS = ("0.0.0.0", "*", "::", "")  # bind addresses nothing can connect to


# --------------------------------------------------------------------------- YAML + errors

Path_ = tuple[str | int, ...]


def _line_map(text: str) -> dict[Path_, int]:
    """1-based line of every key and item, by YAML path, from the composed node tree."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, path: Path_) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def format_path(loc: Path_) -> str:
    """``("policies", 1, "thresholds")`` -> ``policies[1].thresholds``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(root: type[BaseModel], loc: Path_) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc``, to suggest its field names."""
    current: Any = root
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            if typing.get_origin(current) in (list, dict):
                current = typing.get_args(current)[-1]
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
        while typing.get_origin(current) in (typing.Union, types.UnionType):
            current = next(a for a in typing.get_args(current) if a is not type(None))
        if typing.get_origin(current) in (list, dict):
            current = typing.get_args(current)[-1]
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def suggest(word: str, choices: list[str]) -> str:
    """`` did you mean 'x'?`` or the list of valid choices."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid: {', '.join(sorted(choices))}" if choices else ""


def validation_problems(model: type[BaseModel], e: ValidationError, lines: dict[Path_, int]) -> list[str]:
    """One line per pydantic error: YAML path, line, value, what is expected."""
    problems = []
    for err in e.errors():
        loc = tuple(err["loc"])
        line = lines.get(loc) or lines.get(loc[:-1])
        where = format_path(loc) + (f" (line {line})" if line else "")
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            names = list(parent.model_fields) if parent else []
            problems.append(f"{where}: unknown key {loc[-1]!r}{suggest(str(loc[-1]), names)}")
        elif err["type"] == "missing":
            problems.append(f"{where}: required key is missing")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
            problems.append(f"{where}: {err['msg'].lower()}, got {shown}")
    return problems


#: the largest config file read, and the most nodes its aliases may expand to (a YAML alias bomb is refused)
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """A safe loader that notes duplicate keys (plain YAML keeps the last one silently)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in first:
                self.duplicates.append(f"line {line}: key {str(key)[:40]!r} appears twice (first at line "
                                       f"{first[key]}); YAML would keep only the last: remove one")
            elif key is not None:
                first[key] = line
        return super().construct_mapping(node, deep)


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (shared nodes counted per use)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(v, memo) for v in node.value)
    else:
        total = 1
    memo[id(node)] = min(total, MAX_YAML_NODES + 1)
    return memo[id(node)]


def read_yaml(path: Path) -> tuple[Any, str]:
    """Parse a YAML file; returns (data, text).

    Raises ConfigError naming the file: a syntax error (with its line), a file that is not
    UTF-8 or larger than :data:`MAX_YAML_BYTES`, aliases expanding past :data:`MAX_YAML_NODES`,
    a key given twice in one mapping.
    """
    if not path.is_file():
        raise ConfigError(str(path), ["file does not exist; check the path (commands take --inventory FILE)"])
    raw = path.read_bytes()
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(str(path), [f"{len(raw):,} bytes: a config file is at most {MAX_YAML_BYTES:,}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(str(path), [f"line {line}, byte {e.start}: not UTF-8 ({e.reason}); save the file as "
                                      "UTF-8"]) from e
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise ConfigError(str(path), [f"its aliases expand to more than {MAX_YAML_NODES:,} values; a config "
                                          "needs far fewer: write the values out, or use fewer nested aliases"])
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML ({getattr(e, 'problem', e)})"]) from e
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(str(path), loader.duplicates)
    return data, text


#: more structural checks of a parsed file: (data, YAML path -> line) -> problems
MoreChecks = Callable[[dict[str, Any], dict[Path_, int]], list[str]]


def load_yaml_model(path: Path, model: type[M], prepare: Any = None, more: MoreChecks | None = None) -> M:
    """Load ``path`` into ``model``, raising one ConfigError that lists every problem.

    ``prepare(data) -> data``, when given, rewrites the parsed mapping before validation;
    ``more(data, lines)`` adds problems the model cannot see (reported with the model's).
    """
    data, text = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), [f"expected a mapping at the top level, got {type(data).__name__}"])
    if prepare is not None:
        data = prepare(data)
    lines = _line_map(text)
    extra = more(data, lines) if more is not None else []
    try:
        loaded = model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(str(path), validation_problems(model, e, lines) + extra) from e
    if extra:
        raise ConfigError(str(path), extra)
    return loaded


def load_inventory(path: Path) -> Inventory:
    """Load and check ``inventory.yaml`` (ids unique, tiers known, ``defaults`` applied)."""
    inv = load_yaml_model(path, Inventory, _apply_defaults)
    problems = []
    seen: set[str] = set()
    for i, d in enumerate(inv.devices):
        if d.id in seen:
            problems.append(f"devices[{i}].id: {d.id!r} appears twice; device ids must be unique")
        seen.add(d.id)
        bad_tier = tier_name_problem(d.tier)
        if bad_tier:
            problems.append(f"devices[{i}].tier: {bad_tier}")
        ncpu = os.cpu_count() or 1
        bad = [c for c in d.cpus or [] if not 0 <= c < ncpu]
        if bad or d.cpus == []:
            problems.append(f"devices[{i}].cpus: {d.cpus} is not a non-empty list of CPU ids of this machine "
                            f"(0..{ncpu - 1})")
        m = d.meter
        if m.kind == "model" and (m.idle_w is None or m.busy_w is None):
            problems.append(f"devices[{i}].meter: kind 'model' needs idle_w and busy_w (watts), calibrated "
                            "for this device with an external meter")
        elif m.kind == "external" and not m.command:
            problems.append(f"devices[{i}].meter: kind 'external' needs command: [argv of a program that prints "
                            "one power reading per line]")
        elif m.idle_w is not None and m.busy_w is not None and m.idle_w > m.busy_w:
            problems.append(f"devices[{i}].meter: idle_w={m.idle_w} is above busy_w={m.busy_w}")
        if d.launcher == "local" and d.python and not shutil.which(d.python):
            problems.append(f"devices[{i}].python: {d.python!r} is not an executable on this machine (launcher "
                            "local runs the agent here); give the interpreter's path, e.g. .venv38/bin/python")
        if d.launcher == "ssh" and d.host in ("127.0.0.1", "localhost") and not d.key_file:
            problems.append(f"devices[{i}]: launcher ssh to {d.host} without key_file; give the private key the "
                            "device accepts (key auth only), or use launcher: local")
        if d.launcher == "ssh" and inv.controller.bind in WILDCARDS and not (d.controller_host
                                                                              or inv.controller.advertise):
            problems.append(f"devices[{i}] ({d.id}): controller.bind is {inv.controller.bind!r}, which no device "
                            "can connect to, and neither controller.advertise nor this device's controller_host "
                            "says where it reaches the controller; set one to the controller's address on the "
                            "device's network")
        ids = {e.id for e in inv.devices}
        for peer in d.interfaces:
            if peer != "controller" and peer not in ids and tier_name_problem(peer):
                problems.append(f"devices[{i}].interfaces.{peer}: not a tier, a device or 'controller'"
                                f"{suggest(peer, ['controller', *sorted({e.tier for e in inv.devices})])}")
    if problems:
        raise ConfigError(str(path), problems)
    return inv


def _apply_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Every device gets the ``defaults`` keys it does not set (dicts merged one level deep)."""
    defaults = data.get("defaults")
    devices = data.get("devices")
    if not isinstance(defaults, dict) or not isinstance(devices, list):
        return data
    merged = []
    for dev in devices:
        if isinstance(dev, dict):
            out = dict(defaults)
            for k, v in dev.items():
                out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
            dev = out
        merged.append(dev)
    return {**data, "devices": merged}


def load_experiment(path: Path, policy_keys: Callable[[str], list[str] | None] | None = None) -> Experiment:
    """Load ``experiments/<name>.yaml`` (structure only; see :func:`testbed.checks.check_experiment`).

    ``policy_keys(name)``: the keys the named policy takes (None for an unknown name), so that a
    misspelt key of a policy entry is reported with its line, like any other unknown key.
    """
    if policy_keys is None:
        return load_yaml_model(path, Experiment)
    keys_of = policy_keys

    def unknown_policy_keys(data: dict[str, Any], lines: dict[Path_, int]) -> list[str]:
        entries = data.get("policies")
        problems = []
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            allowed = keys_of(str(entry.get("name"))) if isinstance(entry, dict) else None
            if allowed is None:
                continue
            for key in entry:
                if key not in ("name", "label", *allowed):
                    loc: Path_ = ("policies", i, key)
                    line = lines.get(loc)
                    problems.append(f"{format_path(loc)}{f' (line {line})' if line else ''}: unknown key {key!r}"
                                    f"{suggest(str(key), [*allowed, 'label'])} (policy {entry['name']} takes "
                                    f"{', '.join(allowed) or 'no keys but name and label'})")
        return problems

    return load_yaml_model(path, Experiment, more=unknown_policy_keys)


def resolve(base: Path, value: str) -> Path:
    """A path from a YAML file: absolute, or relative to the current directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def shaping_problems(shaping: ShapingSpec, tiers: Sequence[str]) -> list[str]:
    """Problems of the shaping section that its models cannot see alone: link names, jitter, schedule order.

    ``tiers``: the run's tiers in order; the links are the controller's to each tier and the offload links.
    """
    problems = []
    links = shaped_links(tiers)
    for name, prof in shaping.links.items():
        if name not in links:
            problems.append(f"shaping.links.{name}: not a link of a run with tiers {', '.join(tiers)}; links are "
                            f"{links}{suggest(name, links)}")
            continue
        if prof.jitter_ms > prof.delay_ms:
            problems.append(f"shaping.links.{name}.jitter_ms: {prof.jitter_ms} is larger than delay_ms "
                            f"{prof.delay_ms}; a delay cannot go below zero: raise delay_ms or lower jitter_ms")
        last = -1.0
        for i, step in enumerate(prof.schedule or []):
            if step.at_s <= last:
                problems.append(f"shaping.links.{name}.schedule[{i}].at_s: {step.at_s} does not come after "
                                f"{last}; give the steps in time order")
            last = step.at_s
    return problems
