"""A tiny bundle made with onnx.helper: real ONNX files, real hashes, no torch.

Three tiers by default (mobile, edge, cloud), or any others in order (``tiers=("mobile", "cloud")``):

first (mobile):  input_ids -> embedding (Gather) -> hidden_out; logits = mean over tokens @ W_m
middle (edge):   hidden -> hidden_out = hidden * 1.5; logits = mean @ W_e
last (cloud):    hidden -> logits = mean @ W_c
Weights are seeded, so confidences vary across samples and every tier gets exits
under a middling threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import yaml
from onnx import TensorProto, helper, numpy_helper

from agents.protocol import DEFAULT_TIERS
from agents.runtime import Partition, sha256_file
from testbed.build.encoder import Encoded, exit_table
from testbed.build.tiers import make_cut
from testbed.formats.bundle import BUNDLE_FORMAT, Bundle

VOCAB, HIDDEN, CLASSES = 64, 8, 3


def _pool_and_head(name: str, w: np.ndarray, nodes: list, inits: list) -> None:
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"W_{name}"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes.append(helper.make_node("ReduceMean", ["h", "axis1"], ["pooled"], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", f"W_{name}"], ["logits"]))


def _model(tier: str, rng: np.random.Generator, first_tier: bool, last_tier: bool) -> onnx.ModelProto:
    nodes: list = []
    inits: list = []
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    if first_tier:
        inits.append(numpy_helper.from_array(rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32), "emb"))
        nodes.append(helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0))
        first = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    else:
        inits.append(numpy_helper.from_array(np.array(1.5, np.float32), "scale"))
        nodes.append(helper.make_node("Mul", ["hidden", "scale"], ["h"]))
        first = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    # the mask is an input of every tier, as in the real bundles; keep it alive in the graph
    nodes.append(helper.make_node("Shape", ["attention_mask"], ["mask_shape"]))
    _pool_and_head(tier, rng.normal(size=(HIDDEN, CLASSES)) * 2.0, nodes, inits)
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
               helper.make_tensor_value_info("mask_shape", TensorProto.INT64, [2])]
    if not last_tier:
        nodes.append(helper.make_node("Identity", ["h"], ["hidden_out"]))
        outputs.insert(0, helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, ["batch", "seq", HIDDEN]))
    graph = helper.make_graph(nodes, f"tiny_{tier}", [first, mask], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_tiny_bundle(root: Path, n_test: int = 60, seed: int = 0,
                     tiers: tuple[str, ...] = DEFAULT_TIERS) -> Bundle:
    """Write a complete tiny bundle of ``tiers`` (one layer each) into ``root`` and return it, verified."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {t: f"{t}.onnx" for t in tiers}
    for i, t in enumerate(tiers):
        onnx.save(_model(t, rng, i == 0, i == len(tiers) - 1), str(root / files[t]))
    splits = {"val": 20, "test": n_test}
    ids = {k: [rng.integers(1, VOCAB, size=int(rng.integers(3, 12))).tolist() for _ in range(n)]
           for k, n in splits.items()}
    labels = {k: rng.integers(0, CLASSES, size=n) for k, n in splits.items()}
    rows = [{"split": k, "sample_id": i, "label": int(labels[k][i]), "text": f"s{i}", "input_ids": ids[k][i]}
            for k in splits for i in range(splits[k])]
    pd.DataFrame(rows).to_parquet(root / "samples.parquet", index=False)
    n_layers = len(tiers)
    cut = make_cut({t: (i + 1, i + 1) for i, t in enumerate(tiers)}, None, n_layers)
    sessions = {t: Partition.load(root / files[t], sha256_file(root / files[t])) for t in tiers}
    table = pd.concat([exit_table(sessions, cut, "hidden", k, Encoded(ids[k], None, labels[k])) for k in splits])
    table.to_parquet(root / "exits.parquet", index=False)
    specs = []
    for i, t in enumerate(tiers):
        test = table[table.split == "test"]
        acc = float((test[f"prediction_{t}"] == test["label"]).mean())
        inputs = [{"name": "input_ids" if i == 0 else "hidden", "dtype": "int64" if i == 0 else "float32",
                   "shape": ["batch", "seq"] if i == 0 else ["batch", "seq", HIDDEN]},
                  {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", CLASSES]},
                   {"name": "mask_shape", "dtype": "int64", "shape": [2]}]
        if i < n_layers - 1:
            outputs.insert(0, {"name": "hidden_out", "dtype": "float32", "shape": ["batch", "seq", HIDDEN]})
        specs.append({"tier": t, "layers": [i + 1], "file": files[t], "sha256": sha256_file(root / files[t]),
                      "size_bytes": (root / files[t]).stat().st_size, "inputs": inputs, "outputs": outputs,
                      "logits": "logits", "exit": {"layer": i + 1, "val_accuracy": acc, "test_accuracy": acc},
                      "exits": [{"layer": i + 1, "val_accuracy": acc, "test_accuracy": acc, "output": "logits"}],
                      "offload": {} if i == n_layers - 1 else {"hidden_out": "hidden",
                                                               "attention_mask": "attention_mask"}})
    doc = {"format_version": BUNDLE_FORMAT, "name": "tiny",
           "model": {"source": "tests/tinybundle.py", "architecture": "onnx-by-hand", "num_layers": n_layers,
                     "parameters": VOCAB * HIDDEN + n_layers * HIDDEN * CLASSES},
           "task": {"labels": ["a", "b", "c"]},
           "offload": {"mode": "hidden", "bytes_per_token": HIDDEN * 4 + 8, "bytes_fixed": 0,
                       "formula": f"seq_len * ({HIDDEN} * 4 + 8)"}, "exit_layers": list(range(1, n_layers + 1)),
           "tiers": specs,
           # one layer per tier: the tier graphs are the layer graphs too (a split point at every layer)
           "layer_graphs": [{"layer": i + 1, "file": spec["file"], "sha256": spec["sha256"],
                             "size_bytes": spec["size_bytes"], "inputs": [x["name"] for x in spec["inputs"]],
                             "outputs": [x["name"] for x in spec["outputs"]]} for i, spec in enumerate(specs)],
           "files": {f: sha256_file(root / f) for f in ("samples.parquet", "exits.parquet")},
           "data": {"splits": splits, "seed": seed},
           # no torch here, so nothing to compare ONNX with
           "parity": {"max_abs_diff": 0.0, "tolerance": 0.0, "batch": 0, "padded": False},
           "build": {"seconds": 0.0, "torch": "none", "python": "tests/tinybundle.py", "spec": {"tiny": True},
                     "spec_sha256": "tiny", "cpu_count": None}}
    (root / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    bundle = Bundle.load(root)
    bundle.verify()
    return bundle
