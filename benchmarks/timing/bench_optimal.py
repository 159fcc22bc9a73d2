"""Benchmark: the closed-form optimal diffusion classifier vs the learned one on digits (issue 11).

Times classifying the digits test split (360 images, or ``--n``) with the optimal DC and with the
learned single-head and multi-head DCs, all at T levels (default 32) on one CPU thread, and prints
the time ratios (target: optimal within 5x of learned) and the clean accuracies (optimal DC on test
and training images, learned DCs on test images). Without the trained checkpoints
(data/checkpoints/digits_{single,multi}.safetensors: the U-Net denoisers by name, not the defaults of
``rdc eval --heads``) a randomly initialised denoiser with
``rdc_lib.train.DIGITS_BACKBONE`` stands in; the output says so and its accuracy means nothing.

    python benchmarks/timing/bench_optimal.py [--n 360] [--T 32] [--batch 40]

The last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rdc_lib.core.choices import LEGACY_DENOISERS
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.models import DenoiserConfig, build_denoiser, load_denoiser
from rdc_lib.models.optimal import OptimalDenoiser
from rdc_lib.train import DIGITS_BACKBONE

ROOT = Path(__file__).resolve().parents[2]


def classify(dc: DiffusionClassifier, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """Predictions (N,) and wall time in seconds (after a one-batch warm-up)."""
    with torch.no_grad():
        dc(x[: min(4, len(x))])
        start = time.perf_counter()
        preds = torch.cat([dc(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return preds, time.perf_counter() - start


def learned_denoiser(heads: str, ckpt_dir: Path):
    path = ckpt_dir / f"{LEGACY_DENOISERS[heads]}.safetensors"
    if path.exists():
        return load_denoiser(path), str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    cfg = DenoiserConfig(heads=heads, backbone=dict(DIGITS_BACKBONE))
    return build_denoiser(cfg).eval(), f"RANDOM weights ({path.name} not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=360, help="test images to classify (subsample; max 360)")
    parser.add_argument("--T", type=int, default=32, help="noise levels of the paper grid")
    parser.add_argument("--batch", type=int, default=40, help="images per classifier call")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "data" / "checkpoints")
    parser.add_argument("--heads", nargs="+", default=["single", "multi"], choices=["single", "multi"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    n = min(args.n, len(x_te))
    x_te, y_te = x_te[:n], y_te[:n]
    grid = make_grid(args.T)
    result: dict = {"n_test": n, "T": args.T, "threads": 1, "batch": args.batch}

    opt_dc = DiffusionClassifier(OptimalDenoiser(x_tr, y_tr), grid, noise_mode="fixed", seed=0)
    pred, t_opt = classify(opt_dc, x_te, args.batch)
    result["optimal_seconds"] = t_opt
    result["optimal_acc_test"] = float((pred == y_te).float().mean())
    pred_tr, _ = classify(opt_dc, x_tr[:n], args.batch)
    result["optimal_acc_train"] = float((pred_tr == y_tr[:n]).float().mean())
    print(
        f"optimal DC   T={args.T}: {t_opt:7.2f} s for {n} test images; clean acc test "
        f"{result['optimal_acc_test']:.4f}, train (first {n}) {result['optimal_acc_train']:.4f}"
    )

    for heads in args.heads:
        den, source = learned_denoiser(heads, args.checkpoints)
        dc = DiffusionClassifier(den, grid, noise_mode="fixed", seed=0)
        pred, t_learned = classify(dc, x_te, args.batch)
        acc = float((pred == y_te).float().mean())
        ratio = t_opt / t_learned
        result[f"learned_{heads}"] = {
            "source": source,
            "seconds": t_learned,
            "acc_test": acc,
            "optimal_over_learned": ratio,
            "within_5x": ratio <= 5.0,
        }
        print(
            f"learned DC ({heads}-head, {source}) T={args.T}: {t_learned:7.2f} s; clean acc test {acc:.4f}; "
            f"time ratio optimal/learned = {ratio:.3f} (target <= 5: {'met' if ratio <= 5 else 'NOT met'})"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
