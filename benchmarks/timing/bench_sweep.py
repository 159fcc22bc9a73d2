"""Sweep engine figures: 2 local workers vs 1 on a 2x2x2 grid, and papermill's overhead per cell.

    python benchmarks/timing/bench_sweep.py                 # tiny CPU-bound target + notebook overhead
    python benchmarks/timing/bench_sweep.py --eval          # also the real evaluation (cnn/at-cnn, pgd, n 32)

Every run starts from an empty store in a temporary folder, so nothing is resumed. Wall times include
starting the embedded LocalCluster (a few seconds; one start per run); "cells" is the sum of the
cells' own durations as measured on the workers. The last line is all figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # the cheap targets (tests/sweep_targets.py) for the workers

from rdc_lib.sweep import parse_sweep, run_sweep  # noqa: E402


def _run(text: str, workers: int, base: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body = text + f"output: {tmp}/out\n"
        spec = parse_sweep(body, source="bench.yaml", base_dir=base or Path(tmp))
        t0 = time.perf_counter()
        res = run_sweep(spec, workers=workers, devices=[], progress=False)
        wall = time.perf_counter() - t0
    if res.status.failed:
        raise RuntimeError(f"{res.status.failed} cells failed: {[o.error for o in res.outcomes if o.error][:1]}")
    durations = [o.duration for o in res.outcomes]
    return {
        "workers": workers,
        "cells": len(durations),
        "wall_s": round(wall, 2),
        "cell_sum_s": round(sum(durations), 2),
        "cell_mean_s": round(statistics.fmean(durations), 3),
    }


def scaling(text: str, label: str) -> dict:
    one, two = _run(text, 1), _run(text, 2)
    ratio = one["wall_s"] / two["wall_s"]
    print(
        f"{label}: 1 worker {one['wall_s']:.1f} s, 2 workers {two['wall_s']:.1f} s -> speed-up {ratio:.2f}x "
        f"({one['cells']} cells; mean cell {one['cell_mean_s']:.2f} s with 1 worker, {two['cell_mean_s']:.2f} s "
        "with 2)"
    )
    return {"one": one, "two": two, "speedup": round(ratio, 3)}


def papermill_overhead(cells: int) -> dict:
    grid = ", ".join(str(i) for i in range(1, cells + 1))
    nb = _run(f"notebook: sweep_tiny.ipynb\ngrid:\n  x: [{grid}]\n", 1, base=ROOT / "tests" / "data")
    fn = _run(f"function: sweep_targets:tiny_cell\ngrid:\n  x: [{grid}]\n", 1)
    extra = nb["cell_mean_s"] - fn["cell_mean_s"]
    print(
        f"papermill overhead: {nb['cell_mean_s']:.2f} s per notebook cell vs {fn['cell_mean_s']:.3f} s per direct "
        f"call -> {extra:.2f} s per cell (kernel start + execution + save), {cells} cells on 1 worker"
    )
    return {"notebook": nb, "function": fn, "overhead_per_cell_s": round(extra, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=float, default=1.0, help="CPU seconds per tiny cell")
    ap.add_argument("--nb-cells", type=int, default=3, help="notebook cells for the papermill overhead (0: skip)")
    ap.add_argument("--eval", action="store_true", help="also the real evaluation target (slow on CPU)")
    ap.add_argument("--eval-n", type=int, default=32)
    args = ap.parse_args(argv)
    figures: dict = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    tiny = (
        f"function: sweep_targets:busy_cell\nparams: {{work: {args.work}}}\n"
        "grid:\n  x: [1, 2]\n  label: [a, b]\nseeds: [0, 1]\n"
    )
    figures["tiny_2x2x2"] = scaling(tiny, f"tiny 2x2x2 ({args.work:g} CPU-s per cell)")
    if args.nb_cells:
        figures["papermill"] = papermill_overhead(args.nb_cells)
    if args.eval:
        real = (
            f"function: eval\nparams: {{attack: pgd, steps: 10, run_checks: false}}\nn: {args.eval_n}\n"
            "grid:\n  defense: [cnn, at-cnn]\n  eps: [0.05, 0.1]\nseeds: [0, 1]\n"
        )
        figures["eval_2x2x2"] = scaling(real, f"eval cnn/at-cnn x eps x seeds (pgd, n {args.eval_n})")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
