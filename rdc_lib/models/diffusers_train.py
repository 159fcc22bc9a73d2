"""Train a small class-conditional diffusers ``UNet2DModel`` on the digits with the standard DDPM recipe.

The recipe is the off-the-shelf one (Ho et al. 2020, as in diffusers' training examples), not ours: a DDPM
scheduler (linear betas 1e-4 .. 0.02, 1,000 steps), uniform integer timesteps, the MSE between the network's
output and its ``prediction_type`` target, label dropout to a null label (``num_class_embeds = K + 1``, label K
is the unconditional model), an EMA of the weights. Images are trained in diffusers' range [-1, 1] (x' = 2x - 1
of the project's [0, 1] images). The result is written with ``save_pretrained`` (safetensors + config JSON) as
a pipeline folder ``out/unet`` + ``out/scheduler``, which
:func:`rdc_lib.models.diffusers_adapter.load_diffusers_denoiser` reads. Needs the ``diffusers`` extra.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core.utils import make_generator
from ..data import load_dataset
from .diffusers_adapter import ADAPTER_FILE, require_diffusers

__all__ = ["DIGITS_UNET", "DiffusersTrainConfig", "train_diffusers_digits"]

# The digits UNet2DModel (8x8, 1 channel; 8x8 and 4x4 stages, attention at 4x4).
DIGITS_UNET: dict = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    norm_num_groups=8,
    attention_head_dim=16,
    num_class_embeds=11,
)


@dataclass(frozen=True)
class DiffusersTrainConfig:
    steps: int = 4000  # optimizer steps
    batch_size: int = 128
    lr: float = 2e-3  # AdamW learning rate (linear warmup, then constant; the EMA averages)
    warmup: int = 100
    ema_decay: float = 0.999  # the exported weights are the EMA (decay min(ema_decay, (1 + k) / (10 + k)) at step k)
    label_dropout: float = 0.1  # probability of the null label (num_class_embeds - 1)
    prediction_type: str = "epsilon"  # the scheduler's prediction_type: epsilon | v_prediction | sample
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    seed: int = 0
    unet: dict = field(default_factory=lambda: dict(DIGITS_UNET))


def _target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor, s: torch.Tensor
) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return a * noise - s * x0
    return x0


def train_diffusers_digits(
    cfg: DiffusersTrainConfig,
    out: str | Path,
    *,
    log_every: int = 0,
    log=None,
    save_every: int = 0,
    max_seconds: float | None = None,
) -> dict:
    """Train on the digits training split (1,437 images, CPU), save to the folder ``out``; returns a summary
    (steps done, seconds, final loss, parameter count). ``log(str)`` receives a line every ``log_every`` steps;
    the EMA is also saved every ``save_every`` steps; training stops early after ``max_seconds`` (the learning
    rate is constant after warmup, so stopping at step k gives what ``steps=k`` gives)."""
    diffusers = require_diffusers()
    out = Path(out)
    gen = make_generator(cfg.seed, "cpu")
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global RNG: seed a fork, restore after
        torch.manual_seed(cfg.seed)
        unet = diffusers.UNet2DModel(**cfg.unet)
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="linear",
        prediction_type=cfg.prediction_type,
        clip_sample=True,
    )
    abar = sched.alphas_cumprod.to(torch.float32)
    x_tr, y_tr = load_dataset("digits", "train")
    x_tr = x_tr * 2 - 1
    null = int(cfg.unet["num_class_embeds"]) - 1
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    t0, loss_val = time.perf_counter(), float("nan")
    unet.train()
    done = 0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
        idx = torch.randint(0, x_tr.shape[0], (cfg.batch_size,), generator=gen)
        x0, y = x_tr[idx], y_tr[idx].clone()
        y[torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout] = null
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a, s = abar[t].sqrt().view(-1, 1, 1, 1), (1 - abar[t]).sqrt().view(-1, 1, 1, 1)
        pred = unet(a * x0 + s * noise, t, class_labels=y).sample
        loss = (pred - _target(cfg.prediction_type, x0, noise, a, s)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # warmup: the EMA forgets the initial weights
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        loss_val, done = float(loss.detach()), step + 1
        if log is not None and log_every and done % log_every == 0:
            log(f"step {done}/{cfg.steps} loss {loss_val:.4f} {time.perf_counter() - t0:.0f}s")
        over = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        if (save_every and done % save_every == 0) or over:
            _save(out, ema, sched, cfg, null, done, time.perf_counter() - t0, loss_val)
        if over:
            break
    return _save(out, ema, sched, cfg, null, done, time.perf_counter() - t0, loss_val)


def _save(out: Path, ema, sched, cfg: DiffusersTrainConfig, null: int, done: int, seconds: float, loss: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out / "unet", safe_serialization=True)
    sched.save_pretrained(out / "scheduler")
    summary = dict(
        steps_done=done,
        seconds=round(seconds, 1),
        final_loss=round(loss, 5),
        params=sum(p.numel() for p in ema.parameters()),
        train_config=asdict(cfg),
    )
    (out / ADAPTER_FILE).write_text(
        json.dumps({"data_range": "minus_one_one", "null_label": null, "training": summary}, indent=1) + "\n"
    )
    return summary
