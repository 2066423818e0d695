"""Adaptive ResNet bundles (paper 4): a CIFAR-style ResNet whose connections can be dropped.

The network is the CIFAR ResNet of He et al. (depth 6n+2: a 3x3 stem, three stages of n
basic blocks with widths 16/32/64, global average pooling, a linear classifier), with an
exit head (pool + linear) at each tier boundary. Blocks are numbered 1..3n like layers,
so ``tiers`` cut it exactly as a transformer is cut.

Two kinds of connection can be dropped at inference time:

- ``skip:<b>``: block b's shortcut; the block computes relu(F(x)) instead of relu(F(x) + x);
- ``block:<b>``: block b's residual branch (only where the shortcut is the identity); the
  block passes x through, so its convolutions disappear from the graph.

Training (all exits jointly) drops each connection at random with ``drop_prob`` (stochastic
depth), so that the trained network tolerates it. Then, as in the paper, the cost of each
connection is measured: validation accuracy with that connection alone dropped. Variants
drop the cheapest connections cumulatively (1, 2, ... up to ``max_variants``); each is
exported as three ONNX tiers with its accuracy per exit, its multiply-accumulates per tier
and its bytes per offload, so a policy can pick the variant that fits the resources.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.protocol import TIERS
from agents.runtime import Partition, sha256_file, top1, top1_entropy
from testbed.formats.bundle import BUNDLE_FORMAT
from testbed.build.datasets import split_indices
from testbed.core.errors import BuildError
from testbed.build.images import load_image_dataset
from testbed.build.common import PARITY_TOLERANCE, Progress, SplitSizes, spec_sha256
from testbed.build.tiers import Cut, CutError, make_cut


class ResNetSplit(SplitSizes):
    """Split sizes for image data (defaults fit scikit-learn digits, 1,797 images)."""

    train: int = Field(1200, ge=10)
    val: int = Field(300, ge=10)
    test: int = Field(297, ge=10)


class ResNetTraining(BaseModel):
    """Joint training of every exit, with stochastic dropping of connections."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    drop_prob: float = Field(0.1, ge=0, lt=1, description="chance of dropping each connection per batch")


class ResNetSpec(BaseModel):
    """``partitions/specs/<name>.yaml`` with ``kind: resnet``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["resnet"] = "resnet"
    name: str
    out: str
    data: str = "builtin:digits"
    image_size: int = Field(28, ge=4, description="side of folder / Hugging Face images after resizing")
    image_column: str = "image"
    label_column: str = "label"
    blocks_per_stage: int = Field(1, ge=1, le=9, description="n of depth 6n+2")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=3, max_length=3)
    tiers: dict[str, list[int]] = Field(description="tier -> [first_block, last_block], 1-based, inclusive")
    max_variants: int = Field(4, ge=0)
    threads: int = Field(2, ge=1)
    split: ResNetSplit = ResNetSplit()
    training: ResNetTraining = ResNetTraining()

    @model_validator(mode="after")
    def _cut_is_sound(self) -> ResNetSpec:
        try:
            self.cut()
        except CutError as e:
            raise ValueError(str(e).replace("layer", "block")) from None
        return self

    def cut(self) -> Cut:
        """Tiers over blocks; exits at the tier boundaries only."""
        n = 3 * self.blocks_per_stage
        return make_cut({k: list(v) for k, v in self.tiers.items()}, [v[-1] for v in self.tiers.values()], n)


def _net(spec: ResNetSpec, channels: int, n_classes: int) -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.identity = stride == 1 and cin == cout
            self.shortcut = nn.Identity() if self.identity else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            self.use_skip = True
            self.use_branch = True

        def forward(self, x: Any) -> Any:
            if not self.use_branch:
                return x
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + self.shortcut(x) if self.use_skip else out)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            w = spec.widths
            self.stem = nn.Sequential(nn.Conv2d(channels, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
            blocks, cin = [], w[0]
            for s, cout in enumerate(w):
                for i in range(spec.blocks_per_stage):
                    blocks.append(Block(cin, cout, 2 if s > 0 and i == 0 else 1))
                    cin = cout
            self.blocks = nn.ModuleList(blocks)
            cut = spec.cut()
            self.exit_blocks = list(cut.exits)
            self.heads = nn.ModuleDict({str(b): nn.Linear(self.blocks[b - 1].bn2.num_features, n_classes)
                                        for b in self.exit_blocks})

        def forward(self, x: Any) -> list[Any]:
            h = self.stem(x)
            out = []
            for b, block in enumerate(self.blocks, start=1):
                h = block(h)
                if str(b) in self.heads:
                    out.append(self.heads[str(b)](h.mean((2, 3))))
            return out

    return Net()


class _TierPart:
    """Factory of torch modules for one tier of one variant (built on the shared trained net)."""

    @staticmethod
    def make(net: Any, cut: Cut, tier: str) -> Any:
        import torch

        class Part(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                first, last = cut.tiers[tier]
                self.stem = net.stem if tier == TIERS[0] else None
                self.blocks = torch.nn.ModuleList(net.blocks[first - 1:last])
                self.head = net.heads[str(last)]
                self.final = tier == TIERS[-1]

            def forward(self, x: Any) -> Any:
                h = self.stem(x) if self.stem is not None else x
                for block in self.blocks:
                    h = block(h)
                logits = self.head(h.mean((2, 3)))
                return logits if self.final else (h, logits)

        return Part().eval()


def _connections(net: Any) -> list[str]:
    out = []
    for b, block in enumerate(net.blocks, start=1):
        out.append(f"skip:{b}")
        if block.identity:
            out.append(f"block:{b}")
    return out


def _apply(net: Any, dropped: list[str]) -> None:
    for block in net.blocks:
        block.use_skip, block.use_branch = True, True
    for c in dropped:
        kind, b = c.split(":")
        setattr(net.blocks[int(b) - 1], "use_skip" if kind == "skip" else "use_branch", False)


def _macs(part: Any, x: Any) -> int:
    """Multiply-accumulates of one forward of ``part`` on ``x`` (convolutions and linear layers)."""
    import torch

    total = 0

    def conv(m: Any, _i: Any, o: Any) -> None:
        nonlocal total
        total += int(o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def lin(m: Any, _i: Any, o: Any) -> None:
        nonlocal total
        total += int(o.numel() * m.in_features)

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else lin)
             for m in part.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.no_grad():
        part(x)
    for h in hooks:
        h.remove()
    return total


def _accuracy(net: Any, x: Any, y: np.ndarray) -> list[float]:
    import torch

    with torch.no_grad():
        return [float((lg.argmax(1).numpy() == y).mean()) for lg in net(x)]


def _export(part: Any, path: Path, example: Any, first: bool, final: bool) -> None:
    import torch

    inp = "pixels" if first else "features"
    outs = ["logits"] if final else ["features_out", "logits"]
    axes = {inp: {0: "batch"}, "logits": {0: "batch"}} | ({} if final else {"features_out": {0: "batch"}})
    with torch.no_grad():
        torch.onnx.export(part, (example,), str(path), input_names=[inp], output_names=outs, dynamic_axes=axes,
                          opset_version=17, dynamo=False)


def _chain(sessions: dict[str, Partition], x: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    outs, cur = {}, {"pixels": x}
    for tier in TIERS:
        outs[tier] = sessions[tier].run(cur)
        if "features_out" in outs[tier]:
            cur = {"features": outs[tier]["features_out"]}
    return outs


def build_resnet_bundle(spec: ResNetSpec, out: Path, final_out: Path, progress: Progress) -> None:
    """Train, rank connections, export every variant and write ``bundle.yaml`` into ``out``."""
    import torch
    import torch.nn.functional as F

    t_start = time.perf_counter()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.split.seed)
    data = load_image_dataset(spec.data, spec.image_size, spec.image_column, spec.label_column)
    splits = split_indices(len(data.label), spec.split.model_dump(exclude={"seed"}), spec.split.seed)
    shape = list(data.images.shape[1:])
    progress(f"data {data.source}: {len(data.label)} images {shape}, {len(data.labels)} classes; "
             + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    mean = data.images[splits["train"]].mean(axis=(0, 2, 3), keepdims=True)
    std = data.images[splits["train"]].std(axis=(0, 2, 3), keepdims=True) + 1e-6
    x = {k: ((data.images[v] - mean) / std).astype(np.float32) for k, v in splits.items()}
    y = {k: data.label[v] for k, v in splits.items()}
    cut = spec.cut()
    net = _net(spec, shape[0], len(data.labels))
    conns = _connections(net)
    depth = 6 * spec.blocks_per_stage + 2
    progress(f"training ResNet-{depth} ({sum(p.numel() for p in net.parameters()) / 1e3:.0f} k parameters), exits "
             f"after blocks {list(cut.exits)}, {spec.training.epochs} epochs, drop_prob {spec.training.drop_prob}")
    opt = torch.optim.AdamW(net.parameters(), lr=spec.training.lr, weight_decay=spec.training.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.training.epochs)
    rng = np.random.default_rng(spec.split.seed)
    xt, yt = torch.from_numpy(x["train"]), torch.from_numpy(y["train"])
    xv = torch.from_numpy(x["val"])
    for epoch in range(spec.training.epochs):
        net.train()
        perm = rng.permutation(len(yt))
        for start in range(0, len(perm), spec.training.batch_size):
            idx = perm[start:start + spec.training.batch_size]
            _apply(net, [c for c in conns if rng.random() < spec.training.drop_prob])
            loss = sum(F.cross_entropy(lg, yt[idx]) for lg in net(xt[idx])) / len(cut.exits)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        _apply(net, [])
        net.eval()
        acc = _accuracy(net, xv, y["val"])
        progress(f"epoch {epoch + 1}/{spec.training.epochs}: val accuracy by exit "
                 + " ".join(f"B{b}={a:.3f}" for b, a in zip(cut.exits, acc, strict=True)))
    net.eval()
    full_acc = _accuracy(net, xv, y["val"])[-1]
    costs = []
    for c in conns:  # the paper's measurement: what does dropping this one connection cost?
        _apply(net, [c])
        acc = _accuracy(net, xv, y["val"])[-1]
        costs.append({"connection": c, "val_accuracy": acc, "accuracy_cost": full_acc - acc})
    _apply(net, [])
    costs.sort(key=lambda r: (r["accuracy_cost"], r["connection"]))
    progress("cost of dropping each connection alone (val accuracy lost): "
             + ", ".join(f"{r['connection']} {r['accuracy_cost']:+.3f}" for r in costs))
    plans: list[list[str]] = [[]]
    chosen: list[str] = []
    for r in costs:
        if len(plans) > spec.max_variants:
            break
        b = r["connection"].split(":")[1]
        if f"block:{b}" in chosen or (r["connection"].startswith("block") and f"skip:{b}" in chosen):
            continue  # a dropped branch makes its skip moot, and the other way round
        chosen = chosen + [r["connection"]]
        plans.append(chosen)

    example = torch.from_numpy(x["val"][:2])
    variants = []
    sessions_full: dict[str, Partition] = {}
    parity = 0.0
    vt_rows = []
    for vi, dropped in enumerate(plans):
        name = "full" if not dropped else f"v{vi}"
        vdir = Path(".") if not dropped else Path("variants") / name
        (out / vdir).mkdir(parents=True, exist_ok=True)
        _apply(net, dropped)
        parts = {t: _TierPart.make(net, cut, t) for t in TIERS}
        files, macs, cur = {}, {}, example
        offload_bytes = {}
        for tier in TIERS:
            f = (vdir / f"{tier}.onnx").as_posix()
            try:
                _export(parts[tier], out / f, cur, tier == TIERS[0], tier == TIERS[-1])
            except Exception as e:  # torch.onnx raises many types
                raise BuildError(f"ONNX export of variant {name} tier {tier} failed: {e}") from e
            files[tier] = f
            macs[tier] = _macs(parts[tier], cur[:1])
            if tier != TIERS[-1]:
                with torch.no_grad():
                    cur = parts[tier](cur)[0]
                offload_bytes[f"{tier}-{TIERS[TIERS.index(tier) + 1]}"] = int(cur[0].numel() * 4)
        sessions = {t: Partition.load(out / files[t], sha256_file(out / files[t]), spec.threads) for t in TIERS}
        with torch.no_grad():
            torch_logits = net(example)
        onnx_out = _chain(sessions, x["val"][:2])
        worst = max(float(np.abs(onnx_out[t]["logits"] - torch_logits[i].numpy()).max()) for i, t in enumerate(TIERS))
        if worst > PARITY_TOLERANCE:
            raise BuildError(f"variant {name}: ONNX differs from torch by {worst:.2e} > {PARITY_TOLERANCE}")
        parity = max(parity, worst)
        acc: dict[str, dict[str, float]] = {}
        for k in ("val", "test"):
            outs = _chain(sessions, x[k])
            for t, b in zip(TIERS, cut.exits, strict=True):
                acc.setdefault(str(b), {})[f"{k}_accuracy"] = float((outs[t]["logits"].argmax(1) == y[k]).mean())
        variants.append({
            "name": name, "dropped": dropped, "files": files,
            "sha256": {t: sha256_file(out / f) for t, f in files.items()},
            "exits": [{"block": b, "tier": t} | acc[str(b)] for t, b in zip(TIERS, cut.exits, strict=True)],
            "val_accuracy": acc[str(cut.exits[-1])]["val_accuracy"],
            "test_accuracy": acc[str(cut.exits[-1])]["test_accuracy"],
            "macs": macs, "macs_total": sum(macs.values()), "bytes_per_offload": offload_bytes,
            "parameters": int(sum(p.numel() for t in TIERS for p in parts[t].parameters())),
        })
        progress(f"variant {name} (drops {dropped or 'nothing'}): val accuracy "
                 f"{variants[-1]['val_accuracy']:.3f}, {sum(macs.values()) / 1e6:.2f} M MACs")
        if not dropped:
            sessions_full = sessions
        for k in ("val", "test"):  # per-sample table of every variant, for offline replay
            outs = _chain(sessions, x[k])
            for i in range(len(y[k])):
                row: dict[str, Any] = {"variant": name, "split": k, "sample_id": i, "label": int(y[k][i])}
                for t in TIERS:
                    c, p = top1(outs[t]["logits"][i])
                    row[f"prediction_{t}"], row[f"confidence_{t}"] = p, c
                vt_rows.append(row)
    _apply(net, [])

    progress("writing samples.parquet, exits.parquet, variants.parquet")
    rows = [{"split": k, "sample_id": i, "label": int(y[k][i]), "pixels": x[k][i].ravel()}
            for k in splits for i in range(len(y[k]))]
    pd.DataFrame(rows).to_parquet(out / "samples.parquet", index=False)
    table = []
    for k in ("val", "test"):  # one unpadded sample at a time, exactly as the agents run it
        for i in range(len(y[k])):
            outs = _chain(sessions_full, x[k][i:i + 1])
            row = {"split": k, "sample_id": i, "label": int(y[k][i])}
            for t, b in zip(TIERS, cut.exits, strict=True):
                c, p = top1(outs[t]["logits"][0])
                row[f"prediction_{t}"], row[f"confidence_{t}"] = p, c
                row[f"confidence_entropy_{t}"] = top1_entropy(outs[t]["logits"][0])[0]
                row[f"prediction_L{b}"], row[f"confidence_L{b}"] = p, c
            table.append(row)
    exits_df = pd.DataFrame(table)
    exits_df.to_parquet(out / "exits.parquet", index=False)
    pd.DataFrame(vt_rows).to_parquet(out / "variants.parquet", index=False)

    full = variants[0]
    tiers = []
    for t, b in zip(TIERS, cut.exits, strict=True):
        first, last = cut.tiers[t]
        acc_t = {f"{k}_accuracy": float((sub[f"prediction_{t}"] == sub["label"]).mean())
                 for k, sub in exits_df.groupby("split")}
        feat = {"dtype": "float32", "shape": ["batch", "channels", "height", "width"]}
        tiers.append({
            "tier": t, "layers": list(range(first, last + 1)), "file": full["files"][t], "sha256": full["sha256"][t],
            "size_bytes": (out / full["files"][t]).stat().st_size,
            "inputs": [{"name": "pixels" if t == TIERS[0] else "features"} | feat],
            "outputs": ([] if t == TIERS[-1] else [{"name": "features_out"} | feat])
            + [{"name": "logits", "dtype": "float32", "shape": ["batch", len(data.labels)]}],
            "logits": "logits", "exit": {"layer": b} | acc_t, "exits": [{"layer": b, "output": "logits"} | acc_t],
            "offload": {} if t == TIERS[-1] else {"features_out": "features"},
        })
    hashed = ["samples.parquet", "exits.parquet", "variants.parquet"]
    doc: dict[str, Any] = {
        "format_version": BUNDLE_FORMAT,
        "kind": "resnet",
        "name": spec.name,
        "model": {"source": f"resnet-{depth}", "architecture": "cifar-resnet", "num_layers": 3 * spec.blocks_per_stage,
                  "depth": depth, "widths": spec.widths, "blocks_per_stage": spec.blocks_per_stage,
                  "parameters": int(sum(p.numel() for p in net.parameters())), "layers_are": "residual blocks"},
        "task": {"labels": data.labels, "data": spec.data, "data_path": data.source, "input_shape": shape,
                 "normalize": {"mean": mean.ravel().tolist(), "std": std.ravel().tolist()}},
        "offload": {"mode": "features", "bytes_per_token": 0, "bytes_fixed": full["bytes_per_offload"][
            f"{TIERS[0]}-{TIERS[1]}"], "bytes_by_hop": full["bytes_per_offload"],
            "formula": "channels * height * width * 4 (float32 feature map), fixed per hop"},
        "exit_layers": list(cut.exits),
        "tiers": tiers,
        "resnet_variants": variants,
        "connections": costs,
        "files": {f: sha256_file(out / f) for f in hashed},
        "data": {"splits": {k: len(v) for k, v in splits.items()}, "seed": spec.split.seed},
        "training": spec.training.model_dump() | {"what": "all exits jointly, connections dropped at random"},
        "parity": {"max_abs_diff": parity, "tolerance": PARITY_TOLERANCE, "batch": 2, "padded": False},
        "build": {"seconds": round(time.perf_counter() - t_start, 1), "torch": str(torch.__version__),
                  "python": platform.python_version(), "spec": spec.model_dump(), "spec_sha256": spec_sha256(spec),
                  "cpu_count": os.cpu_count()},
    }
    (out / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    progress(f"bundle {final_out} built in {doc['build']['seconds']} s")
