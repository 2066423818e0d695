"""Read and verify a partition bundle: ``bundle.yaml`` plus its ``.onnx`` and data files.

A bundle is what the builder (``testbed.build.pipeline``) writes and what deploy pushes:
one ONNX file per tier, each with an exit head, and the data the run draws samples
from. This module does no torch and no network; it only reads files.

Format history:
    1: tiers with layers, file, sha256, inputs/outputs, exit accuracy, offload map;
       samples.parquet (tokenised splits) and exits.parquet (per-sample exit table).
    2: exits at any layer (``exit_layers``, per tier ``exits``), ``offload`` (mode and bytes
       per token), mobile-tier ``variants`` (fp16/int8), ``training`` settings,
       cartography.parquet and the tokenizer files hashed, token_type_ids for sentence pairs;
       (2026-12-02, optional) ``layer_graphs``: one graph per layer, a split point at every layer;
       (2026-12-02, optional) ``router``: DIMEC-DC's pool router for the first tier (``difficulty.onnx``)
       and ``pool_<name>`` columns in exits.parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from agents.protocol import tier_name_problem
from agents.runtime import sha256_file
from testbed.core.errors import BundleError

BUNDLE_FORMAT = 2
REPLAY_TOLERANCE = 1e-4
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def inside(path: str) -> str:
    """``path`` when it names a file inside the bundle: relative, '/'-separated, no '..', no NUL; else ValueError."""
    parts = PurePosixPath(path).parts
    if (not path or "\x00" in path or "\\" in path or path.startswith("/") or ".." in parts
            or path.startswith("~")):
        raise ValueError(f"{path[:80]!r} is not a file inside the bundle: give a relative path without '..' "
                         "(a bundle names only its own files)")
    return path


#: a file of the bundle, confined to its directory (checked when bundle.yaml is read)
BundleFile = Annotated[str, AfterValidator(inside)]


class TensorSpec(BaseModel):
    """Name, dtype and symbolic shape of a graph input or output."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dtype: str
    shape: list[str | int]


class ExitSpec(BaseModel):
    """An exit head: after which layer, its ONNX output, and how accurate it is on each split."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layer: int
    val_accuracy: float
    test_accuracy: float
    output: str = "logits"


class VariantSpec(BaseModel):
    """A lower-precision copy of one tier's partition (fp16 or int8) and what it costs in accuracy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    tier: str
    file: BundleFile
    sha256: str
    size_bytes: int
    exits: list[dict[str, float]]
    final: dict[str, float]
    max_confidence_diff: float


class TierSpec(BaseModel):
    """One tier's partition."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tier: str
    layers: list[int]
    runs_layers: list[int] | None = None
    file: BundleFile
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    logits: str
    exit: ExitSpec
    exits: list[ExitSpec] = []
    offload: dict[str, str]


class LayerGraphSpec(BaseModel):
    """One layer of the model as a graph of its own, for split points at every layer.

    ``L1`` takes the first tier's inputs (tokens), every other one ``hidden`` and ``attention_mask``;
    each outputs its exit's ``logits`` and, but the last, ``hidden_out`` for the next layer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    layer: int = Field(description="the layer it runs (1-based)")
    file: BundleFile
    sha256: str
    size_bytes: int
    inputs: list[str]
    outputs: list[str]


class OffloadSpec(BaseModel):
    """What crosses a tier boundary and how many bytes it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: str = Field(description="hidden (hidden states), input (the tokens again) or features (a feature map)")
    bytes_per_token: int = Field(description="bytes per token of sequence length (0 for a fixed-size tensor)")
    bytes_fixed: int = Field(0, description="bytes that do not depend on the sequence length")
    formula: str = Field(description="the formula, for people")
    bytes_by_hop: dict[str, int] = Field({}, description="fixed-size offloads: bytes on each hop")
    test_seq_len_median: float | None = Field(None, description="median token count of the test split")
    test_bytes_median: float | None = Field(None, description="bytes of an offload of that length")


class DataInfo(BaseModel):
    """How many samples each split holds, and the seed of the shuffle that made them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    splits: dict[str, int]
    seed: int


class ParityInfo(BaseModel):
    """How closely onnxruntime reproduced torch at build time."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_abs_diff: float = Field(description="largest |onnxruntime - torch| over every output of every tier")
    tolerance: float = Field(description="the largest difference the build accepts")
    batch: int = Field(description="samples in the compared batch")
    padded: bool = Field(description="whether the batch was padded (padding must not leak into any exit)")


class BuildInfo(BaseModel):
    """Who built the bundle, from what, and how long it took."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seconds: float
    torch: str
    transformers: str | None = None
    python: str
    spec: dict[str, Any] = Field(description="the partition spec, as validated")
    spec_sha256: str = Field(description="hash of the spec without its output directory (``--if-missing``)")
    cpu_count: int | None


class ConnectionCost(BaseModel):
    """Adaptive ResNet: validation accuracy with one connection (a skip or a residual branch) dropped alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    connection: str
    val_accuracy: float
    accuracy_cost: float


class ResNetVariantSpec(BaseModel):
    """Adaptive ResNet: the network with some connections dropped, exported tier by tier."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    dropped: list[str]
    files: dict[str, BundleFile]
    sha256: dict[str, str]
    exits: list[dict[str, Any]] = Field(description="per tier: block, tier, val_accuracy, test_accuracy")
    val_accuracy: float
    test_accuracy: float
    macs: dict[str, int] = Field(description="multiply-accumulates of one sample on each tier")
    macs_total: int
    bytes_per_offload: dict[str, int]
    parameters: int


class ModelInfo(BaseModel):
    """The source model. Keys of the other kind of model are absent (a transformer has no depth)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(description="what the spec named: a hub name, a directory, builtin:minilm-l6, resnet-8")
    architecture: str = Field(description="bert, roberta, ... or cifar-resnet")
    num_layers: int = Field(description="encoder layers, or residual blocks")
    parameters: int
    path: str | None = Field(None, description="transformer: where the weights were loaded from")
    hidden_size: int | None = Field(None, description="transformer: width of the hidden states")
    kind: Literal["local", "hub"] | None = Field(None, description="transformer: a local directory or the hub")
    files_sha256: dict[str, str] | None = Field(None, description="local weights: each file's sha256")
    revision: str | None = Field(None, description="hub weights: the commit")
    depth: int | None = Field(None, description="ResNet: 6n+2 layers")
    widths: list[int] | None = Field(None, description="ResNet: channels of the three stages")
    blocks_per_stage: int | None = Field(None, description="ResNet: n")
    layers_are: str | None = Field(None, description="ResNet: what a 'layer' of the cut is")


class TaskInfo(BaseModel):
    """The task: classes and what shapes the inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: list[str] = Field(description="class names, index = class id")
    data: str | None = Field(None, description="the data the spec named")
    data_path: str | None = Field(None, description="where it was read from")
    max_length: int | None = Field(None, description="transformer: tokens per sample at most")
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    token_type_ids: bool | None = Field(None, description="transformer: the samples carry token types (pairs)")
    input_shape: list[int] | None = Field(None, description="ResNet: channels, height, width of an image")
    normalize: dict[str, list[float]] | None = Field(None, description="ResNet: per-channel mean and std applied")


class TrainingInfo(BaseModel):
    """How the exits (and the backbone, or the ResNet) were trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    what: str
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float
    finetune: bool | None = None
    backbone_lr: float | None = None
    drop_prob: float | None = None
    dynamics: str | None = Field(None, description="what cartography.parquet holds")


class RouterSpec(BaseModel):
    """DIMEC-DC's pool router: predicts a sample's training-dynamics pool from the first tier's hidden state."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: BundleFile
    sha256: str
    size_bytes: int
    tier: str = Field(description="the tier that runs it, after its own graph (the first)")
    layer: int = Field(description="the layer whose hidden state it reads (the first tier's last)")
    pools: list[str] = Field(description="the pools it scores, easiest first (its output order)")
    clustered_on: list[int] = Field(description="exit layers whose training dynamics were clustered")
    epochs: int = Field(description="training epochs the dynamics span")
    centroids: dict[str, dict[str, float]] = Field(description="per pool: size, mean confidence and variability")
    train_samples: int
    train_accuracy: float = Field(description="share of training samples it puts in their own pool")
    method: str = Field(description="how the pools and the router were made")


class BundleSpec(BaseModel):
    """The whole ``bundle.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int
    kind: str = "transformer"
    name: str
    model: ModelInfo
    task: TaskInfo
    offload: OffloadSpec
    exit_layers: list[int]
    tiers: list[TierSpec]
    layer_graphs: list[LayerGraphSpec] = Field([], description="one graph per layer, in order, when the bundle "
                                               "offers a split point at every layer")
    router: RouterSpec | None = None
    variants: list[VariantSpec] = []
    resnet_variants: list[ResNetVariantSpec] = []
    connections: list[ConnectionCost] = []
    files: dict[BundleFile, str]
    data: DataInfo
    training: TrainingInfo | None = None
    parity: ParityInfo
    build: BuildInfo


@dataclass(frozen=True)
class Samples:
    """Tokenised samples of one split, unpadded, in the bundle's stored order."""

    sample_id: np.ndarray
    label: np.ndarray
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.sample_id)

    def tensors(self, i: int) -> dict[str, np.ndarray]:
        """The first tier's inputs for sample ``i`` (a batch of one, no padding)."""
        if self.images is not None:
            return {"pixels": self.images[i:i + 1]}
        ids = self.input_ids[i].astype(np.int64)[None, :]
        out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[i].astype(np.int64)[None, :]
        return out


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its directory and parsed ``bundle.yaml``."""

    root: Path
    spec: BundleSpec

    @classmethod
    def load(cls, root: Path | str) -> Bundle:
        """Parse ``root/bundle.yaml``; checks the format, not the hashes (see :meth:`verify`)."""
        root = Path(root)
        path = root / "bundle.yaml"
        if not path.is_file():
            raise BundleError(
                f"{path} does not exist: build the bundle first "
                f"(`testbed partition --config partitions/specs/<name>.yaml`, or `make demo` for the default one)"
            )
        try:
            raw = yaml.safe_load(path.read_text())
            spec = BundleSpec.model_validate(raw)
        except (yaml.YAMLError, ValidationError) as e:
            raise BundleError(f"{path} is not a valid bundle.yaml: {e}") from e
        if spec.format_version != BUNDLE_FORMAT:
            raise BundleError(f"{path}: format_version {spec.format_version}, this testbed reads {BUNDLE_FORMAT}; "
                              "rebuild the bundle")
        tiers = [t.tier for t in spec.tiers]
        problems = [f"tiers[{i}].tier: {bad}" for i, t in enumerate(tiers) if (bad := tier_name_problem(t))]
        if len(tiers) < 2 or len(set(tiers)) != len(tiers):
            problems.append(f"tiers are {tiers}: a bundle needs two or more distinct tiers, in the order a sample "
                            "crosses them")
        if problems:
            raise BundleError(f"{path}: " + "; ".join(problems) + "; rebuild the bundle")
        return cls(root, spec)

    @property
    def tiers(self) -> tuple[str, ...]:
        """The bundle's tiers, in the order a sample crosses them: a run's tiers."""
        return tuple(t.tier for t in self.spec.tiers)

    @property
    def layers_run(self) -> dict[str, int]:
        """Tier -> the layers its graph runs on a full pass (the cost model's input), in the tiers' order."""
        return {t.tier: len(t.runs_layers or t.layers) for t in self.spec.tiers}

    def tier(self, name: str) -> TierSpec:
        """The spec of one tier."""
        for t in self.spec.tiers:
            if t.tier == name:
                return t
        raise BundleError(f"bundle {self.root}: no tier {name!r}")

    def device_files(self, tier: str) -> dict[str, str]:
        """The files a device of ``tier`` needs (its partition and every variant of it): file -> sha256."""
        out = {t.file: t.sha256 for t in self.spec.tiers if t.tier == tier}
        out |= {v.file: v.sha256 for v in self.spec.variants if v.tier == tier}
        out |= {v.files[tier]: v.sha256[tier] for v in self.spec.resnet_variants if tier in v.files}
        out |= {g.file: g.sha256 for g in self.spec.layer_graphs}  # any tier may run any layer
        if self.spec.router is not None and self.spec.router.tier == tier:
            out[self.spec.router.file] = self.spec.router.sha256
        return out

    def missing_files(self) -> list[str]:
        """Files that ``bundle.yaml`` names but that are absent."""
        names = ([t.file for t in self.spec.tiers] + [v.file for v in self.spec.variants] + list(self.spec.files)
                 + [f for v in self.spec.resnet_variants for f in v.files.values()]
                 + [g.file for g in self.spec.layer_graphs]
                 + ([self.spec.router.file] if self.spec.router else []))
        return [n for n in names if not (self.root / n).is_file()]

    def verify(self) -> dict[str, str]:
        """Check every file's sha256; returns {file: sha256}. Raises on the first mismatch."""
        missing = self.missing_files()
        if missing:
            raise BundleError(f"bundle {self.root}: missing {', '.join(missing)}; rebuild it with `testbed partition`")
        hashes = ({t.file: t.sha256 for t in self.spec.tiers} | {v.file: v.sha256 for v in self.spec.variants}
                  | dict(self.spec.files)
                  | {v.files[t]: v.sha256[t] for v in self.spec.resnet_variants for t in v.files}
                  | {g.file: g.sha256 for g in self.spec.layer_graphs}
                  | ({self.spec.router.file: self.spec.router.sha256} if self.spec.router else {}))
        for name, want in hashes.items():
            got = sha256_file(self.root / name)
            if got != want:
                raise BundleError(f"bundle {self.root}: {name} has sha256 {got[:16]}…, bundle.yaml says {want[:16]}…; "
                                  "the file changed after the build: rebuild the bundle")
        return hashes

    @property
    def labels(self) -> list[str]:
        """Class names, index = class id."""
        return list(self.spec.task.labels)

    def samples(self, split: str) -> Samples:
        """Load the tokenised samples of ``split`` from ``samples.parquet``."""
        df = pd.read_parquet(self.root / "samples.parquet", filters=[("split", "==", split)])
        if df.empty:
            raise BundleError(f"bundle {self.root}: split {split!r} has no samples; "
                              f"splits: {sorted(self.spec.data.splits)}")
        df = df.sort_values("sample_id")
        if "pixels" in df.columns:
            shape = [len(df), *(self.spec.task.input_shape or [])]
            images = np.stack(list(df["pixels"])).astype(np.float32).reshape(shape)
            return Samples(df["sample_id"].to_numpy(np.int64), df["label"].to_numpy(np.int64), [], None, images)
        types = ([np.asarray(x, dtype=np.int64) for x in df["token_type_ids"]]
                 if "token_type_ids" in df.columns else None)
        return Samples(df["sample_id"].to_numpy(np.int64), df["label"].to_numpy(np.int64),
                       [np.asarray(x, dtype=np.int64) for x in df["input_ids"]], types)

    def tables(self) -> set[str]:
        """The tables this bundle can give a policy: exit tables always; training dynamics, ResNet variants."""
        out = {"exits", "val_exits"}
        if (self.root / "cartography.parquet").is_file():
            out.add("cartography")
        if self.spec.resnet_variants:
            out.add("resnet_variants")
        if self.spec.layer_graphs:
            out.add("layer_graphs")
        if self.spec.router is not None:
            out.add("router")
        return out

    def cartography(self) -> pd.DataFrame:
        """The training dynamics (``cartography.parquet``) that the cartography policy is fitted on."""
        path = self.root / "cartography.parquet"
        if not path.is_file():
            raise BundleError(f"bundle {self.root}: the cartography policy needs cartography.parquet (training "
                              "dynamics); rebuild the bundle with this testbed's `testbed partition`")
        return pd.read_parquet(path)

    def exits(self, split: str) -> pd.DataFrame:
        """The per-sample exit table (prediction and confidence at every exit) of ``split``."""
        df = pd.read_parquet(self.root / "exits.parquet", filters=[("split", "==", split)])
        return df.sort_values("sample_id").reset_index(drop=True)

    @property
    def offload_mode(self) -> str:
        """``hidden`` (the next tier continues from the intermediate tensor) or ``input`` (it re-runs from tokens)."""
        return self.spec.offload.mode

    def offload_bytes(self, seq_len: int) -> int:
        """Payload bytes of one offload of a sample of ``seq_len`` tokens, as the bundle states them."""
        return self.spec.offload.bytes_per_token * seq_len + self.spec.offload.bytes_fixed

    def check_graphs(self) -> list[str]:
        """Load every tier's ONNX file and compare its inputs and outputs with ``bundle.yaml``.

        Returns one line per mismatch (name, dtype or rank); empty when all agree.
        """
        import onnxruntime as ort

        problems = []
        files = [(t.tier, t.file, t) for t in self.spec.tiers] + [
            (f"{v.tier} ({v.name})", v.file, self.tier(v.tier)) for v in self.spec.variants]
        for label, file, spec in files:
            sess = ort.InferenceSession(str(self.root / file), providers=["CPUExecutionProvider"])
            for kind, got, want in (("input", sess.get_inputs(), spec.inputs), ("output", sess.get_outputs(),
                                                                                   spec.outputs)):
                got_d = {a.name: a for a in got}
                for w in want:
                    g = got_d.get(w.name)
                    if g is None:
                        problems.append(f"{label}: {file} has no {kind} {w.name!r} (it has {sorted(got_d)})")
                        continue
                    dtype = ORT_DTYPES.get(g.type, g.type)
                    if dtype != w.dtype:
                        problems.append(f"{label}: {kind} {w.name!r} is {g.type}, bundle.yaml says {w.dtype}")
                    if len(g.shape) != len(w.shape):
                        problems.append(f"{label}: {kind} {w.name!r} has rank {len(g.shape)}, bundle.yaml says "
                                        f"{len(w.shape)} ({w.shape})")
                extra = sorted(set(got_d) - {w.name for w in want})
                if extra:
                    problems.append(f"{label}: {file} has {kind}s {extra} that bundle.yaml does not list")
        return problems

    def replay(self, split: str = "val", n: int = 32) -> float:
        """Re-run the tier chain on ``n`` samples of ``split`` and compare with ``exits.parquet``.

        Returns the largest difference between a recorded and a recomputed confidence; a
        prediction that differs raises. This is the parity check that needs no torch.
        """
        from agents.runtime import Partition, top1

        sessions = {t.tier: Partition.load(self.root / t.file, t.sha256, threads=1) for t in self.spec.tiers}
        samples = self.samples(split)
        table = self.exits(split).set_index("sample_id")
        worst = 0.0
        for i in range(min(n, len(samples))):
            feed = samples.tensors(i)
            cur = feed
            sid = int(samples.sample_id[i])
            for t in self.spec.tiers:
                out = sessions[t.tier].run(cur)
                for e in t.exits or [t.exit]:
                    conf, pred = top1(out[e.output][0])
                    col = f"L{e.layer}" if t.exits else t.tier
                    want_p = int(table.at[sid, f"prediction_{col}"])  # type: ignore[arg-type]
                    want_c = float(table.at[sid, f"confidence_{col}"])  # type: ignore[arg-type]
                    if pred != want_p and abs(conf - want_c) > REPLAY_TOLERANCE:
                        raise BundleError(f"bundle {self.root}: {split} sample {sid}, exit {col}: onnxruntime "
                                          f"predicts {pred} ({conf:.4f}), exits.parquet says {want_p} "
                                          f"({want_c:.4f}); the files do not belong together: rebuild")
                    worst = max(worst, abs(conf - want_c))
                nxt = {dst: out[src] if src in out else cur[src] for src, dst in t.offload.items()}
                cur = feed if self.offload_mode == "input" else nxt
        return worst
