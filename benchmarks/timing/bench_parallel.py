"""Both cores of a 2-core machine: one process with two torch threads, or two single-thread shards?

    .venv/bin/python benchmarks/timing/bench_parallel.py --n 40                  # the strongest protocol, 40 images
    .venv/bin/python benchmarks/timing/bench_parallel.py --n 40 --out docs/raw/bench_parallel.json

Runs the same evaluation (the strongest protocol of docs/evaluation.md: stochastic RDC, exact gradients
+ EOT 2, verified stop V = 4, worst of N = 10; APGD-CE 40 iterations, l_inf 0.1, multi-head, T = 16) on the
first ``--n`` test images twice, in fresh processes and in one run: (a) one process, ``torch`` threads = 2;
(b) two processes with one thread each, on the two halves, side by side. Prints the wall seconds of each and
their ratio. Sanity checks are off (a fixed cost, the same for both; see docs/speed.md) and nothing is stored.
Measure on an otherwise idle machine: a busy core makes either layout look worse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rdc_lib.core.choices import LEGACY_DENOISERS

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.timing
from benchmarks.timing.profile_strongest import STRONGEST as STRONGEST_PROTOCOL  # noqa: E402

# digits_multi by name: the denoiser docs/raw/bench_parallel.json was measured with (heads "multi" then);
# APGD-CE with 40 iterations, no sanity checks (a fixed cost, the same for both layouts)
STRONGEST = dict(STRONGEST_PROTOCOL, denoiser=LEGACY_DENOISERS["multi"], steps=40, run_checks=False)


def _evaluate(offset: int, n: int, threads: int) -> dict:
    import torch

    from rdc_lib.evaluation import EvalConfig, evaluate

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = evaluate(EvalConfig(n_images=n, offset=offset, chunk=n, **STRONGEST), progress=False)
    return {"seconds": time.perf_counter() - t0, "robust_worst": res["robust_worst"]["correct"], "n": n}


def measure(n: int) -> dict:
    """Wall seconds of (a) one two-thread process and (b) two one-thread shards, on the same ``n`` images."""
    half = n // 2
    with ProcessPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        threads = pool.submit(_evaluate, 0, n, 2).result()
        threads["wall"] = time.perf_counter() - t0
    with ProcessPoolExecutor(2) as pool:
        t0 = time.perf_counter()
        parts = [f.result() for f in [pool.submit(_evaluate, 0, half, 1), pool.submit(_evaluate, half, n - half, 1)]]
        shards = {
            "wall": time.perf_counter() - t0,
            "robust_worst": sum(p["robust_worst"] for p in parts),
            "shard_seconds": [p["seconds"] for p in parts],
        }
    return {
        "n": n,
        "protocol": STRONGEST,
        "one_process_two_threads": threads,
        "two_shards_one_thread": shards,
        "ratio_threads_over_shards": threads["wall"] / shards["wall"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="test images (split in two halves for the shards)")
    ap.add_argument("--out", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.n < 2:
        raise SystemExit(f"--n must be >= 2 (two shards), got {args.n}")
    row = measure(args.n)
    a, b = row["one_process_two_threads"], row["two_shards_one_thread"]
    print(
        f"one process, 2 threads : {a['wall']:.1f} s wall ({a['wall'] / args.n:.2f} s/image), worst-of-10 robust "
        f"{a['robust_worst']}/{args.n}"
    )
    print(
        f"two shards, 1 thread   : {b['wall']:.1f} s wall ({b['wall'] / args.n:.2f} s/image), worst-of-10 robust "
        f"{b['robust_worst']}/{args.n}"
    )
    print(f"ratio (threads / shards): {row['ratio_threads_over_shards']:.2f}x")
    if args.out:
        from rdc_lib.evaluation.provenance import provenance

        row["provenance"] = provenance()
        Path(args.out).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
