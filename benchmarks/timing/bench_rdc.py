"""RDC benchmark (issue 3 targets), printed; run on demand:

    .venv/bin/python benchmarks/timing/bench_rdc.py [--n 360] [--T 32] [--threads 1]

1. Clean accuracy of RDC vs DC on the digits test split (multi-head, same T, same seed): target
   RDC within 1 point of DC. The U-Net denoisers digits_multi / digits_single by name (``--heads``; the
   issue-3 targets were set on them), not the defaults of ``rdc eval --heads``.
2. Peak memory of the DC's input gradient at T = 32, K = 10: the chunked exact gradient
   (recomputation, one chunk of levels at a time) vs plain autograd, as a ratio; measured as the
   peak bytes autograd keeps for backward (rdc_lib.evaluation.grad.SavedTensorMeter, parameters excluded),
   and checked equal to 1e-5 relative.
3. The LM trajectory's estimated log-likelihood bound: at every LM step, the unconditional ELBO of
   the iterate on a fixed grid (T levels, fixed noise), averaged over the test split: the mean
   curve and whether it rises monotonically.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rdc_lib.core.choices import LEGACY_DENOISERS
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.defenses.rdc import RobustDiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.diffusion.elbo import elbo_terms
from rdc_lib.diffusion.lm import LMConfig, likelihood_maximization
from rdc_lib.evaluation.grad import SavedTensorMeter, model_parameters
from rdc_lib.evaluation.stats import wilson
from rdc_lib.models import load_denoiser


@torch.no_grad()
def _predict(model, x, batch=60):
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, x.shape[0], batch)])


def accuracy(args, x, y) -> dict:
    den = load_denoiser(checkpoint_path(LEGACY_DENOISERS[args.heads]))
    grid = make_grid(args.T)
    out = {}
    for mode in ("fixed", "stochastic"):
        dc = DiffusionClassifier(den, grid, noise_mode=mode, seed=args.seed)
        rdc = RobustDiffusionClassifier(den, grid=grid, noise_mode=mode, seed=args.seed)
        t0 = time.perf_counter()
        acc_dc = wilson(int((_predict(dc, x) == y).sum()), len(y))
        t_dc = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc_rdc = wilson(int((_predict(rdc, x) == y).sum()), len(y))
        t_rdc = time.perf_counter() - t0
        out[mode] = {"dc": acc_dc.as_dict(), "rdc": acc_rdc.as_dict(), "dc_seconds": t_dc, "rdc_seconds": t_rdc}
        print(
            f"[{mode:10s}] DC  {acc_dc}  [{t_dc:.1f}s]\n[{mode:10s}] RDC {acc_rdc}  [{t_rdc:.1f}s]  "
            f"difference {100 * (acc_rdc.value - acc_dc.value):+.2f} points; RDC/DC time {t_rdc / t_dc:.2f}x",
            flush=True,
        )
    return out


def memory(args, x, y) -> dict:
    den = load_denoiser(checkpoint_path("digits_single"))  # K passes per level: the memory-heavy case
    grid = make_grid(args.T)
    xb = x[: args.mem_batch]
    res = {}
    grads = {}
    for mode in ("autograd", "chunked"):
        dc = DiffusionClassifier(den, grid, noise_mode="fixed", backward_mode=mode, chunk_size=args.chunk)
        xr = xb.clone().requires_grad_(True)
        with SavedTensorMeter(exclude=model_parameters(den)) as meter:
            loss = torch.nn.functional.cross_entropy(dc(xr), y[: args.mem_batch])
            (grads[mode],) = torch.autograd.grad(loss, xr)
        res[mode] = meter.peak_bytes
    rel = ((grads["chunked"] - grads["autograd"]).norm() / grads["autograd"].norm()).item()
    print(
        f"DC input gradient, T={args.T}, K=10, batch {args.mem_batch}, single-head: peak saved bytes "
        f"autograd {res['autograd'] / 2**20:.1f} MiB, chunked {res['chunked'] / 2**20:.1f} MiB: ratio "
        f"{res['autograd'] / max(1, res['chunked']):.1f}x less; gradients agree to {rel:.1e} relative",
        flush=True,
    )
    return {
        "autograd_bytes": res["autograd"],
        "chunked_bytes": res["chunked"],
        "ratio": res["autograd"] / max(1, res["chunked"]),
        "relative_difference": rel,
    }


@torch.no_grad()
def trajectory(args, x) -> dict:
    den = load_denoiser(checkpoint_path(LEGACY_DENOISERS[args.heads]))
    grid = make_grid(args.T)
    noise = torch.randn(1, 1, args.T, *x.shape[1:], generator=torch.Generator().manual_seed(123))
    null = torch.tensor([den.null_label])
    cfg = LMConfig(steps=args.lm_steps)
    curves = []
    for i in range(0, x.shape[0], 60):
        xb = x[i : i + 60]
        with torch.enable_grad():
            res = likelihood_maximization(
                den, xb, config=cfg, generator=torch.Generator().manual_seed(args.seed + i), return_trajectory=True
            )
        per_step = [
            -elbo_terms(den, it, grid, classes=null, noise=noise.expand(len(xb), -1, -1, -1, -1, -1)).sum((1, 2))
            for it in res.trajectory
        ]
        curves.append(torch.stack(per_step))  # (N + 1, b): estimated log-likelihood bound (up to a constant)
    curve = torch.cat(curves, 1)
    mean = curve.mean(1)
    increasing = bool((mean[1:] >= mean[:-1]).all())
    frac = (curve[-1] > curve[0]).float().mean().item()
    print(
        "LM trajectory, mean estimated log-likelihood bound (-unconditional ELBO, fixed grid and noise) per step: "
        + ", ".join(f"{v:.4f}" for v in mean.tolist())
        + f"\n  monotonically rising on average: {increasing}; "
        f"images whose bound rose over the trajectory: {100 * frac:.1f}%",
        flush=True,
    )
    return {"mean_curve": mean.tolist(), "monotone": increasing, "fraction_improved": frac}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--T", type=int, default=32)
    ap.add_argument("--heads", default="multi")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-steps", type=int, default=5)
    ap.add_argument("--mem-batch", type=int, default=4)
    ap.add_argument(
        "--chunk", type=int, default=320, help="chunk size (image, class, level triples) for the chunked gradient"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "memory", "trajectory"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_dataset("digits", "test")
    x, y = x[: args.n], y[: args.n]
    out = {}
    if "memory" not in args.skip:
        out["memory"] = memory(args, x, y)
    if "trajectory" not in args.skip:
        out["trajectory"] = trajectory(args, x)
    if "accuracy" not in args.skip:
        out["accuracy"] = accuracy(args, x, y)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
