"""Diffusion-classifier benchmark (issue 2 targets), printed as a table; run on demand:

    .venv/bin/python benchmarks/timing/bench_classifier.py [--n 360] [--T 32] [--n-loop 10] [--threads 1]

Measures, in one run on the digits test split with the shipped checkpoints:
- clean accuracy of the single-head and multi-head DC at several T (target: single >= 98% at T <= 32,
  multi within 1 point of single at the same T), with Wilson 95% intervals;
- wall-clock of single- vs multi-head classification and their ratio (and network passes);
- batched DC throughput vs a straightforward per-image, per-class, per-level loop over the same
  network and settings (target: >= 10x), images/s for both.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.evaluation.stats import wilson
from rdc_lib.models import load_denoiser


@torch.no_grad()
def classify(dc: DiffusionClassifier, x: torch.Tensor, batch: int = 120) -> torch.Tensor:
    return torch.cat([dc(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def naive_loop(denoiser, x: torch.Tensor, grid, noise: torch.Tensor) -> torch.Tensor:
    """The baseline: one network call per (image, class, level), batch size 1."""
    preds = []
    for b in range(x.shape[0]):
        x0 = x[b : b + 1] * 2 - 1
        losses = []
        for k in range(denoiser.num_classes):
            total = 0.0
            for t in range(len(grid)):
                sigma = grid.sigmas[t : t + 1]
                den = denoiser(x0 + sigma * noise[b, 0, t : t + 1], sigma, torch.tensor([k]))
                total += grid.weights[t].item() * ((den - x0) ** 2).mean().item()
            losses.append(total)
        preds.append(int(torch.tensor(losses).argmin()))
    return torch.tensor(preds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--T", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--n-loop", type=int, default=8, help="images for the naive-loop baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--multi", default="digits_multi", help="which shipped multi-head checkpoint to compare")
    ap.add_argument("--skip-loop", action="store_true", help="skip the naive-loop throughput comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_dataset("digits", "test")
    x, y = x[: args.n], y[: args.n]
    nets = {
        "single": load_denoiser(checkpoint_path("digits_single")),
        "multi": load_denoiser(checkpoint_path(args.multi)),
    }
    out: dict = {"n": args.n, "threads": args.threads, "accuracy": {}, "seconds": {}}

    print(f"digits test split, n = {args.n}, torch threads = {args.threads}, multi-head = {args.multi}")
    print(f"{'T':>4} {'heads':>6} {'accuracy (95% CI)':>34} {'seconds':>9} {'passes/img':>10}")
    for T in args.T:
        grid = make_grid(T)
        for heads, net in nets.items():
            dc = DiffusionClassifier(net, grid, seed=args.seed)
            t0 = time.perf_counter()
            pred = classify(dc, x)
            dt = time.perf_counter() - t0
            acc = wilson(int((pred == y).sum()), args.n)
            out["accuracy"][f"{heads}_T{T}"] = acc.as_dict()
            out["seconds"][f"{heads}_T{T}"] = dt
            print(f"{T:>4} {heads:>6} {str(acc):>34} {dt:>9.2f} {dc.network_passes(1):>10}")
        s, m = out["seconds"][f"single_T{T}"], out["seconds"][f"multi_T{T}"]
        gap = 100 * (out["accuracy"][f"single_T{T}"]["value"] - out["accuracy"][f"multi_T{T}"]["value"])
        print(
            f"     T={T}: single/multi wall-clock ratio {s / m:.2f}x; accuracy gap (single - multi) {gap:+.2f} points"
        )

    if args.skip_loop:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
        return
    # batched vs naive loop, same network (single-head), same grid and noise
    T = max(args.T)
    grid = make_grid(T)
    net = nets["single"]
    xs = x[: args.n_loop]
    noise = torch.randn(args.n_loop, 1, T, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    loop_pred = naive_loop(net, xs, grid, noise)
    loop_dt = time.perf_counter() - t0
    dc = DiffusionClassifier(net, grid, noise_mode="stochastic", seed=args.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        batched_pred = dc(xs, noise=noise).argmax(1)
    batched_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    classify(dc, x)
    batched_dt = time.perf_counter() - t0
    loop_ips, batched_ips = args.n_loop / loop_dt, args.n / batched_dt
    out.update(
        loop_images_per_s=loop_ips,
        batched_images_per_s=batched_ips,
        throughput_ratio=batched_ips / loop_ips,
        loop_agrees=bool(torch.equal(loop_pred, batched_pred)),
        batched_small_seconds=batched_small,
    )
    print(
        f"\nsingle-head, T={T}: naive per-image/per-class/per-level loop {loop_ips:.2f} img/s "
        f"({args.n_loop} images); batched DC {batched_ips:.2f} img/s ({args.n} images): "
        f"{batched_ips / loop_ips:.1f}x; same predictions on the loop's images: {out['loop_agrees']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
