"""``testbed partition`` and ``bundle verify|show``: building and inspecting partition bundles."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from testbed.cli.common import err, out

if TYPE_CHECKING:
    from testbed.build.resnet import ResNetSpec
    from testbed.build.transformer import PartitionSpec
from testbed.core.errors import ConfigError, TestbedError
from testbed.formats.bundle import Bundle

PARTITION_FLAGS = {  # flag dest -> spec field (None: handled by hand)
    "name": "name", "model": "model", "data": "data", "text_column": "text_column",
    "text_pair_column": "text_pair_column", "label_column": "label_column", "offload": "offload_mode",
    "max_length": "max_length", "threads": "threads",
}


def _partition_spec(args: argparse.Namespace) -> tuple[PartitionSpec | ResNetSpec, Path]:
    """The spec from ``--config`` and/or flags (flags win); returns (spec, output directory)."""
    from pydantic import ValidationError

    from testbed.build.pipeline import load_spec
    from testbed.build.resnet import ResNetSpec
    from testbed.build.tiers import CutError, parse_exits, parse_tiers
    from testbed.build.transformer import PartitionSpec

    base: dict = load_spec(args.config).model_dump() if args.config else {}
    if args.model and args.model.startswith("resnet-"):  # resnet-8, resnet-14, ...: depth 6n+2
        depth = args.model.removeprefix("resnet-")
        if not depth.isdigit() or (int(depth) - 2) % 6 or int(depth) < 8:
            raise ConfigError("command line", [f"--model {args.model}: a CIFAR ResNet has depth 6n+2 "
                                               "(resnet-8, resnet-14, resnet-20, ...)"])
        base |= {"kind": "resnet", "blocks_per_stage": (int(depth) - 2) // 6}
        base.pop("model", None)
        args.model = None
    model_cls = ResNetSpec if base.get("kind") == "resnet" else PartitionSpec
    try:
        if args.tiers:
            base["tiers"] = {k: list(v) for k, v in parse_tiers(args.tiers).items()}
        if args.exits:
            parsed = parse_exits(args.exits)
            base["exits"] = "all" if parsed is None else parsed
    except CutError as e:
        raise ConfigError("command line", [str(e)]) from e
    for dest, field in PARTITION_FLAGS.items():
        if getattr(args, dest) is not None:
            base[field] = getattr(args, dest)
    if args.variants is not None:
        base["variants"] = [v.strip() for v in args.variants.split(",") if v.strip()]
    training = dict(base.get("training", {}))
    for dest in ("epochs", "lr", "backbone_lr"):
        if getattr(args, dest) is not None:
            training[dest] = getattr(args, dest)
    if args.batch is not None:
        training["batch_size"] = args.batch
    if args.finetune:
        training["finetune"] = True
    base["training"] = training
    split = dict(base.get("split", {}))
    for dest in ("train", "val", "test", "seed"):
        if getattr(args, dest) is not None:
            split[dest] = getattr(args, dest)
    base["split"] = split
    if args.out is not None:
        base["out"] = str(args.out)
    if "out" in base and "name" not in base:
        base["name"] = Path(base["out"]).name
    if "name" in base and "out" not in base:
        base["out"] = f"partitions/{base['name']}"
    if "tiers" not in base:
        raise ConfigError("command line",
                          ["--tiers is required without --config (e.g. mobile:1-4,edge:5-8,cloud:9-12)"])
    try:
        spec: PartitionSpec | ResNetSpec = model_cls.model_validate(base)
    except ValidationError as e:
        flag = {v: k for k, v in PARTITION_FLAGS.items()} | {"tiers": "tiers", "exits": "exits", "out": "out"}
        problems = []
        for err_ in e.errors():
            loc = [str(x) for x in err_["loc"]]
            name = flag.get(loc[0], ".".join(loc)) if loc else "spec"
            problems.append(f"--{name.replace('_', '-')}: {err_['msg']} (got {err_.get('input')!r})")
        raise ConfigError(str(args.config) if args.config else "command line", problems) from e
    return spec, Path(spec.out)


def cmd_partition(args: argparse.Namespace) -> int:
    """`testbed partition`: build a bundle from a spec file and/or flags."""
    from testbed.build.common import spec_sha256
    from testbed.build.pipeline import build_bundle

    if args.config is None and args.model is None and args.data is None:
        raise ConfigError("command line", ["give --config partitions/specs/<name>.yaml, or --model, --data, "
                                           "--tiers and --out"])
    spec, dest = _partition_spec(args)
    if args.if_missing and (dest / "bundle.yaml").is_file():
        try:
            existing = Bundle.load(dest)
            existing.verify()
            if existing.spec.build.spec_sha256 == spec_sha256(spec):
                out.print(f"bundle {dest} exists, verifies and was built from this spec; not rebuilding")
                _add_missing_router(existing)
                return 0
            err.print(f"bundle {dest} was built from another spec; rebuilding")
        except TestbedError as e:
            err.print(f"bundle {dest} does not verify ({e}); rebuilding")
        args.force = True
    if str(getattr(spec, "model", "")).startswith("builtin:"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    build_bundle(spec, dest, progress=lambda m: err.print(f"[dim]partition[/dim] {m}", highlight=False),
                 force=args.force)
    out.print(f"bundle written to {dest}")
    return 0


def _add_missing_router(bundle: Bundle) -> None:
    """Give a bundle built before the pool router existed the router a build makes now (no torch, a minute)."""
    from testbed.build.router import add_router

    spec = bundle.spec
    if (spec.router is None and spec.kind == "transformer" and spec.offload.mode == "hidden"
            and len(spec.tiers) in (2, 3)):
        err.print(f"bundle {bundle.root} predates the pool router; adding it (testbed bundle add-router)")
        add_router(bundle.root, progress=lambda m: err.print(f"[dim]add-router[/dim] {m}", highlight=False))


def cmd_bundle_verify(args: argparse.Namespace) -> int:
    """`testbed bundle verify`: hashes, graph inputs/outputs, and a replay against exits.parquet."""
    from testbed.core.errors import BundleError

    bundle = Bundle.load(args.bundle)
    hashes = bundle.verify()
    out.print(f"[green]ok[/green] hashes: {len(hashes)} files match bundle.yaml")
    problems = bundle.check_graphs()
    if problems:
        raise BundleError(f"bundle {args.bundle}: the ONNX graphs disagree with bundle.yaml: " + "; ".join(problems))
    out.print(f"[green]ok[/green] shapes: inputs and outputs of {len(bundle.spec.tiers) + len(bundle.spec.variants)} "
              "graphs match bundle.yaml")
    worst = bundle.replay("val", args.samples)
    parity = bundle.spec.parity
    out.print(f"[green]ok[/green] parity: onnxruntime replays exits.parquet on {args.samples} val samples "
              f"(max confidence diff {worst:.2e}); build parity vs torch "
              f"{parity.max_abs_diff:.2e} on a {'padded ' if parity.padded else ''}batch of {parity.batch}")
    return 0


def cmd_bundle_add_router(args: argparse.Namespace) -> int:
    """`testbed bundle add-router`: DIMEC-DC's pool router for a bundle built without one."""
    from testbed.build.router import add_router

    router = add_router(args.bundle, progress=lambda m: err.print(f"[dim]add-router[/dim] {m}", highlight=False))
    out.print(f"pool router {args.bundle / router.file} on the {router.tier} tier: pools "
              + ", ".join(f"{p} {router.centroids[p]['size']:.0f}" for p in router.pools))
    return 0


def cmd_bundle_show(args: argparse.Namespace) -> int:
    """`testbed bundle show`: tiers, layers, bytes per offload, exit accuracies, variants."""
    bundle = Bundle.load(args.bundle)
    s = bundle.spec
    m = s.model
    out.print(f"bundle [bold]{s.name}[/bold] (format {s.format_version}, {s.kind}): model {m.source} "
              f"({m.architecture}, {m.num_layers} layers" + (f", hidden {m.hidden_size}" if m.hidden_size else "")
              + f", {m.parameters / 1e6:.1f} M parameters)")
    out.print(f"task: {len(bundle.labels)} classes {bundle.labels}; data {s.task.data}; splits "
              f"{s.data.splits} seed {s.data.seed}")
    tr = s.training
    if tr:
        out.print(f"training: {tr.what}; {tr.epochs} epochs")
    table = Table(title="tiers")
    for col in ("tier", "layers", "runs", "file", "MB", "inputs", "outputs", "offload to next"):
        table.add_column(col)
    for t in s.tiers:
        runs = t.runs_layers or t.layers
        table.add_row(t.tier, f"{t.layers[0]}-{t.layers[-1]}", f"{runs[0]}-{runs[-1]}", t.file,
                      f"{t.size_bytes / 1e6:.1f}", ", ".join(i.name for i in t.inputs),
                      ", ".join(o.name for o in t.outputs), ", ".join(t.offload) or "-")
    out.print(table)
    off = s.offload
    med = off.test_seq_len_median
    out.print(f"offload mode {off.mode}: bytes = {off.formula}"
              + (f"; at the median test length {med:g} tokens: {bundle.offload_bytes(int(med)):,} B" if med else "")
              + (f"; by hop: {off.bytes_by_hop}" if off.bytes_by_hop else ""))
    ex = Table(title="exits (accuracy of each exit alone, exported graphs, unpadded samples)")
    for col in ("layer", "tier", "output", "val acc", "test acc"):
        ex.add_column(col, justify="right")
    for t in s.tiers:
        for e in t.exits or [t.exit]:
            ex.add_row(str(e.layer), t.tier, e.output, f"{e.val_accuracy:.3f}", f"{e.test_accuracy:.3f}",
                       style="bold" if e.layer == t.exit.layer else None)
    out.print(ex)
    if s.variants:
        vt = Table(title="variants")
        for col in ("tier", "variant", "file", "MB", "exit val acc", "final val acc", "max Δconf"):
            vt.add_column(col)
        for v in s.variants:
            own = [e for e in v.exits if e["layer"] == bundle.tier(v.tier).exit.layer]
            vt.add_row(v.tier, v.name, v.file, f"{v.size_bytes / 1e6:.1f}",
                       f"{own[0]['val_accuracy']:.3f}" if own else "-", f"{v.final['val_accuracy']:.3f}",
                       f"{v.max_confidence_diff:.3g}")
        out.print(vt)
    if s.resnet_variants:
        rt = Table(title="ResNet variants (connections dropped, cheapest first)")
        for col in ("variant", "dropped", "val acc", "test acc", "exit acc by tier (val)", "M MACs by tier",
                    "offload B by hop"):
            rt.add_column(col)
        for rv in s.resnet_variants:
            rt.add_row(rv.name, ", ".join(rv.dropped) or "-", f"{rv.val_accuracy:.3f}",
                       f"{rv.test_accuracy:.3f}", " / ".join(f"{e['val_accuracy']:.3f}" for e in rv.exits),
                       " / ".join(f"{m / 1e6:.2f}" for m in rv.macs.values()),
                       ", ".join(f"{k} {b:,}" for k, b in rv.bytes_per_offload.items()))
        out.print(rt)
        costs = ", ".join(f"{c.connection} {c.accuracy_cost:+.3f}" for c in s.connections)
        out.print(f"val accuracy lost by dropping one connection alone: {costs}")
    if s.router:
        r = s.router
        out.print(f"pool router {r.file} on the {r.tier} tier (layer {r.layer}): training pools "
                  + ", ".join(f"{p} {r.centroids[p]['size']:.0f}" for p in r.pools)
                  + f" from {r.epochs} epochs of dynamics at layers {r.clustered_on}; {r.train_accuracy:.3f} of the "
                  "training samples predicted in their own pool")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``partition`` and ``bundle verify|show`` to the subparsers ``sub``."""
    part = sub.add_parser("partition", help="build a partition bundle from a model and a dataset",
                          description="build a partition bundle; flags override the --config file")
    part.add_argument("--config", type=Path, default=None, help="partitions/specs/<name>.yaml")
    part.add_argument("--model", default=None, help="Hugging Face directory or hub name, or builtin:minilm-l6")
    part.add_argument("--data", default=None, help="CSV/TSV/JSONL file, datasets directory, hub NAME[:CONFIG], "
                                                   "or builtin:sentiment")
    part.add_argument("--tiers", default=None, help="mobile:FIRST-LAST,edge:FIRST-LAST,cloud:FIRST-LAST (1-based)")
    part.add_argument("--exits", default=None, help="exit layers, e.g. 4,8, or 'all' (default: all)")
    part.add_argument("--out", type=Path, default=None, help="output directory (default: partitions/<name>)")
    part.add_argument("--name", default=None, help="bundle name (default: the --out directory's name)")
    part.add_argument("--text-column", dest="text_column", default=None)
    part.add_argument("--text-pair-column", dest="text_pair_column", default=None, help="second text of a pair")
    part.add_argument("--label-column", dest="label_column", default=None)
    part.add_argument("--offload", choices=["hidden", "input"], default=None,
                      help="hidden: next tier continues from the tensor; input: it re-runs from the tokens")
    part.add_argument("--variants", default=None, help="extra mobile-tier files: fp16,int8")
    part.add_argument("--finetune", action="store_true", help="train the backbone jointly with the exits")
    part.add_argument("--epochs", type=int, default=None)
    part.add_argument("--lr", type=float, default=None, help="learning rate of the exit heads")
    part.add_argument("--backbone-lr", dest="backbone_lr", type=float, default=None)
    part.add_argument("--batch", type=int, default=None, help="training batch size")
    part.add_argument("--max-length", dest="max_length", type=int, default=None)
    part.add_argument("--train", type=int, default=None, help="train split size")
    part.add_argument("--val", type=int, default=None, help="validation split size")
    part.add_argument("--test", type=int, default=None, help="test split size")
    part.add_argument("--seed", type=int, default=None, help="seed of the splits and the training")
    part.add_argument("--threads", type=int, default=None)
    part.add_argument("--force", action="store_true", help="replace an existing output directory")
    part.add_argument("--if-missing", action="store_true", help="do nothing when the bundle exists and verifies")
    part.set_defaults(func=cmd_partition)
    bun = sub.add_parser("bundle", help="inspect a partition bundle: verify, show")
    bsub = bun.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    bv = bsub.add_parser("verify", help="hashes, graph inputs/outputs, onnxruntime replay of the exit table")
    bv.add_argument("bundle", type=Path)
    bv.add_argument("--samples", type=int, default=32, help="val samples to replay (default 32)")
    bv.set_defaults(func=cmd_bundle_verify)
    br = bsub.add_parser("add-router", help="give a transformer bundle DIMEC-DC's pool router from its own training "
                         "dynamics (no torch; for bundles built before the router existed)")
    br.add_argument("bundle", type=Path)
    br.set_defaults(func=cmd_bundle_add_router)
    bs = bsub.add_parser("show", help="tiers, layers, bytes per offload, exit accuracies, variants")
    bs.add_argument("bundle", type=Path)
    bs.set_defaults(func=cmd_bundle_show)
