"""Build time and per-sample onnxruntime latency of each partition of a bundle.

    python benchmarks/partition.py                               # the default bundle, as built
    python benchmarks/partition.py --build partitions/specs/minilm-sentiment.yaml --out /tmp/b
    python benchmarks/partition.py --bundle partitions/bert-sst2 --threads 2

For each tier (and each mobile variant), the median time per sample at batch 1 (one test
sample of median length, unpadded, as the agents run it) and at batch 32 (32 test samples
padded to the longest, time divided by 32), over ``--repeats`` timed runs after a warmup.
The build time is measured when ``--build`` is given, else read from ``bundle.yaml``.

Where the bundle has a graph per layer (a split point at every layer), each tier's range is
also run as that chain of layer graphs, the way an agent chains them (hidden state handed from
one session to the next, the confidence measured after every layer), against the tier's own
graph in the same run; the line ``layer_chain_overhead_pct=<float>`` is the whole model as a
chain against the tier graphs one after the other, at batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.runtime import Partition  # noqa: E402
from testbed.formats.bundle import Bundle  # noqa: E402


def _feeds(bundle: Bundle, batch: int) -> dict[str, np.ndarray]:
    samples = bundle.samples("test")
    lengths = np.array([len(x) for x in samples.input_ids])
    if batch == 1:
        idx = [int(np.argsort(lengths)[len(lengths) // 2])]
    else:
        idx = list(range(batch))
    width = max(int(lengths[i]) for i in idx)
    x = np.zeros((len(idx), width), np.int64)
    m = np.zeros((len(idx), width), np.int64)
    t = np.zeros((len(idx), width), np.int64)
    for row, i in enumerate(idx):
        n = int(lengths[i])
        x[row, :n], m[row, :n] = samples.input_ids[i], 1
        if samples.token_type_ids is not None:
            t[row, :n] = samples.token_type_ids[i]
    feed = {"input_ids": x, "attention_mask": m}
    if samples.token_type_ids is not None:
        feed["token_type_ids"] = t
    return feed


def _time(part: Partition, feed: dict[str, np.ndarray], repeats: int) -> float:
    for _ in range(3):
        part.run(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        part.run(feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _time_chain(chain: list[Partition], feed: dict[str, np.ndarray], repeats: int) -> float:
    """Median ms of one pass through ``chain`` as an agent runs it (hidden state on, confidence after each)."""
    from agents.runtime import top1

    def once() -> None:
        cur = feed
        for g in chain:
            out = g.run(cur)
            top1(out["logits"][0])
            if "hidden_out" in out:
                cur = {"hidden": out["hidden_out"], "attention_mask": feed["attention_mask"]}

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _layer_chains(bundle: Bundle, feed: dict[str, np.ndarray], threads: int, repeats: int) -> None:
    """Each tier's range as a chain of layer graphs against its tier graph; the whole model both ways."""
    graphs = {g.layer: Partition.load(bundle.root / g.file, g.sha256, threads=threads)
              for g in bundle.spec.layer_graphs}
    print(f"{'tier':<8} {'layers':<8} {'tier graph ms':>14} {'layer chain ms':>15} {'overhead':>9}")
    cur, tier_total = feed, 0.0
    for t in bundle.spec.tiers:
        part = Partition.load(bundle.root / t.file, t.sha256, threads=threads)
        whole = _time(part, cur, repeats)
        chain_feed = cur if t.layers[0] == 1 else {"hidden": cur["hidden"], "attention_mask": cur["attention_mask"]}
        chained = _time_chain([graphs[k] for k in t.layers], chain_feed, repeats)
        tier_total += whole
        print(f"{t.tier:<8} {t.layers[0]}-{t.layers[-1]:<6} {whole:>14.2f} {chained:>15.2f} "
              f"{(chained / whole - 1) * 100:>8.1f}%")
        out = part.run(cur)
        if "hidden_out" in out:
            cur = {"hidden": out["hidden_out"], "attention_mask": feed["attention_mask"]}
    full = _time_chain([graphs[k] for k in sorted(graphs)], feed, repeats)
    print(f"whole model: tier graphs {tier_total:.2f} ms, layer chain {full:.2f} ms")
    print(f"layer_chain_overhead_pct={(full / tier_total - 1) * 100:.1f}")


def main() -> None:
    """Print build time and a latency table per tier; last line ``build_s=<float>``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=ROOT / "partitions" / "minilm-sentiment")
    ap.add_argument("--build", type=Path, default=None, help="build this spec first (into --out) and time it")
    ap.add_argument("--out", type=Path, default=None, help="where --build writes (default: a temp directory)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (agents default: 1)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    if args.build:
        import os
        import tempfile

        from testbed.build.pipeline import build_bundle, load_spec

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        spec = load_spec(args.build)
        out = args.out or Path(tempfile.mkdtemp()) / spec.name
        t0 = time.perf_counter()
        bundle = build_bundle(spec, out, force=True)
        build_s = time.perf_counter() - t0
        how = "measured now"
    else:
        bundle = Bundle.load(args.bundle)
        build_s = bundle.spec.build.seconds
        how = "recorded in bundle.yaml"
    print(f"bundle {bundle.root} ({bundle.spec.model.source}, {bundle.spec.build.cpu_count} CPUs "
          f"at build): build {build_s:.1f} s ({how}); onnxruntime CPU, {args.threads} thread(s), "
          f"median of {args.repeats}")
    feeds = {b: _feeds(bundle, b) for b in (1, 32)}
    print(f"batch 1: one test sample of median length {feeds[1]['input_ids'].shape[1]} tokens; "
          f"batch 32: padded to {feeds[32]['input_ids'].shape[1]} tokens")
    print(f"{'tier':<8} {'file':<20} {'MB':>7} {'b1 ms/sample':>13} {'b32 ms/sample':>14}")
    rows = [(t.tier, t.file, t.sha256) for t in bundle.spec.tiers] + [
        (f"{v.tier}", v.file, v.sha256) for v in bundle.spec.variants]
    cur = feeds
    hidden: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    for tier, file, sha in rows:
        part = Partition.load(bundle.root / file, sha, threads=args.threads)
        res = []
        for b in (1, 32):
            feed = cur[b] if tier == "mobile" or bundle.offload_mode == "input" else hidden[(tier, b)]
            res.append(_time(part, feed, args.repeats) / b)
            if file == bundle.tier(tier).file:
                out = part.run(feed)
                nxt = [t.tier for t in bundle.spec.tiers]
                i = nxt.index(tier)
                if i + 1 < len(nxt) and "hidden_out" in out:
                    hidden[(nxt[i + 1], b)] = {"hidden": out["hidden_out"], "attention_mask": cur[b]["attention_mask"]}
        size = (bundle.root / file).stat().st_size / 1e6
        print(f"{tier:<8} {file:<20} {size:>7.1f} {res[0]:>13.2f} {res[1]:>14.2f}")
    if bundle.spec.layer_graphs:
        _layer_chains(bundle, feeds[1], args.threads, args.repeats)
    print(f"build_s={build_s:.1f}")


if __name__ == "__main__":
    main()
