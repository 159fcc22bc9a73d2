"""Seconds per attack gradient, the code before the issue-41 fast paths vs now, measured in one process.

    .venv/bin/python benchmarks/timing/bench_grad_cost.py
        [--denoisers digits_film_single digits_film_multi_distill9_h16_long_adv]
        [--n 10] [--T 16] [--eot 2] [--losses ce dlr dlr-targeted] [--rounds 5] [--threads 1] [--json FILE]

For every denoiser (default: the shipped defaults of both heads) and case (DC and RDC with exact gradients through
LM, each with fixed noise and stochastic with ``--eot`` copies of the batch, the attack's EOT), on the first ``n``
digits test images with the headline settings (T levels, default LM), one attack gradient is what
``AttackContext.loss_grad`` computes: the loss on the (EOT-repeated) batch and its input gradient. Old and new are
the same model with ``rdc_lib.fast_paths.set_fast_paths`` off and on, alternated ``rounds`` times on the same
images and the same random draws (stochastic cases: one draw from a fixed generator, replayed), so that load from
other jobs hits both alike; the median CPU seconds of the process (one thread) are reported and their ratio.
Also printed per row: the relative difference of the two gradients (must be float rounding), the network images
per gradient (rows through the network's output layer, recomputations included) and the share of the network's
best-batch throughput: those images per second over the images per second of one forward plus input backward of
the bare network at its best batch size (from ``--best-batches``). CPU seconds are user + system (the kernel's
time, mostly page faults of freshly allocated buffers, is part of the cost); the rows also keep user and system
apart, and the wall seconds (the measure for ``--threads`` > 1, where CPU seconds add up over the threads).
The mix row weighs the losses like the headline AutoAttack ensemble without early stopping (APGD-CE, APGD-DLR,
APGD-T with 3 targets: 1 : 1 : 3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from rdc_lib.attacks.losses import get_loss
from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.data import load_dataset
from rdc_lib.defenses.registry import DefenseSpec, build_defense
from rdc_lib.evaluation.provenance import provenance
from rdc_lib.fast_paths import set_fast_paths
from rdc_lib.models.checkpoints import read_checkpoint

MIX = {"ce": 1, "dlr": 1, "dlr-targeted": 3}  # gradient steps per loss in the headline ensemble (3 targets)
CASES = (("dc", "fixed"), ("rdc", "fixed"), ("dc", "stochastic"), ("rdc", "stochastic"))


class RowCounter:
    """Images through the denoiser's output layer (every network evaluation, shared start or not)."""

    def __init__(self, denoiser: torch.nn.Module):
        self.rows = 0
        self.handle = denoiser.backbone.conv_out.register_forward_pre_hook(self._hook)

    def _hook(self, _module, inputs) -> None:
        self.rows += inputs[0].shape[0]


def best_throughput(denoiser: torch.nn.Module, batches: list[int], repeats: int) -> tuple[float, int]:
    """Images per CPU second of forward + input backward of the bare network at its best batch (labels random)."""
    gen = torch.Generator().manual_seed(0)
    best = (0.0, 0)
    for b in batches:
        x = torch.randn(b, denoiser.img_channels, denoiser.img_resolution, denoiser.img_resolution, generator=gen)
        sigma = torch.rand(b, generator=gen) + 0.1
        labels = torch.randint(0, denoiser.num_classes, (b,), generator=gen)

        def step(x=x, sigma=sigma, labels=labels) -> None:
            xa = x.clone().requires_grad_(True)
            torch.autograd.grad(denoiser(xa, sigma, labels).sum(), xa)

        step()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
        rate = b / statistics.median(times)
        best = max(best, (rate, b))
    return best


def gradient_fn(model, x: torch.Tensor, y: torch.Tensor, loss_name: str, noise_mode: str, eot: int):
    """A closure computing one attack gradient (EOT-averaged) on the same images and draws every call."""
    loss_fn = get_loss(loss_name)
    reps = eot if noise_mode == "stochastic" else 1
    xr, yr = x.repeat(reps, 1, 1, 1), y.repeat(reps)
    target = (yr + 1) % 10
    noise = model.draw_noise(xr)  # a draw of the model's own generator, replayed by every call

    def grad() -> torch.Tensor:
        xa = xr.clone().requires_grad_(True)
        loss = loss_fn(model(xa, noise=noise), yr, target)
        (g,) = torch.autograd.grad(loss.sum(), xa)
        return g.reshape(reps, *x.shape).mean(0)

    return grad


def measure(model, grad, rounds: int, counter: RowCounter) -> dict:
    out = {}
    grads = {}
    for mode in (False, True):
        set_fast_paths(model, mode)
        counter.rows = 0
        grads[mode] = grad()  # warm-up, and the network images of one gradient
        out["rows_new" if mode else "rows_old"] = counter.rows
    times: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}  # (user, system, wall) s
    for _ in range(rounds):
        for mode in (False, True):
            set_fast_paths(model, mode)
            t0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            grad()
            t1 = resource.getrusage(resource.RUSAGE_SELF)
            times[mode].append((t1.ru_utime - t0.ru_utime, t1.ru_stime - t0.ru_stime, time.perf_counter() - w0))
    set_fast_paths(model, True)
    old, new = grads[False].double(), grads[True].double()
    for mode, tag in ((False, "old"), (True, "new")):
        out[f"s_{tag}"] = statistics.median(u + k for u, k, _ in times[mode])  # CPU seconds: user + system
        out[f"user_{tag}"] = statistics.median(u for u, _, _ in times[mode])
        out[f"system_{tag}"] = statistics.median(k for _, k, _ in times[mode])
        out[f"wall_{tag}"] = statistics.median(w for _, _, w in times[mode])
    out["rel_diff"] = float((old - new).norm() / old.norm().clamp_min(1e-30))
    out["speedup"] = out["s_old"] / out["s_new"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--denoisers", nargs="+", default=[DEFAULT_DENOISERS["single"], DEFAULT_DENOISERS["multi"]])
    ap.add_argument("--n", type=int, default=10, help="images (the headline evaluation's chunk)")
    ap.add_argument("--T", type=int, default=16)
    ap.add_argument("--eot", type=int, default=2)
    ap.add_argument("--losses", nargs="+", default=list(MIX), choices=list(MIX) + ["margin"])
    ap.add_argument(
        "--cases", nargs="+", default=[f"{d}-{m}" for d, m in CASES], choices=[f"{d}-{m}" for d, m in CASES]
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--best-batches", type=int, nargs="+", default=[160, 640, 1600])
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.eot < 1:
        ap.error(f"--n, --rounds and --eot must be >= 1, got {args.n}, {args.rounds}, {args.eot}")
    torch.set_num_threads(args.threads)
    x, y = load_dataset("digits", "test")
    x, y = x[: args.n], y[: args.n]
    load_before = os.getloadavg()
    rows = []
    for name in args.denoisers:
        path = str(resolve_checkpoint(name))
        for case in args.cases:
            defense, noise_mode = case.split("-")
            heads = read_checkpoint(path, "denoiser")[1]["heads"]
            model = build_defense(
                DefenseSpec(name=defense, heads=heads, noise_mode=noise_mode, timesteps=args.T, denoiser_path=path)
            )
            den = model.classifier.denoiser if defense == "rdc" else model.denoiser
            counter = RowCounter(den)
            for loss in args.losses:
                grad = gradient_fn(model, x, y, loss, noise_mode, args.eot)
                r = measure(model, grad, args.rounds, counter)
                r.update(
                    denoiser=name,
                    heads=heads,
                    defense=defense,
                    noise_mode=noise_mode,
                    eot=args.eot if noise_mode == "stochastic" else 1,
                    loss=loss,
                )
                rows.append(r)
                print(
                    f"  {name} {case} {loss}: old {r['s_old']:.3f} s, new {r['s_new']:.3f} s, "
                    f"{r['speedup']:.2f}x (of which system old {r['system_old']:.3f} s, new {r['system_new']:.3f} s; "
                    f"user only {r['user_old'] / r['user_new']:.2f}x; wall {r['wall_old'] / r['wall_new']:.2f}x), "
                    f"rel. diff {r['rel_diff']:.1e}",
                    flush=True,
                )
            counter.handle.remove()
        set_fast_paths(den, True)
        rate_new, b_new = best_throughput(den, args.best_batches, args.rounds)
        for r in rows:
            if r["denoiser"] == name:
                r.update(
                    best_rate=rate_new,
                    best_batch=b_new,
                    share_old=r["rows_old"] / r["s_old"] / rate_new,
                    share_new=r["rows_new"] / r["s_new"] / rate_new,
                )
    load_after = os.getloadavg()
    print(
        f"\nfirst {args.n} digits test images, T = {args.T}, {args.threads} thread(s), median CPU seconds of "
        f"{args.rounds} alternated rounds; load average (1, 5, 15 min) before {load_before[0]:.1f}, "
        f"{load_before[1]:.1f}, {load_before[2]:.1f}, after {load_after[0]:.1f}, {load_after[1]:.1f}, "
        f"{load_after[2]:.1f} on {os.cpu_count()} cores"
    )
    print(
        "denoiser | defense | noise (EOT) | loss | s / gradient old | new | speed-up | network images old | new | "
        "share of best throughput old | new | gradient rel. diff"
    )
    print("|".join(["---"] * 12))
    for r in rows:
        print(
            f"{r['denoiser']} | {r['defense']} | {r['noise_mode']} ({r['eot']}) | {r['loss']} | {r['s_old']:.3f} | "
            f"{r['s_new']:.3f} | **{r['speedup']:.2f}x** | {r['rows_old']} | {r['rows_new']} | "
            f"{r['share_old']:.0%} | {r['share_new']:.0%} | {r['rel_diff']:.1e}"
        )
    mix = []
    for name in args.denoisers:
        for case in args.cases:
            defense, noise_mode = case.split("-")
            group = [
                r
                for r in rows
                if r["denoiser"] == name
                and r["defense"] == defense
                and r["noise_mode"] == noise_mode
                and r["loss"] in MIX
            ]
            if {r["loss"] for r in group} == set(MIX):
                old = sum(MIX[r["loss"]] * r["s_old"] for r in group)
                new = sum(MIX[r["loss"]] * r["s_new"] for r in group)
                other = {
                    f"{kind}_speedup": sum(MIX[r["loss"]] * r[f"{kind}_old"] for r in group)
                    / sum(MIX[r["loss"]] * r[f"{kind}_new"] for r in group)
                    for kind in ("user", "wall")
                }
                mix.append(
                    {
                        "denoiser": name,
                        "defense": defense,
                        "noise_mode": noise_mode,
                        "s_old": old / 5,
                        "s_new": new / 5,
                        "speedup": old / new,
                        **other,
                    }
                )
                print(
                    f"{name} | {defense} | {noise_mode} | ensemble mix 1:1:3 | {old / 5:.3f} | {new / 5:.3f} | "
                    f"**{old / new:.2f}x** (user only {other['user_speedup']:.2f}x, wall {other['wall_speedup']:.2f}x) "
                    "| | | | | "
                )
    for name in args.denoisers:
        best = next(r for r in rows if r["denoiser"] == name)
        print(
            f"{name}: best-batch throughput {best['best_rate']:.0f} images/CPU s (forward + input backward, "
            f"batch {best['best_batch']}, fast paths on)"
        )
    if args.json:
        prov = provenance([resolve_checkpoint(name) for name in args.denoisers])
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "mix": mix,
                    "load_before": load_before,
                    "load_after": load_after,
                    "args": vars(args),
                    "provenance": prov,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
