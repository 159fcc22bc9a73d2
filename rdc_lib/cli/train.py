"""The ``rdc train`` command's flags and the ``TrainConfig`` they make (rdc_lib.cli.recipe reads them too; the handler,
which prints, is in rdc_lib.cli.train_commands)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..core.choices import DATASETS, HEADS, ROBUST_GRID_SIGMA_MIN
from ..evaluation.runner import resolve_denoiser
from ..models.config import default_backbone
from ..train import TrainConfig

__all__ = ["add_train_parser", "checkpoint_arg", "train_config_from_args"]


def add_train_parser(sub) -> None:
    """Add the ``rdc train`` subcommand and its flags to the ``sub`` parsers of ``rdc``."""
    p = sub.add_parser("train", help="train a digits (or CIFAR-10) denoiser; resumes if interrupted")
    # a flag left out is None (argparse's default): the TrainConfig's own default then applies
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-root", help="folder of the CIFAR-10 python batches")
    p.add_argument("--heads", default="single", choices=HEADS, help="shipped defaults: --arch film (data/README.md)")
    p.add_argument("--arch", default="unet_small")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--model-channels", type=int, help="width of the small U-Net (default 32)")
    p.add_argument("--head-channels", type=int, help="multi-head: hidden width of each head (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", help="fine-tune from this denoiser checkpoint")
    p.add_argument("--dropout", type=float, help="dropout inside the backbone, in [0, 1) (default 0.1)")
    p.add_argument(
        "--label-dropout", type=float, help="single-head: probability of the null label, in [0, 1) (default 0.1)"
    )
    p.add_argument("--ema-decay", type=float, help="EMA of the weights, in (0, 1) (default 0.999)")
    p.add_argument("--warmup", type=int, help="linear learning-rate warmup steps, >= 0 (default 200)")
    p.add_argument(
        "--distill-from", help="multi-head: single-head teacher checkpoint matched on random wrong-class heads"
    )
    p.add_argument(
        "--distill-classes", type=int, help="wrong classes per example matched to the teacher, in [1, K-1] (default 1)"
    )
    p.add_argument("--distill-weight", type=float, help="weight of the teacher term, >= 0 (default 1)")
    p.add_argument("--p-mean", type=float, help="training noise levels: mean of ln sigma (default -1.2, EDM's)")
    p.add_argument(
        "--p-std", type=float, help="training noise levels: standard deviation of ln sigma, > 0 (default 1.2, EDM's)"
    )
    p.add_argument(
        "--adv-eps",
        type=float,
        help="l_inf radius (pixels in [0, 1]) of adversarial training inputs against the network's own DC; "
        "0 = off (default)",
    )
    p.add_argument("--adv-fraction", type=float, help="share of each batch made adversarial, in (0, 1] (default 0.5)")
    p.add_argument("--adv-steps", type=int, help="PGD steps of those inputs, >= 1 (default 4)")
    p.add_argument(
        "--adv-grid-sigma-min",
        type=float,
        help=f"the attacked DC's grid starts at this sigma (default {ROBUST_GRID_SIGMA_MIN})",
    )
    p.add_argument(
        "--exclude-val",
        action="store_true",
        help="leave the validation split (load_dataset(..., 'val')) out of the training images: the way to "
        "train a new denoiser, so choices made on those images are held out from its weights too",
    )
    p.add_argument("--out", help="output .safetensors path (required without --recipe)")
    p.add_argument(
        "--recipe",
        metavar="FILE",
        help="replay a training recipe (data/recipes/*.yaml): every stage in order, skipping a stage whose "
        "output exists with this recipe's hash; --out-dir, --exclude-val, --device and --threads apply",
    )
    p.add_argument(
        "--out-dir", help="--recipe: folder of the stages' outputs (default runs/recipes/<recipe name>[_exclude_val])"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 reproduces the shipped files)")
    p.add_argument(
        "--no-resume", action="store_true", help="ignore <out>.state.pt (overwritten at the first checkpoint)"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="move <out>.state.pt aside (renamed .damaged-<time> / .replaced-<time>) and train from step 0",
    )


def checkpoint_arg(value: str | None) -> str | None:
    """A --init-from / --distill-from value: a shipped checkpoint's name or a path -> the file's path."""
    return None if value is None else str(resolve_denoiser(value))


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``rdc train`` flags (a flag not given keeps the config's default)."""
    cfg = TrainConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        heads=args.heads,
        arch=args.arch,
        seed=args.seed,
        init_from=checkpoint_arg(args.init_from),
        distill_from=checkpoint_arg(args.distill_from),
        exclude_val=args.exclude_val,
    )
    given = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "label_dropout": args.label_dropout,
        "ema_decay": args.ema_decay,
        "warmup": args.warmup,
        "distill_classes": args.distill_classes,
        "distill_weight": args.distill_weight,
        "P_mean": args.p_mean,
        "P_std": args.p_std,
        "adv_eps": args.adv_eps,
        "adv_fraction": args.adv_fraction,
        "adv_steps": args.adv_steps,
        "adv_grid_sigma_min": args.adv_grid_sigma_min,
    }
    overrides: dict = {k: v for k, v in given.items() if v is not None}
    extra = {"model_channels": args.model_channels, "head_channels": args.head_channels, "dropout": args.dropout}
    base = dict(cfg.backbone) if args.arch == "unet_small" else default_backbone(args.arch)
    overrides["backbone"] = {**base, **{k: v for k, v in extra.items() if v is not None}}
    return replace(cfg, **overrides)
