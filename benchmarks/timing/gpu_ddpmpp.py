"""Throughput and memory of the CIFAR-10 DDPM++ diffusion classifier (random weights).

Figures (JSON on stdout, and in --out):
- params: parameter count of the conditional DDPM++ (K = 10).
- dc: diffusion-classifier forward at --T levels, K = 10, batch --batch: seconds, images/s, network
  passes/s, and the T = 1000 cost extrapolated linearly in T (or measured with --measure-t1000).
- lm: seconds per likelihood-maximization step (rdc_lib.diffusion.lm, one forward + backward per image).
- attack: one exact-gradient attack step through the DC (chunked backward, --grad-chunk
  (image, class, level) triples per recomputed chunk): seconds and peak GPU memory.
- precision: logit error of TF32 and of fp16 autocast (--fp16) against strict float32, same noise.

Random weights: EDM initialises the last conv of every block, the attention projections and the
output layer at 1e-5, which makes an untrained network almost the identity; with --init dense
(default) those layers get ordinary Xavier weights so activations (and fp16 errors) have realistic
magnitudes. Timing does not depend on the weights. Trained weights may give different fp16 errors.

Examples:
    python benchmarks/timing/gpu_ddpmpp.py --device cuda --T 126 --batch 8 --fp16 --out bench.json
    python benchmarks/timing/gpu_ddpmpp.py --device cuda --fp16 --tf32 \\
        --checkpoint ckpt/edm-cifar10-32x32-cond-vp.safetensors
    python benchmarks/timing/gpu_ddpmpp.py --device cpu --T 4 --batch 1 --width 8     # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.models import build_denoiser, load_denoiser
from rdc_lib.models.ddpmpp import ddpmpp_config, set_fp16

K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=126, help="noise levels of the DC")
    p.add_argument("--batch", type=int, default=8, help="images per DC call")
    p.add_argument("--fp16", action="store_true", help="also measure fp16 autocast (CUDA only)")
    p.add_argument("--tf32", action="store_true", help="time the float32 path with TF32 convolutions/matmuls")
    p.add_argument("--width", type=int, default=128, help="model_channels (128 = the released network)")
    p.add_argument("--chunk", type=int, default=1024, help="(image, class, level) triples per forward call")
    p.add_argument("--grad-chunk", type=int, default=128, help="triples per recomputed chunk in the backward")
    p.add_argument("--repeats", type=int, default=2, help="timed repetitions (after one warm-up)")
    p.add_argument("--measure-t1000", action="store_true", help="measure the T = 1000 forward instead of extrapolating")
    p.add_argument("--init", choices=("dense", "edm"), default="dense")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="an imported ddpmpp checkpoint (rdc import-edm) instead of random weights",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """(median seconds of ``fn`` after one warm-up call, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def _precision(device: torch.device, tf32: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def build(width: int, init: str, seed: int, device: torch.device) -> torch.nn.Module:
    cfg = ddpmpp_config(K, model_channels=width, dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_denoiser(cfg)
        if init == "dense":
            with torch.no_grad():
                for name, p in net.named_parameters():
                    if name.endswith(("conv1.weight", "proj.weight", "aux_conv.weight")):
                        torch.nn.init.xavier_uniform_(p)
    return net.to(device).eval().requires_grad_(False)


def dc_figures(net, x: torch.Tensor, args, device: torch.device) -> dict:
    dc = DiffusionClassifier(net, make_grid(args.T), noise_mode="fixed", seed=args.seed, chunk_size=args.chunk)
    with torch.no_grad():
        seconds, _ = _timed(lambda: dc(x), device, args.repeats)
    out = dict(
        T=args.T,
        K=K,
        batch=x.shape[0],
        seconds=seconds,
        images_per_s=x.shape[0] / seconds,
        passes_per_s=dc.network_passes(x.shape[0]) / seconds,
        seconds_per_image_T1000_extrapolated=seconds / x.shape[0] * 1000 / args.T,
    )
    if args.measure_t1000:
        dc1000 = DiffusionClassifier(net, make_grid(1000), noise_mode="fixed", seed=args.seed, chunk_size=args.chunk)
        with torch.no_grad():
            out["seconds_per_image_T1000_measured"] = _timed(lambda: dc1000(x), device, 1)[0] / x.shape[0]
    return out


def lm_figures(net, x: torch.Tensor, args, device: torch.device) -> dict:
    try:
        from rdc_lib.diffusion.lm import likelihood_maximization
    except ImportError as err:  # written by another part of the project
        return dict(skipped=f"rdc_lib.diffusion.lm not available ({err})")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    steps = 5
    seconds, _ = _timed(lambda: likelihood_maximization(net, x, steps=steps, generator=gen), device, args.repeats)
    return dict(
        steps=steps,
        batch=x.shape[0],
        seconds=seconds,
        seconds_per_step=seconds / steps,
        seconds_per_step_per_image=seconds / steps / x.shape[0],
    )


def attack_figures(net, x: torch.Tensor, args, device: torch.device) -> dict:
    """One exact-gradient step: logits -> cross-entropy -> d loss / d x through the chunked DC."""
    dc = DiffusionClassifier(
        net, make_grid(args.T), noise_mode="fixed", seed=args.seed, chunk_size=args.grad_chunk, backward_mode="chunked"
    )
    y = torch.arange(x.shape[0], device=device) % K

    def step() -> torch.Tensor:
        xa = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(dc(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        return g

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    seconds, grad = _timed(step, device, max(1, args.repeats - 1))
    out = dict(
        T=args.T,
        K=K,
        batch=x.shape[0],
        grad_chunk=args.grad_chunk,
        seconds=seconds,
        seconds_per_image=seconds / x.shape[0],
        grad_finite=bool(torch.isfinite(grad).all()),
        grad_abs_mean=grad.abs().mean().item(),
    )
    if device.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["peak_gpu_memory_above_weights_gib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    else:
        out["peak_gpu_memory_gib"] = None
    return out


def precision_figures(net, x: torch.Tensor, args, device: torch.device) -> dict:
    """Logit errors of TF32 and fp16 against strict float32, with the same (fixed) noise."""
    if device.type != "cuda":
        return dict(skipped="fp16 autocast and TF32 only apply on CUDA")
    dc = DiffusionClassifier(net, make_grid(args.T), noise_mode="fixed", seed=args.seed, chunk_size=args.chunk)

    def logits(tf32: bool, fp16: bool) -> torch.Tensor:
        _precision(device, tf32)
        set_fp16(net, fp16)
        with torch.no_grad():
            return dc(x).double()

    _sync(device)
    start = time.perf_counter()
    ref = logits(False, False)
    _sync(device)
    strict_seconds = time.perf_counter() - start
    spread = (ref.amax(1) - ref.amin(1)).mean().item()
    out = dict(logit_spread_mean=spread, fp32_strict_dc_seconds_one_call=strict_seconds)
    variants = {"tf32": (True, False)}
    if args.fp16:
        variants["fp16"] = (False, True)
    for name, (tf32, fp16) in variants.items():
        got = logits(tf32, fp16)
        err = (got - ref).abs()
        diff_err = ((got - got.mean(1, keepdim=True)) - (ref - ref.mean(1, keepdim=True))).abs()
        out[name] = dict(
            max_abs_error=err.max().item(),
            max_error_of_centred_logits=diff_err.max().item(),
            relative_to_spread=diff_err.max().item() / max(spread, 1e-30),
            argmax_agreement=(got.argmax(1) == ref.argmax(1)).float().mean().item(),
        )
    if args.fp16:
        _precision(device, args.tf32)
        set_fp16(net, True)
        with torch.no_grad():
            seconds, _ = _timed(lambda: dc(x), device, args.repeats)
        out["fp16_dc"] = dict(seconds=seconds, images_per_s=x.shape[0] / seconds)
    set_fp16(net, False)
    _precision(device, args.tf32)
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    _precision(device, args.tf32)
    if args.checkpoint is not None:
        net = load_denoiser(args.checkpoint, device).requires_grad_(False)
        if net.num_classes != K or net.img_resolution != 32:
            raise SystemExit(f"{args.checkpoint}: expected a 32x32 denoiser with {K} classes")
    else:
        net = build(args.width, args.init, args.seed, device)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed)).to(device)
    result = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__,
        width=args.width,
        init=args.init,
        tf32=args.tf32,
        checkpoint=str(args.checkpoint) if args.checkpoint else None,
        params=sum(p.numel() for p in net.parameters()),
        weights_gib=sum(p.numel() * p.element_size() for p in net.parameters()) / 2**30,
    )
    result["dc"] = dc_figures(net, x, args, device)
    result["lm"] = lm_figures(net, x, args, device)
    result["attack"] = attack_figures(net, x, args, device)
    result["precision"] = precision_figures(net, x, args, device)
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
