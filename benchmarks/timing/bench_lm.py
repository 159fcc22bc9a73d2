"""Benchmark: the cost of likelihood maximization relative to one DC classification, and the peak
memory of exact gradients through LM as the number of steps grows.

Run on demand:  python benchmarks/timing/bench_lm.py [--batch 16] [--T 32] [--device cpu|cuda] [--sanity 64]

``--sanity N`` adds, on N digits test images: clean accuracy of DC, RDC and DiffPure, and the
gradient health checks of rdc_lib.evaluation.grad (finite/nonzero, finite differences in fixed mode, cosine
similarity across stochastic draws and the EOT size it suggests).

Uses data/checkpoints/digits_{single,multi}.safetensors (the U-Net denoisers by name, not the defaults of
``rdc eval --heads``) when present, else a randomly initialised
denoiser of the same configuration (rdc_lib.train.DIGITS_BACKBONE; timings are the same, outputs
meaningless). Memory is measured as the peak bytes autograd keeps for backward (saved tensors,
parameters excluded; rdc_lib.evaluation.grad.SavedTensorMeter) and, on CUDA, also torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rdc_lib.core.choices import LEGACY_DENOISERS
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.defenses.purify import DiffPure
from rdc_lib.defenses.rdc import RobustDiffusionClassifier
from rdc_lib.diffusion.lm import LMConfig, draw_lm_noise, likelihood_maximization
from rdc_lib.diffusion.lm_grad import lm_exact
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.evaluation.grad import (
    SavedTensorMeter,
    check_gradients_finite_nonzero,
    finite_difference_check,
    gradient_cosine_similarity,
    model_parameters,
    suggest_eot,
)
from rdc_lib.models.checkpoints import load_denoiser
from rdc_lib.models.config import DenoiserConfig, build_denoiser
from rdc_lib.train import DIGITS_BACKBONE

ROOT = Path(__file__).resolve().parents[2]


def get_denoiser(heads: str, device: torch.device):
    path = ROOT / "data" / "checkpoints" / f"{LEGACY_DENOISERS[heads]}.safetensors"
    if path.exists():
        return load_denoiser(path, device=device).eval(), str(path.relative_to(ROOT))
    torch.manual_seed(0)
    cfg = DenoiserConfig(heads=heads, backbone=dict(DIGITS_BACKBONE))
    return build_denoiser(cfg).to(device).eval(), "random init (DIGITS_BACKBONE)"


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def cost_table(heads: str, args, device: torch.device) -> None:
    den, source = get_denoiser(heads, device)
    x = torch.rand(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    dc = DiffusionClassifier(den, make_grid(args.T), noise_mode="fixed")
    cfg = LMConfig()
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        t_dc = timed(lambda: dc(x), args.repeats, device)
    t_lm = timed(lambda: likelihood_maximization(den, x, config=cfg, generator=g), args.repeats, device)
    noise = draw_lm_noise(cfg.steps, tuple(x.shape), generator=g, device=device)

    def exact_grad():
        xg = x.clone().requires_grad_(True)
        dc(lm_exact(den, xg, noise, cfg)).sum().backward()

    def bpda_grad():
        xg = x.clone().requires_grad_(True)
        x_hat = likelihood_maximization(den, xg, noise=noise, config=cfg).x
        dc(xg + (x_hat - xg).detach()).sum().backward()

    t_exact = timed(exact_grad, max(1, args.repeats // 2), device)
    t_bpda = timed(bpda_grad, max(1, args.repeats // 2), device)
    dc_passes = dc.network_passes(1)
    lm_passes = cfg.steps  # forwards per image; each has one backward (~2 forward-equivalents)
    b = args.batch
    print(f"\n[{heads}-head denoiser: {source}; batch {b}, DC T = {args.T}, LM = {cfg}]")
    print(
        f"  network passes per image: DC {dc_passes} forwards; LM {lm_passes} forwards + {lm_passes} backwards "
        f"(~{3 * lm_passes} forward-equivalents) = {lm_passes / dc_passes:.4f} DC in forwards, "
        f"~{3 * lm_passes / dc_passes:.4f} DC in forward-equivalents"
    )
    print(
        f"  wall-clock per image: DC {1e3 * t_dc / b:.3f} ms, LM {1e3 * t_lm / b:.3f} ms -> LM = {t_lm / t_dc:.3f} x DC"
    )
    print(
        f"  input gradient of RDC per image: exact {1e3 * t_exact / b:.3f} ms, BPDA {1e3 * t_bpda / b:.3f} ms "
        f"-> exact / BPDA = {t_exact / t_bpda:.2f}"
    )


def lm_memory(den, x, steps: int, exact: bool, device: torch.device) -> tuple[int, int | None]:
    cfg = LMConfig(steps=steps)
    noise = draw_lm_noise(
        steps, tuple(x.shape), generator=torch.Generator(device=device).manual_seed(0), device=device, dtype=x.dtype
    )
    xg = x.clone().requires_grad_(True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with SavedTensorMeter(exclude=model_parameters(den)) as meter:
        out = (
            lm_exact(den, xg, noise, cfg)
            if exact
            else likelihood_maximization(den, xg, noise=noise, config=cfg, create_graph=True).x
        )
        out.sum().backward()
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        cuda_peak = torch.cuda.max_memory_allocated() - base
    return meter.peak_bytes, cuda_peak


def memory_table(args, device: torch.device) -> None:
    den, source = get_denoiser("single", device)
    x = torch.rand(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"\n[peak memory of d LM(x) / dx, single-head denoiser: {source}; batch {args.batch}]")
    for exact in (True, False):
        name = "exact (per-step recomputation)" if exact else "unrolled autograd (create_graph)"
        rows = {n: lm_memory(den, x, n, exact, device) for n in (1, 5, 20)}
        saved = ", ".join(f"N={n}: {rows[n][0] / 2**20:.2f} MiB ({rows[n][0] / rows[1][0]:.2f}x)" for n in rows)
        print(f"  {name}: saved tensors {saved}")
        if device.type == "cuda":
            cuda = ", ".join(f"N={n}: {rows[n][1] / 2**20:.2f} MiB ({rows[n][1] / rows[1][1]:.2f}x)" for n in rows)
            print(f"  {name}: CUDA peak allocated {cuda}")


def _accuracy(model, x, y, batch: int) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def sanity_table(args, device: torch.device) -> None:
    den, source = get_denoiser("multi", device)
    x, y = load_dataset("digits", "test")
    x, y = x[: args.sanity].to(device), y[: args.sanity].to(device)
    grid = make_grid(args.T)
    cnn_path = ROOT / "data" / "checkpoints" / "digits_cnn.safetensors"
    cnn = None
    if cnn_path.exists():
        from rdc_lib.defenses.baselines import load_classifier

        cnn = load_classifier(cnn_path, device=device)

    def build(name: str, noise_mode: str):
        if name == "dc":
            return DiffusionClassifier(den, grid, noise_mode=noise_mode)
        if name.startswith("rdc"):
            mode = name.split("-")[1]
            return RobustDiffusionClassifier(den, grid=grid, grad_mode=mode, noise_mode=noise_mode)
        return DiffPure(den, cnn, noise_mode=noise_mode)

    names = ["dc", "rdc-exact", "rdc-bpda"] + (["diffpure"] if cnn is not None else [])
    print(f"\n[sanity on {len(x)} digits test images, multi-head denoiser: {source}; DC T = {args.T}]")
    if cnn is not None:
        print(f"  clean accuracy cnn: {_accuracy(cnn, x, y, args.batch):.3f}")
    n_grad = min(len(x), args.batch)
    xs, ys = x[:n_grad], y[:n_grad]
    for name in names:
        if name != "rdc-bpda":
            print(f"  clean accuracy {name} (fixed noise): {_accuracy(build(name, 'fixed'), x, y, args.batch):.3f}")
        fixed, stoch = build(name, "fixed"), build(name, "stochastic")
        health = check_gradients_finite_nonzero(fixed, xs, ys)
        fd = finite_difference_check(
            fixed, xs, ys, n_directions=2, eps=1e-3, generator=torch.Generator(device=device).manual_seed(0)
        )
        cos = gradient_cosine_similarity(stoch, xs, ys, n_samples=4)
        eot = suggest_eot(cos)
        print(
            f"  {name}: gradients {health.message}; finite differences (fixed) max rel err "
            f"{fd.max_rel_error:.3g} (median {float(fd.rel_error.median()):.3g}); cosine across draws "
            f"mean {cos.mean:.3f}, 10th pct {eot.cosine:.3f} -> suggested EOT {eot.eot}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--T", type=int, default=32, help="DC noise levels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", nargs="+", default=["single", "multi"])
    parser.add_argument("--sanity", type=int, default=0, help="test images for accuracy/gradient checks (0: skip)")
    parser.add_argument("--skip-cost", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_cost:
        for heads in args.heads:
            cost_table(heads, args, device)
        memory_table(args, device)
    if args.sanity:
        sanity_table(args, device)


if __name__ == "__main__":
    main()
