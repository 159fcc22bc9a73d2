"""Training loop for denoisers: EDM loss, label dropout, EMA, seeds, periodic checkpoints, resume.

``train_denoiser(cfg, out)`` writes the EMA weights to ``out`` (a safetensors checkpoint with its
config) and keeps a resumable training state beside it (``out.state.pt``: model, EMA, optimizer,
step, RNG; saved with ``torch.save`` and read back with ``weights_only=True``). Interrupt it and run
it again with the same arguments: it continues from the last periodic checkpoint. A damaged state
file or one of another config raises ``StoredStateError`` naming it; ``restart=True`` moves it aside.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .attacks.pgd import PGD
from .core.choices import ROBUST_GRID_SIGMA_MIN
from .core.progress import progress_bar
from .core.stored_state import StoredStateError, load_torch_state, restart_aside, source_version
from .core.utils import make_generator, resolve_device
from .data import dataset_info, load_dataset
from .defenses.classifier import DiffusionClassifier
from .diffusion.loss import edm_distill_loss, edm_loss
from .diffusion.schedules import GridConfig, make_grid
from .experiments.study import ROBUST_SETTINGS
from .models.base import Denoiser
from .models.checkpoints import load_denoiser, read_checkpoint, save_denoiser
from .models.config import DenoiserConfig, build_denoiser
from .models.ddpmpp import widen_to_multihead

log = logging.getLogger(__name__)

RESTART = "--restart (rdc train; restart=True in train_denoiser())"
DIGITS_BACKBONE = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1, "dropout": 0.1}


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "digits"  # "digits" | "cifar10"
    data_root: str | None = None  # folder of the CIFAR-10 batches
    heads: str = "single"  # "single" | "multi"
    arch: str = "unet_small"
    backbone: dict = field(default_factory=lambda: dict(DIGITS_BACKBONE))
    steps: int = 5000  # optimizer steps
    batch_size: int = 128
    lr: float = 2e-3  # Adam learning rate (after warmup, cosine-decayed to 10%)
    warmup: int = 200  # linear warmup steps
    ema_decay: float = 0.999  # EMA of weights (the exported model)
    label_dropout: float = 0.1  # single-head: probability of the null label
    P_mean: float = -1.2  # training noise levels: ln sigma ~ N(P_mean, P_std^2)
    P_std: float = 1.2
    seed: int = 0
    checkpoint_every: int = 500  # steps between resumable checkpoints
    init_from: str | None = None  # a denoiser checkpoint to fine-tune from (matching names are loaded)
    distill_from: str | None = None  # multi-head only: a single-head teacher checkpoint for the wrong-class heads
    distill_classes: int = 1  # wrong classes per example matched to the teacher, in [1, K - 1]
    distill_weight: float = 1.0  # weight of the teacher term, >= 0
    adv_eps: float = 0.0  # l_inf radius (pixels in [0, 1]) of adversarial training inputs; 0 = off
    adv_fraction: float = 0.5  # share of each batch replaced by its adversarial version, in (0, 1]
    adv_steps: int = 4  # PGD-CE steps against the network's own fixed-noise DC, >= 1
    adv_grid_sigma_min: float = ROBUST_GRID_SIGMA_MIN  # that DC's grid: the paper grid from this sigma
    exclude_val: bool = False  # leave the validation split (rdc_lib.data.splits) out of the training images;
    # the way to train a new denoiser (the shipped ones predate it: data/README.md)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if not (math.isfinite(self.P_mean) and math.isfinite(self.P_std) and self.P_std > 0):
            raise ValueError(
                f"P_mean must be finite and P_std finite and > 0, got P_mean={self.P_mean}, P_std={self.P_std}"
            )
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        dropout = self.backbone.get("dropout", 0.0)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if self.distill_from is not None:
            if self.heads != "multi":
                raise ValueError(
                    f"distill_from trains a multi-head student; got heads={self.heads!r} (use --heads multi)"
                )
            num_classes = dataset_info(self.dataset)["num_classes"]
            if not 1 <= self.distill_classes <= num_classes - 1:
                raise ValueError(f"distill_classes must be in [1, {num_classes - 1}], got {self.distill_classes}")
            if self.distill_weight < 0:
                raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")

        if not 0 <= self.adv_eps < 1:
            raise ValueError(f"adv_eps must be in [0, 1) (pixels in [0, 1]; 0 = off), got {self.adv_eps}")
        if not 0 < self.adv_fraction <= 1:
            raise ValueError(f"adv_fraction must be in (0, 1], got {self.adv_fraction}")
        if self.adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if not 0 < self.adv_grid_sigma_min < GridConfig.sigma_max:
            raise ValueError(
                f"adv_grid_sigma_min must be in (0, {GridConfig.sigma_max}), got {self.adv_grid_sigma_min}"
            )

    def denoiser_config(self) -> DenoiserConfig:
        info = dataset_info(self.dataset)
        return DenoiserConfig(
            arch=self.arch,
            num_classes=info["num_classes"],
            img_channels=info["channels"],
            img_resolution=info["resolution"],
            heads=self.heads,
            backbone=dict(self.backbone),
        )


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item()))


def _init_partial(net: Denoiser, path: str) -> None:
    """Fine-tuning: copy every weight whose name and shape match from ``path``."""
    state, src_cfg, _ = read_checkpoint(path, expected_kind="denoiser")
    if getattr(net, "heads", None) == "multi" and src_cfg.get("heads") == "single" and src_cfg.get("arch") == "ddpmpp":
        dropped = widen_to_multihead(net, state)  # replicate the output layer per head (docs/paper.md section 5)
        log.info("multi-head initialised from single-head %s (dropped %s)", path, dropped)
        return
    own = net.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(matched)
    net.load_state_dict(own)
    log.info("initialised %d/%d tensors from %s", len(matched), len(own), path)


def train_denoiser(
    cfg: TrainConfig,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    resume: bool = True,
    restart: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    metadata: dict | None = None,
) -> dict:
    """Train a denoiser per ``cfg``; write EMA weights to ``out``. Returns a summary dict.

    ``resume``: continue from ``<out>.state.pt`` if it exists (False: ignore it; it is overwritten at the
    first checkpoint). ``restart``: move that file aside (renamed ``.damaged-<time>`` or ``.replaced-<time>``,
    never deleted) and train from step 0. A damaged or mismatched state raises ``StoredStateError``.
    ``metadata``: extra JSON entries stored in the checkpoint's 'extra' (a recipe stage's hash, rdc_lib.cli.recipe).
    """
    device = resolve_device(device)
    out = Path(out)
    state_path = out.with_name(out.name + ".state.pt")
    dcfg = cfg.denoiser_config()
    x_train, y_train = load_dataset(cfg.dataset, "train", root=cfg.data_root, exclude_val=cfg.exclude_val)
    x_train = (x_train * 2 - 1).to(device)  # model space [-1, 1]
    y_train = y_train.to(device)

    # PyTorch's layer initialisers draw from the global RNG: seed them from cfg.seed inside fork_rng,
    # which restores the caller's global RNG state afterwards (so training is reproducible and the
    # caller's random stream is untouched).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_denoiser(dcfg).to(device)
    if cfg.init_from:
        _init_partial(net, cfg.init_from)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    teacher = _load_teacher(cfg, dcfg, device) if cfg.distill_from else None
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = make_generator(cfg.seed, device)
    step = 0
    if restart:
        restart_aside([state_path], lambda: _read_state(state_path, cfg, device))
    if resume and state_path.exists():
        step = _load_state(state_path, cfg, net, ema, opt, gen, device)
        log.info("resumed from %s at step %d", state_path, step)

    bar = None
    if progress:
        bar = progress_bar(cfg.steps, f"train {cfg.dataset} {cfg.heads}-head", "step", initial=step)
    t0 = time.perf_counter()
    loss_avg = float("nan")
    net.train()
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        idx = torch.randint(0, x_train.shape[0], (cfg.batch_size,), generator=gen, device=device)
        x_batch = x_train[idx]
        if cfg.adv_eps > 0:
            x_batch = adversarial_batch(net, x_batch, y_train[idx], cfg, gen)
        noise = dict(generator=gen, P_mean=cfg.P_mean, P_std=cfg.P_std)  # the training noise levels' draws
        if teacher is not None:
            wrong = dict(wrong_classes=cfg.distill_classes, weight=cfg.distill_weight)
            loss = edm_distill_loss(net, teacher, x_batch, y_train[idx], **noise, **wrong).mean()
        else:
            loss = edm_loss(net, x_batch, y_train[idx], label_dropout=cfg.label_dropout, **noise).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        _ema_update(ema, net, cfg.ema_decay if step >= cfg.warmup else 0.0)
        step += 1
        loss_avg = loss.item() if loss_avg != loss_avg else 0.98 * loss_avg + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}")
        if on_step is not None:
            on_step(step, loss.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_state(state_path, net, ema, opt, gen, step, cfg)
    if bar is not None:
        bar.close()
    extra = {"train_config": config_dict(cfg), "final_loss_ema": loss_avg, "steps": step, **(metadata or {})}
    save_denoiser(out, ema, dcfg, extra)
    return {"out": str(out), "steps": step, "loss": loss_avg, "seconds": time.perf_counter() - t0}


def adversarial_batch(net: Denoiser, x: Tensor, y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """x (B, C, H, W) in model space [-1, 1] with its first round(adv_fraction * B) images replaced by PGD-CE
    adversarial versions (l_inf ``adv_eps`` in pixel space) against the diffusion classifier of ``net`` itself
    (fixed noise drawn from ``gen``; the paper grid from ``adv_grid_sigma_min`` with the headline protocol's level
    count, rdc_lib.experiments.study.ROBUST_SETTINGS).

    Training on them asks the network to denoise (and, when distilling, to match its teacher) exactly where its
    own classifier is weakest. No gradient reaches the parameters from the attack.
    """
    n = max(1, round(cfg.adv_fraction * x.shape[0]))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
    grid = make_grid(ROBUST_SETTINGS["timesteps"], "paper", sigma_min=cfg.adv_grid_sigma_min)
    dc = DiffusionClassifier(net, grid, noise_mode="fixed", seed=seed)
    attack = PGD(dc, norm="linf", eps=cfg.adv_eps, steps=cfg.adv_steps, loss="ce", generator=gen)
    x_adv = denoiser_data_tensor(attack((x[:n] + 1) / 2, y[:n]))
    return torch.cat([x_adv.detach(), x[n:]])


def _load_teacher(cfg: TrainConfig, dcfg: DenoiserConfig, device: torch.device) -> Denoiser:
    """The frozen distillation teacher; it must denoise the student's data (classes, channels, resolution)."""
    teacher = load_denoiser(cfg.distill_from, device=device).requires_grad_(False)
    want = (dcfg.num_classes, dcfg.img_channels, dcfg.img_resolution)
    got = (teacher.num_classes, teacher.img_channels, teacher.img_resolution)
    if got != want:
        raise ValueError(
            f"teacher {cfg.distill_from} has (classes, channels, resolution) = {got}, "
            f"the {cfg.dataset} student needs {want}"
        )
    return teacher


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def config_dict(cfg: TrainConfig) -> dict:
    """``cfg`` as stored in checkpoints and training states (JSON types). ``exclude_val`` counts only when set,
    so the stored configs of checkpoints trained before it existed (on the full training split) stay equal."""
    d = json.loads(json.dumps(asdict(cfg)))
    if not cfg.exclude_val:
        del d["exclude_val"]
    return d


def _save_state(path: Path, net, ema, opt, gen: torch.Generator, step: int, cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": net.state_dict(),
            "ema": ema.state_dict(),
            "opt": opt.state_dict(),
            "rng": gen.get_state(),
            "step": step,
            "train_config": config_dict(cfg),
            "code": source_version(),
        },
        tmp,
    )
    tmp.replace(path)


def _read_state(path: Path, cfg: TrainConfig, device: torch.device) -> dict:
    """The checked training state in ``path`` (nothing is loaded into a model yet).

    Raises ``StoredStateError`` naming ``path`` when it is unreadable, of another config or malformed.
    """
    saved = load_torch_state(path, restart=RESTART, map_location=device)
    if saved.get("train_config") != config_dict(cfg):
        raise StoredStateError(path, "it was written by a different training config", restart=RESTART)
    step = saved.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= cfg.steps:
        raise StoredStateError(path, f"its step is {step!r}, expected an int in [0, {cfg.steps}]", restart=RESTART)
    for key in ("model", "ema", "opt"):
        if not isinstance(saved.get(key), dict):
            raise StoredStateError(path, f"entry {key!r} is missing or not a state dict", restart=RESTART)
    if not isinstance(saved.get("rng"), torch.Tensor) or saved["rng"].dtype != torch.uint8:
        raise StoredStateError(path, "entry 'rng' is missing or not a generator state (uint8 tensor)", restart=RESTART)
    return saved


def _load_state(path: Path, cfg: TrainConfig, net, ema, opt, gen: torch.Generator, device: torch.device) -> int:
    """Load the checked training state into net, ema, opt and gen; returns its step.

    A state of another code version is resumed with a warning (the weights carry over to the new code).
    """
    saved = _read_state(path, cfg, device)
    try:
        net.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        opt.load_state_dict(saved["opt"])
        gen.set_state(saved["rng"].cpu())  # a generator state is a CPU byte tensor, also for CUDA
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        what = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise StoredStateError(
            path, f"its weights, optimizer or RNG state do not fit this model ({what})", restart=RESTART
        ) from exc
    if saved.get("code") != source_version():
        log.warning(
            "%s was written by code version %s, this is %s: resuming its weights with this code",
            path,
            saved.get("code"),
            source_version(),
        )
    return int(saved["step"])


def denoiser_data_tensor(x01: Tensor) -> Tensor:
    """Images in [0, 1] -> model space [-1, 1]."""
    return x01 * 2 - 1
