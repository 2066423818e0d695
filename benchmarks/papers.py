"""Each paper's claim, judged on a bundle's whole held-out split: our figure with its interval, the verdict, n.

Replays every paper policy (``testbed replay``'s code: the agents' exit rule on the stored
exit table, learning policies fed what a live run feeds them) over the whole test split, in
the order a live run issues them, with all samples to the last tier as the baseline. Each
policy is scored in its own paper's cost preset; its knobs are chosen by the rule its paper
states where one is given (``early-exit: auto``: the cheapest thresholds on the validation
split within DIMEE's 0.3 pt budget), else its defaults, and the line says which.

Compared in the same run against the bare thing it wraps: the point figures of the verdict
are recomputed directly from the exit table with numpy (the routes the replay produced,
costed by hand), and must agree.

SplitEE is judged in its own setting, a device and the cloud, on ``--two-tier-bundle`` where it
exists (every layer of the device an arm, against the paper's baseline); DIMEE and DIMEC-DC on
the three-tier ``--bundle``.

Usage: python benchmarks/papers.py [--bundle partitions/minilm-sentiment-papers]
       [--two-tier-bundle partitions/minilm-sentiment-papers-2t] [--split test] [--seed 0]
The last line is ``verdicts meets=A does_not=B cannot_tell=C``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed import policies  # noqa: E402
from testbed.analysis import replay, report, verdict  # noqa: E402
from testbed.core import costmodel  # noqa: E402
from testbed.core.config import PolicySpec  # noqa: E402
from testbed.formats.bundle import Bundle  # noqa: E402

PAPER_POLICIES = [
    {"name": "early-exit", "thresholds": "auto"},
    {"name": "cartography", "mu": "auto"},
    {"name": "splitee"},
    {"name": "splitee-s"},
]


def _by_hand(rows: object, bundle: Bundle, policy: str, cost: costmodel.CostModel, depth: int) -> tuple[float, float]:
    """Drop (pt) and cost reduction from the replayed rows with plain arithmetic: the unwrapped figures.

    A row costs lambda per layer each charged tier ran (``layers_<tier>``) plus o per hop it crossed;
    ``depth`` > 0: the baseline is every sample at the final layer on the device (lambda_device * depth).
    """
    import pandas as pd

    assert isinstance(rows, pd.DataFrame)
    tiers = list(bundle.tiers)
    m = rows[rows.phase == "measure"]
    p, b = m[m.policy == policy], m[m.policy == f"all-{tiers[-1]}"]

    def row_cost(r: pd.Series) -> float:
        ran = [t for t in tiers if pd.notna(r[f"layers_{t}"])]
        lam = [cost.lam[t] * r[f"layers_{t}"] for t in ran if cost.charge is None or t in cost.charge]
        first = cost.lam[ran[0]] if cost.layer_factor != 1 and lam else 0.0
        hops = [cost.o[f"{x}-{y}"] for x, y in zip(ran, ran[1:], strict=False)]
        return first + cost.layer_factor * (sum(lam) - first) + sum(hops)

    cp = float(np.mean([row_cost(r) for _, r in p.iterrows()]))
    cb = cost.lam[tiers[0]] * depth if depth else float(np.mean([row_cost(r) for _, r in b.iterrows()]))
    return (b.correct.mean() - p.correct.mean()) * 100, 1 - cp / cb


def judge_on(bundle: Bundle, entries: list[dict[str, object]], split: str, seed: int,
             counts: dict[str, int]) -> bool:
    """Replay ``entries`` on ``bundle``'s whole split and print each verdict and its check; False on a disagreement."""
    last = bundle.tiers[-1]
    specs = []
    for entry in entries:
        spec = PolicySpec.model_validate(entry)
        lacking = policies.bundle_problems(spec, bundle) + policies.check(spec, bundle.tiers)
        if lacking:
            print(f"{spec.key}: left out on {bundle.root.name}{'; '.join(lacking)}")
            continue
        specs.append(spec)
    specs.append(PolicySpec.model_validate({"name": "all-at", "tier": last, "label": f"all-{last}"}))
    t0 = time.perf_counter()
    rows, records = replay.replay(bundle, specs, split, None, seed, 0)
    layers = bundle.layers_run
    settings = {s.key: report.policy_settings(s.model_dump(), records.get(s.key, {})) for s in specs}
    verdicts, _ = verdict.paper_table(rows, specs, layers, costmodel.preset("dimee"), settings, seed, records)
    n_val, n_test = bundle.spec.data.splits.get("val", 0), bundle.spec.data.splits.get(split, 0)
    print(f"bundle {bundle.root.name}: tiers {', '.join(bundle.tiers)}; val {n_val} samples, {split} {n_test}; "
          f"replay + verdicts in {time.perf_counter() - t0:.1f} s")
    for v in verdicts:
        cost, _ = verdict.paper_cost(next(s for s in specs if s.key == v.policy), costmodel.preset("dimee"), layers)
        rec = records.get(v.policy, {})
        depth = len(rec.get("arms", [])) if rec.get("arms_are") == "layers" else 0
        drop, red = _by_hand(rows, bundle, v.policy, cost, depth)
        agree = abs(drop - v.drop_pt.point) < 1e-9 and abs(red - v.cost_reduction.point) < 1e-9
        print(v.line())
        print(f"  by hand from the exit table: drop {drop:+.2f} pt, cost reduction {red:.1%} "
              f"({'agrees' if agree else 'DISAGREES'})")
        counts[v.outcome] += 1
        if not agree:
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "partitions" / "minilm-sentiment-papers")
    ap.add_argument("--two-tier-bundle", type=Path, default=ROOT / "partitions" / "minilm-sentiment-papers-2t",
                    help="SplitEE's own setting (a device and the cloud); without it SplitEE is judged on --bundle")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    two = Bundle.load(args.two_tier_bundle) if (args.two_tier_bundle / "bundle.yaml").is_file() else None
    counts = {"meets": 0, "does not meet": 0, "cannot tell": 0}
    three_tier = [e for e in PAPER_POLICIES if not str(e["name"]).startswith("splitee")]
    splitee = [e for e in PAPER_POLICIES if str(e["name"]).startswith("splitee")]
    ok = judge_on(bundle, three_tier if two else PAPER_POLICIES, args.split, args.seed, counts)
    if two is not None:
        ok = ok and judge_on(two, splitee, args.split, args.seed, counts)
    else:
        print(f"no two-tier bundle at {args.two_tier_bundle}: SplitEE judged on {bundle.root.name}, arms at its tier "
              "boundaries (build it with make papers)")
    if not ok:
        return 1
    print(f"verdicts meets={counts['meets']} does_not={counts['does not meet']} cannot_tell={counts['cannot tell']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
