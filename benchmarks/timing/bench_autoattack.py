"""Wall-clock of the AutoAttack-style evaluation of RDC on 200 digits test images (issue 4's 60-minute target).

    .venv/bin/python benchmarks/timing/bench_autoattack.py                     # 200 images, 2 shards x 1 thread
    .venv/bin/python benchmarks/timing/bench_autoattack.py --n 16 --shards 2   # a quick smoke run

The images are split into ``--shards`` contiguous shards evaluated in parallel processes (one torch thread
each: on a 2-core machine two single-thread processes beat one two-thread process), each an ordinary
``rdc_lib.evaluation.evaluate`` with per-example records under ``--records`` (an interrupted run resumes;
a resumed run is flagged, its time is not a measurement). Settings are those of docs/results.md: ensemble
APGD-CE, APGD-DLR, APGD-T (3 targets) with 25 iterations and Square with 500 queries, l_inf 0.1,
multi-head T = 16, fixed noise, exact gradients through LM.

Printed: wall time, robust accuracy with its interval, and what early stopping on broken examples saved:
queries spent / queries without early stopping, split into gradient queries (APGD: one forward + backward
through LM and the classifier per query) and forward-only queries (Square, clean and verification calls).
Sanity checks are off here (they run on the first 32 images, identical to the results-table cell, whose
checks are in docs/results.md; a result without them is "not checked"); ``--checks`` turns them on for shard 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rdc_lib.core.choices import HEADLINE_BUDGET, LEGACY_DENOISERS

# digits_multi by name: the denoiser docs/raw/bench_autoattack.json was measured with (heads "multi" then)
SETTINGS = dict(
    defense="rdc",
    attack="autoattack",
    norm="linf",
    eps=0.1,
    **HEADLINE_BUDGET,
    heads="multi",
    denoiser=LEGACY_DENOISERS["multi"],
    grad_mode="exact",
    seed=0,
)


def _shard(offset: int, n: int, chunk: int, records: str, checks: bool) -> dict:
    import torch

    from rdc_lib.evaluation import EvalConfig, evaluate
    from rdc_lib.evaluation.records import records_paths as _paths

    torch.set_num_threads(1)
    cfg = EvalConfig(n_images=n, offset=offset, chunk=chunk, run_checks=checks, **SETTINGS)
    resumed = _paths(records, cfg)[0].is_file()
    t0 = time.perf_counter()
    res = evaluate(cfg, records_dir=records, progress=False)
    res["shard_seconds"] = time.perf_counter() - t0
    res["resumed"] = resumed
    return res


def _provenance(checks: bool) -> dict:
    from rdc_lib.evaluation import EvalConfig
    from rdc_lib.evaluation.provenance import eval_provenance

    return eval_provenance(EvalConfig(run_checks=checks, **SETTINGS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=25, help="images per saved chunk")
    ap.add_argument("--records", default="runs/bench_autoattack")
    ap.add_argument("--checks", action="store_true", help="run the sanity checks (shard 0)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.n < 1 or args.shards < 1:
        raise SystemExit("--n and --shards must be >= 1")
    bounds = [(args.n * i // args.shards, args.n * (i + 1) // args.shards) for i in range(args.shards)]
    Path(args.records).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.shards, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(_shard, lo, hi - lo, args.chunk, args.records, args.checks and i == 0)
            for i, (lo, hi) in enumerate(bounds)
            if hi > lo
        ]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - t0

    from rdc_lib.evaluation.stats import wilson

    robust = wilson(sum(r["robust"]["correct"] for r in results), args.n)
    clean = wilson(sum(r["clean"]["correct"] for r in results), args.n)
    grad_spent = grad_budget = fwd_spent = fwd_budget = 0
    for r in results:
        for chunk in r["attack_stats"]:
            extra = chunk["queries_spent"] - sum(a["queries"] for a in chunk["attacks"].values())
            fwd_spent, fwd_budget = fwd_spent + extra, fwd_budget + chunk["n"]
            for name, a in chunk["attacks"].items():
                if name == "square":
                    fwd_spent, fwd_budget = fwd_spent + a["queries"], fwd_budget + a["budget"]
                else:
                    grad_spent, grad_budget = grad_spent + a["queries"], grad_budget + a["budget"]
    figures = {
        "n": args.n,
        "shards": args.shards,
        "wall_seconds": wall,
        "wall_minutes": wall / 60,
        "shard_seconds": [r["shard_seconds"] for r in results],
        "resumed": any(r["resumed"] for r in results),
        "clean": clean.as_dict(),
        "robust": robust.as_dict(),
        "gradient_queries": {
            "spent": grad_spent,
            "budget": grad_budget,
            "saving_ratio": grad_budget / max(1, grad_spent),
        },
        "forward_queries": {"spent": fwd_spent, "budget": fwd_budget, "saving_ratio": fwd_budget / max(1, fwd_spent)},
        "settings": SETTINGS,
        "provenance": _provenance(args.checks),
    }
    print(f"AutoAttack-style RDC evaluation, {args.n} images, {args.shards} shards x 1 thread")
    shards = ", ".join(f"{s / 60:.1f}" for s in figures["shard_seconds"])
    print(f"  wall time        {wall / 60:.1f} min  (shards: {shards} min)")
    print(f"  clean            {100 * clean.value:.1f}% ({clean.correct}/{args.n})")
    print(
        f"  robust           {100 * robust.value:.1f}% ({robust.correct}/{args.n}, 95% CI "
        f"{100 * robust.low:.0f}-{100 * robust.high:.0f})"
    )
    print(
        f"  early stopping   gradient queries {grad_spent}/{grad_budget} "
        f"({figures['gradient_queries']['saving_ratio']:.2f}x fewer); forward-only {fwd_spent}/{fwd_budget} "
        f"({figures['forward_queries']['saving_ratio']:.2f}x fewer)"
    )
    if figures["resumed"]:
        print("  NOTE: resumed from stored records; the wall time is not a measurement")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
