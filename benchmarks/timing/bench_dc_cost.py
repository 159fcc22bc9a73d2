"""What one attack gradient costs, denoiser by denoiser: the price of the multi-head DC's robustness, printed.

    .venv/bin/python benchmarks/timing/bench_dc_cost.py
        [--denoisers digits_film_single digits_film_multi_distill9_adv ...]
        [--defenses dc rdc] [--n 20] [--T 16] [--grid-sigma-min 0.6] [--repeats 3] [--threads 1] [--json FILE]

For every denoiser (a shipped checkpoint name or a path) and defense, on the first ``n`` digits test images with
the headline settings (fixed noise, T levels from ``grid-sigma-min``; RDC with the default LM): network passes
per image for one classification, parameters, and the wall seconds per image of one forward and of one
forward plus the exact input gradient (what every attack iteration pays), the median of ``repeats`` timed calls
after one warm-up; the last column is each gradient's cost relative to the first denoiser's, measured in the same
run. Seconds depend on the machine; the ratios are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.data import load_dataset
from rdc_lib.defenses.registry import DefenseSpec, build_defense


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(denoiser: str, defense: str, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    """One row: passes, parameters and seconds per image of a forward and of a forward + input gradient."""
    # denoiser_path decides the network; heads, classes and parameters are read off the loaded denoiser
    model = build_defense(
        DefenseSpec(
            name=defense,
            timesteps=args.T,
            grid_sigma_min=args.grid_sigma_min,
            noise_mode="fixed",
            denoiser_path=str(resolve_checkpoint(denoiser)),
        )
    )
    net = model.denoiser
    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def gradient() -> None:
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(model(xa), y).backward()

    passes_dc = args.T if net.heads == "multi" else args.T * net.num_classes
    return {
        "denoiser": denoiser,
        "defense": defense,
        "heads": net.heads,
        "params": sum(p.numel() for p in net.parameters()),
        "dc_passes_per_image": passes_dc,
        "forward_s_per_image": _timed(forward, args.repeats) / len(x),
        "gradient_s_per_image": _timed(gradient, args.repeats) / len(x),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoisers", nargs="+", default=[DEFAULT_DENOISERS["single"], DEFAULT_DENOISERS["multi"]])
    ap.add_argument("--defenses", nargs="+", default=["dc"], choices=["dc", "rdc"])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--grid-sigma-min", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        ap.error(f"--n and --repeats must be >= 1, got {args.n} and {args.repeats}")
    torch.set_num_threads(args.threads)
    x, y = load_dataset("digits", "test")
    x, y = x[: args.n], y[: args.n]
    rows = [measure(d, defense, x, y, args) for defense in args.defenses for d in args.denoisers]
    print(
        f"first {args.n} digits test images, T = {args.T} from sigma {args.grid_sigma_min:g}, fixed noise, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(
        "defense | denoiser | heads | params | DC passes / image | forward s / image | gradient s / image | "
        "gradient cost vs first"
    )
    for defense in args.defenses:
        group = [r for r in rows if r["defense"] == defense]
        for r in group:
            r["gradient_vs_first"] = r["gradient_s_per_image"] / group[0]["gradient_s_per_image"]
            print(
                f"{defense} | {r['denoiser']} | {r['heads']} | {r['params']:,} | {r['dc_passes_per_image']} | "
                f"{r['forward_s_per_image']:.4f} | {r['gradient_s_per_image']:.4f} | {r['gradient_vs_first']:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
