"""The handlers of ``rdc train`` and ``rdc train-baseline`` (and the latter's flags).

``rdc train``'s flags are in rdc_lib.cli.train, which rdc_lib.cli.recipe reads too; this module imports the recipe,
so the two stay apart (no import cycle).
"""

from __future__ import annotations

import json

import torch

from ..defenses.baselines import BASELINE_KINDS, train_baseline_kind
from ..train import train_denoiser
from .recipe import recipe_command
from .train import train_config_from_args

__all__ = ["add_train_baseline_parser", "cmd_train", "cmd_train_baseline"]


def add_train_baseline_parser(sub) -> None:
    """Add ``rdc train-baseline`` and its flags to the ``sub`` parsers of ``rdc``."""
    p = sub.add_parser("train-baseline", help="train the digits CNN or PGD-adversarially-trained CNN")
    p.add_argument("--kind", required=True, choices=tuple(BASELINE_KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)


def cmd_train(args) -> int:
    """``rdc train``: one denoiser (``--out``), or every stage of a recipe (``--recipe``); JSON summaries."""
    if args.recipe:

        def on_stage(plan, status: str) -> None:
            print(
                f"stage {plan.stage.name}: {'done, skipped' if status == 'skip' else 'training'} -> {plan.out} "
                f"(recipe hash {plan.hash})",
                flush=True,
            )

        for summary in recipe_command(args, on_stage):
            print(json.dumps(summary), flush=True)
        return 0
    if args.out is None or args.out_dir is not None:
        raise ValueError("rdc train needs --out FILE (or --recipe FILE, with --out-dir DIR)")
    cfg = train_config_from_args(args)
    summary = train_denoiser(cfg, args.out, device=args.device, resume=not args.no_resume, restart=args.restart)
    print(json.dumps(summary))
    return 0


def cmd_train_baseline(args) -> int:
    """``rdc train-baseline``: train the CNN of ``--kind``; prints its summary as JSON."""
    torch.set_num_threads(args.threads)  # 1 thread reproduces the shipped files bit for bit
    print(json.dumps(train_baseline_kind(args.kind, args.out, seed=args.seed)))
    return 0
