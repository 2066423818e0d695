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

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.runtime import Partition, sha256_file, top1
from testbed.build.common import PARITY_TOLERANCE, Progress, SplitSizes
from testbed.build.datasets import split_indices
from testbed.build.images import load_image_dataset
from testbed.build.steps import (
    Builder,
    TierOutputs,
    accuracies,
    check_parity,
    exit_row,
    exit_spec,
    load_sessions,
)
from testbed.build.tiers import Cut, CutError, make_cut
from testbed.core.errors import BuildError
from testbed.core.hops import Hop
from testbed.formats.bundle import (
    BUNDLE_FORMAT,
    BuildInfo,
    BundleSpec,
    ConnectionCost,
    DataInfo,
    ModelInfo,
    OffloadSpec,
    ParityInfo,
    ResNetVariantSpec,
    TaskInfo,
    TensorSpec,
    TierSpec,
    TrainingInfo,
)


class ResNetSplit(SplitSizes):
    """Split sizes for image data (defaults fit scikit-learn digits, 1,797 images)."""

    train: int = Field(1200, ge=10, description="images the network is trained on")
    val: int = Field(300, ge=10, description="images for ranking connections and choosing variants")
    test: int = Field(297, ge=10, description="held-out images the runs draw from")


class ResNetTraining(BaseModel):
    """Joint training of every exit, with stochastic dropping of connections."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(8, ge=1, description="training epochs")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate (cosine schedule)")
    batch_size: int = Field(64, ge=1, description="training batch size")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    drop_prob: float = Field(0.1, ge=0, lt=1, description="chance of dropping each connection per batch")


class ResNetSpec(BaseModel):
    """``partitions/specs/<name>.yaml`` with ``kind: resnet``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["resnet"] = Field("resnet", description="a CIFAR-style ResNet whose connections can be dropped")
    name: str = Field(description="the bundle's name (default: the output directory's)")
    out: str = Field(description="output directory (default partitions/<name>)")
    data: str = Field("builtin:digits", description="builtin:digits (scikit-learn's digits), "
                      "builtin:fashion-mnist or idx:DIR (MNIST-style IDX files), a folder ROOT/<class>/*.png|jpg, or "
                      "a Hugging Face dataset name or save_to_disk directory")
    image_size: int = Field(28, ge=4, description="side of folder / Hugging Face images after resizing")
    image_column: str = Field("image", description="a Hugging Face dataset's image column")
    label_column: str = Field("label", description="a Hugging Face dataset's label column")
    blocks_per_stage: int = Field(1, ge=1, le=9, description="n of depth 6n+2")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=3, max_length=3,
                              description="channels of the three stages")
    tiers: dict[str, list[int]] = Field(description="tier -> [first_block, last_block], 1-based, inclusive")
    max_variants: int = Field(4, ge=0, description="variants with connections dropped, besides the full network")
    threads: int = Field(2, ge=1, description="torch and onnxruntime threads of the build")
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
                self.stem = net.stem if tier == cut.first else None
                self.blocks = torch.nn.ModuleList(net.blocks[first - 1:last])
                self.head = net.heads[str(last)]
                self.final = tier == cut.last

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
    """Every tier's outputs; ``sessions`` in the order a sample crosses the tiers."""
    outs, cur = {}, {"pixels": x}
    for tier in sessions:
        outs[tier] = sessions[tier].run(cur)
        if "features_out" in outs[tier]:
            cur = {"features": outs[tier]["features_out"]}
    return outs


class ResNetBuilder(Builder[ResNetSpec]):
    """The steps of an adaptive-ResNet bundle (see :mod:`testbed.build.steps` for their order)."""

    def __init__(self, spec: ResNetSpec):
        self.spec = spec
        self.threads, self.seed = spec.threads, spec.split.seed
        self.cut = spec.cut()

    def load(self, progress: Progress) -> None:
        """Images, seeded splits normalised with the train split's statistics, the untrained network."""
        spec = self.spec
        data = load_image_dataset(spec.data, spec.image_size, spec.image_column, spec.label_column)
        self.splits = split_indices(len(data.label), spec.split.model_dump(exclude={"seed"}), spec.split.seed)
        self.shape = list(data.images.shape[1:])
        progress(f"data {data.source}: {len(data.label)} images {self.shape}, {len(data.labels)} classes; "
                 + ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))
        train_images = data.images[self.splits["train"]]
        self.mean = train_images.mean(axis=(0, 2, 3), keepdims=True)
        self.std = train_images.std(axis=(0, 2, 3), keepdims=True) + 1e-6
        self.x = {k: ((data.images[v] - self.mean) / self.std).astype(np.float32) for k, v in self.splits.items()}
        self.y = {k: data.label[v] for k, v in self.splits.items()}
        self.data = data
        self.net = _net(spec, self.shape[0], len(data.labels))
        self.conns = _connections(self.net)

    def train(self, progress: Progress) -> None:
        """Every exit jointly, each connection dropped at random per batch (the paper's stochastic depth)."""
        import torch
        import torch.nn.functional as F

        spec, net, cut = self.spec, self.net, self.cut
        progress(f"training ResNet-{6 * spec.blocks_per_stage + 2} "
                 f"({sum(p.numel() for p in net.parameters()) / 1e3:.0f} k parameters), exits after blocks "
                 f"{list(cut.exits)}, {spec.training.epochs} epochs, drop_prob {spec.training.drop_prob}")
        opt = torch.optim.AdamW(net.parameters(), lr=spec.training.lr, weight_decay=spec.training.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.training.epochs)
        rng = np.random.default_rng(spec.split.seed)
        xt, yt = torch.from_numpy(self.x["train"]), torch.from_numpy(self.y["train"])
        xv = torch.from_numpy(self.x["val"])
        for epoch in range(spec.training.epochs):
            net.train()
            perm = rng.permutation(len(yt))
            for start in range(0, len(perm), spec.training.batch_size):
                idx = perm[start:start + spec.training.batch_size]
                _apply(net, [c for c in self.conns if rng.random() < spec.training.drop_prob])
                loss = sum(F.cross_entropy(lg, yt[idx]) for lg in net(xt[idx])) / len(cut.exits)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            _apply(net, [])
            net.eval()
            acc = _accuracy(net, xv, self.y["val"])
            progress(f"epoch {epoch + 1}/{spec.training.epochs}: val accuracy by exit "
                     + " ".join(f"B{b}={a:.3f}" for b, a in zip(cut.exits, acc, strict=True)))
        net.eval()
        self.costs = _rank_connections(net, self.conns, xv, self.y["val"])
        progress("cost of dropping each connection alone (val accuracy lost): "
                 + ", ".join(f"{r.connection} {r.accuracy_cost:+.3f}" for r in self.costs))

    def export(self, out: Path, progress: Progress) -> dict[str, str]:
        """The full network's tiers (the bundle's own partitions, variant ``full``)."""
        self.full = self._export_variant(out, "full", [])
        return dict(self.full.files)

    def _export_variant(self, out: Path, name: str, dropped: list[str]) -> ResNetVariantSpec:
        import torch

        vdir = Path(".") if not dropped else Path("variants") / name
        (out / vdir).mkdir(parents=True, exist_ok=True)
        _apply(self.net, dropped)
        tiers = self.cut.names
        self.parts = {t: _TierPart.make(self.net, self.cut, t) for t in tiers}
        files, macs, offload_bytes = {}, {}, {}
        cur = torch.from_numpy(self.x["val"][:2])
        for i, tier in enumerate(tiers):
            f = (vdir / f"{tier}.onnx").as_posix()
            try:
                _export(self.parts[tier], out / f, cur, i == 0, i == len(tiers) - 1)
            except Exception as e:  # torch.onnx raises many types
                raise BuildError(f"ONNX export of variant {name} tier {tier} failed: {e}") from e
            files[tier], macs[tier] = f, _macs(self.parts[tier], cur[:1])
            if i < len(tiers) - 1:
                with torch.no_grad():
                    cur = self.parts[tier](cur)[0]
                offload_bytes[Hop(tier, tiers[i + 1]).link] = int(cur[0].numel() * 4)
        return ResNetVariantSpec(
            name=name, dropped=dropped, files=files, sha256={t: sha256_file(out / f) for t, f in files.items()},
            exits=[], val_accuracy=float("nan"), test_accuracy=float("nan"), macs=macs,
            macs_total=sum(macs.values()), bytes_per_offload=offload_bytes,
            parameters=int(sum(p.numel() for t in tiers for p in self.parts[t].parameters())))

    def parity(self, sessions: dict[str, Partition]) -> ParityInfo:
        """Every exit's logits of the current variant on two validation images."""
        import torch

        with torch.no_grad():
            torch_logits = self.net(torch.from_numpy(self.x["val"][:2]))
        onnx_out = _chain(sessions, self.x["val"][:2])
        worst = max(float(np.abs(onnx_out[t]["logits"] - torch_logits[i].numpy()).max())
                    for i, t in enumerate(self.cut.names))
        return ParityInfo(max_abs_diff=worst, tolerance=PARITY_TOLERANCE, batch=2, padded=False)

    def exit_tables(self, sessions: dict[str, Partition]) -> pd.DataFrame:
        """The full network's exits, one unpadded image at a time, exactly as the agents run it."""
        exits = {t: [(b, "logits")] for t, b in zip(self.cut.names, self.cut.exits, strict=True)}
        return pd.DataFrame([exit_row(k, i, int(self.y[k][i]), _chain(sessions, self.x[k][i:i + 1]), exits)
                             for k in ("val", "test") for i in range(len(self.y[k]))])

    def write_data(self, out: Path, table: pd.DataFrame, progress: Progress) -> list[str]:
        """``samples.parquet`` with the normalised pixels."""
        progress("writing samples.parquet, exits.parquet, variants.parquet")
        rows = [{"split": k, "sample_id": i, "label": int(self.y[k][i]), "pixels": self.x[k][i].ravel()}
                for k in self.splits for i in range(len(self.y[k]))]
        pd.DataFrame(rows).to_parquet(out / "samples.parquet", index=False)
        return ["variants.parquet"]

    def extras(self, out: Path, sessions: dict[str, Partition], table: pd.DataFrame, progress: Progress) -> None:
        """Each planned variant exported, checked against torch, scored; ``variants.parquet``, every sample."""
        self.variants, rows = [], []
        for vi, dropped in enumerate(_plan_variants(self.costs, self.spec.max_variants)):
            name = "full" if not dropped else f"v{vi}"
            variant = self.full if not dropped else self._export_variant(out, name, dropped)
            vsess = load_sessions(out, variant.files, self.threads)
            check_parity(self.parity(vsess).max_abs_diff, f"variant {name}")
            outs = {k: _chain(vsess, self.x[k]) for k in ("val", "test")}
            variant = self._scored(variant, outs)
            self.variants.append(variant)
            progress(f"variant {name} (drops {dropped or 'nothing'}): val accuracy {variant.val_accuracy:.3f}, "
                     f"{variant.macs_total / 1e6:.2f} M MACs")
            rows += _variant_rows(name, outs, self.y)
        _apply(self.net, [])
        pd.DataFrame(rows).to_parquet(out / "variants.parquet", index=False)

    def _scored(self, variant: ResNetVariantSpec, outs: dict[str, TierOutputs]) -> ResNetVariantSpec:
        acc: dict[int, dict[str, float]] = {}
        for k in ("val", "test"):
            for t, b in zip(self.cut.names, self.cut.exits, strict=True):
                acc.setdefault(b, {})[f"{k}_accuracy"] = float((outs[k][t]["logits"].argmax(1) == self.y[k]).mean())
        last = self.cut.exits[-1]
        return variant.model_copy(update={
            "exits": [{"block": b, "tier": t} | acc[b] for t, b in zip(self.cut.names, self.cut.exits, strict=True)],
            "val_accuracy": acc[last]["val_accuracy"], "test_accuracy": acc[last]["test_accuracy"]})

    def describe(self, out: Path, files: dict[str, str], table: pd.DataFrame, hashed: dict[str, str],
                 parity: ParityInfo, build: BuildInfo) -> BundleSpec:
        """``bundle.yaml`` of a ResNet bundle: the full network's tiers, its variants, the connection costs."""
        spec, full = self.spec, self.variants[0]
        depth = 6 * spec.blocks_per_stage + 2
        acc = accuracies(table, list(self.cut.exits))
        return BundleSpec(
            format_version=BUNDLE_FORMAT, kind="resnet", name=spec.name,
            model=ModelInfo(source=f"resnet-{depth}", architecture="cifar-resnet", num_layers=3 * spec.blocks_per_stage,
                            depth=depth, widths=spec.widths, blocks_per_stage=spec.blocks_per_stage,
                            parameters=int(sum(p.numel() for p in self.net.parameters())),
                            layers_are="residual blocks"),
            task=TaskInfo(labels=self.data.labels, data=spec.data, data_path=self.data.source,
                          input_shape=self.shape,
                          normalize={"mean": self.mean.ravel().tolist(), "std": self.std.ravel().tolist()}),
            offload=OffloadSpec(mode="features", bytes_per_token=0,
                                bytes_fixed=full.bytes_per_offload[Hop(*self.cut.names[:2]).link],
                                bytes_by_hop=full.bytes_per_offload,
                                formula="channels * height * width * 4 (float32 feature map), fixed per hop"),
            exit_layers=list(self.cut.exits), tiers=[self._tier(t, b, out, full, acc[b]) for t, b in
                                                     zip(self.cut.names, self.cut.exits, strict=True)],
            resnet_variants=self.variants, connections=self.costs, files=hashed,
            data=DataInfo(splits={k: len(v) for k, v in self.splits.items()}, seed=spec.split.seed),
            training=TrainingInfo(**spec.training.model_dump(),
                                  what="all exits jointly, connections dropped at random"),
            parity=parity, build=build)

    def _tier(self, t: str, block: int, out: Path, full: ResNetVariantSpec, acc: dict[str, float]) -> TierSpec:
        first, last = self.cut.tiers[t]
        dims: list[str | int] = ["batch", "channels", "height", "width"]
        logits = TensorSpec(name="logits", dtype="float32", shape=["batch", len(self.data.labels)])
        return TierSpec(
            tier=t, layers=list(range(first, last + 1)), file=full.files[t], sha256=full.sha256[t],
            size_bytes=(out / full.files[t]).stat().st_size,
            inputs=[TensorSpec(name="pixels" if t == self.cut.first else "features", dtype="float32", shape=dims)],
            outputs=[*([] if t == self.cut.last else [TensorSpec(name="features_out", dtype="float32", shape=dims)]),
                     logits],
            logits="logits", exit=exit_spec(block, acc), exits=[exit_spec(block, acc)],
            offload={} if t == self.cut.last else {"features_out": "features"})


def _rank_connections(net: Any, conns: list[str], xv: Any, yv: np.ndarray) -> list[ConnectionCost]:
    """The paper's measurement: what does dropping each connection alone cost? Cheapest first."""
    full_acc = _accuracy(net, xv, yv)[-1]
    costs = []
    for c in conns:
        _apply(net, [c])
        acc = _accuracy(net, xv, yv)[-1]
        costs.append(ConnectionCost(connection=c, val_accuracy=acc, accuracy_cost=full_acc - acc))
    _apply(net, [])
    return sorted(costs, key=lambda r: (r.accuracy_cost, r.connection))


def _plan_variants(costs: list[ConnectionCost], max_variants: int) -> list[list[str]]:
    """The full network, then the cheapest connections dropped one more at a time (up to ``max_variants``)."""
    plans: list[list[str]] = [[]]
    chosen: list[str] = []
    for r in costs:
        if len(plans) > max_variants:
            break
        b = r.connection.split(":")[1]
        if f"block:{b}" in chosen or (r.connection.startswith("block") and f"skip:{b}" in chosen):
            continue  # a dropped branch makes its skip moot, and the other way round
        chosen = chosen + [r.connection]
        plans.append(chosen)
    return plans


def _variant_rows(name: str, outs: dict[str, TierOutputs], y: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per-sample predictions of one variant at every tier, for offline replay."""
    rows = []
    for k in ("val", "test"):
        for i in range(len(y[k])):
            row: dict[str, Any] = {"variant": name, "split": k, "sample_id": i, "label": int(y[k][i])}
            for t in outs[k]:  # the tiers, in order
                c, p = top1(outs[k][t]["logits"][i])
                row[f"prediction_{t}"], row[f"confidence_{t}"] = p, c
            rows.append(row)
    return rows
