"""The ``rdc`` command line: train, evaluate, import EDM checkpoints, run sweeps.

This is the only module that prints. ``rdc eval ... --json`` prints, as its last line, one JSON
object with at least ``defense, attack, n, clean_acc, robust_acc, norm, eps, seconds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields

import torch


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a digits (or CIFAR-10) denoiser; resumes if interrupted")
    p.add_argument("--dataset", default="digits", choices=["digits", "cifar10"])
    p.add_argument("--data-root", default=None, help="folder of the CIFAR-10 python batches")
    p.add_argument("--heads", default="single", choices=["single", "multi"])
    p.add_argument("--arch", default="unet_small")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--model-channels", type=int, default=None, help="width of the small U-Net (default 32)")
    p.add_argument("--head-channels", type=int, default=None, help="multi-head: hidden width of each head (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="fine-tune from this denoiser checkpoint")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 reproduces the shipped files)")
    p.add_argument("--no-resume", action="store_true")


def _add_train_baseline(sub) -> None:
    p = sub.add_parser("train-baseline", help="train the digits CNN or PGD-adversarially-trained CNN")
    p.add_argument("--kind", required=True, choices=["cnn", "at-cnn"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)


def _add_eval(sub) -> None:
    from .evaluation.runner import EvalConfig

    p = sub.add_parser("eval", help="evaluate a defence under an attack on the digits test split")
    for f in fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "timesteps":
            p.add_argument(flag, "--T", dest=f.name, type=int, default=f.default)
        elif f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, default=f.default, type=lambda s: s.lower() in ("1", "true", "yes"))
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=typ, default=f.default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", default=None, help="folder for per-example records (resumable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    p.add_argument("--no-progress", action="store_true")


def _add_import_edm(sub) -> None:
    p = sub.add_parser("import-edm", help="convert an official EDM network pickle into a safe checkpoint")
    p.add_argument("src", help="official EDM .pkl file")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--heads", default="single", choices=["single", "multi"])
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--key", default="ema", help="which network of the pickle's dict to import")
    p.add_argument("--any-size", action="store_true", help="accept any DDPM++ size, not only the CIFAR-10 preset")


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="show the named presets; with --check, which files a preset still needs")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="list missing data/checkpoint files and where to put them")
    p.add_argument("--data-root", default=None)
    p.add_argument("--ckpt-dir", default="data/checkpoints")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdc", description="Robust Diffusion Classifier research companion")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_train_baseline(sub)
    _add_eval(sub)
    _add_import_edm(sub)
    _add_presets(sub)
    try:
        from .main_job import add_run_notebooks_arguments

        add_run_notebooks_arguments(sub)
    except Exception as err:  # notebooks extras are optional for every other command
        logging.getLogger(__name__).debug("run-notebooks unavailable: %s", err)
    try:
        from .sweep import add_sweep_arguments

        add_sweep_arguments(sub)
    except Exception as err:  # the sweep extras are optional for every other command
        logging.getLogger(__name__).debug("sweep commands unavailable: %s", err)
    return parser


def _cmd_train(args) -> int:
    from dataclasses import replace

    from .train import TrainConfig, train_denoiser

    cfg = TrainConfig(dataset=args.dataset, data_root=args.data_root, heads=args.heads, arch=args.arch,
                      seed=args.seed, init_from=args.init_from)
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}.items() if v is not None}
    if args.arch != "unet_small":
        overrides["backbone"] = {}
    else:
        extra = {"model_channels": args.model_channels, "head_channels": args.head_channels}
        overrides["backbone"] = {**cfg.backbone, **{k: v for k, v in extra.items() if v is not None}}
    cfg = replace(cfg, **overrides)
    summary = train_denoiser(cfg, args.out, device=args.device, resume=not args.no_resume)
    print(json.dumps(summary))
    return 0


def _cmd_train_baseline(args) -> int:
    from .baselines import train_baseline_kind

    torch.set_num_threads(args.threads)  # 1 thread reproduces the shipped files bit for bit
    print(json.dumps(train_baseline_kind(args.kind, args.out, seed=args.seed)))
    return 0


def _cmd_eval(args) -> int:
    from .evaluation.runner import EvalConfig, evaluate

    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
    result = evaluate(cfg, device=args.device, records_dir=args.records, progress=not args.no_progress)
    if not result.get("trusted", True):
        failed = [k for k, c in result["checks"].items() if not c["passed"]]
        print(f"WARNING: UNTRUSTED robust accuracy: sanity checks failed: {', '.join(failed)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{cfg.defense} / {cfg.attack} ({cfg.norm}, eps={cfg.eps}): clean {100 * result['clean_acc']:.1f}%, "
              f"robust {100 * result['robust_acc']:.1f}% [{result['seconds']:.1f}s]")
    return 0


def _cmd_import_edm(args) -> int:
    from .models.edm_import import import_edm_pickle

    kwargs = {"heads": args.heads, "num_classes": args.num_classes, "key": args.key}
    if args.any_size:
        kwargs["expected"] = None
    out = import_edm_pickle(args.src, args.out, **kwargs)
    print(json.dumps({"out": str(out)}))
    return 0


def _cmd_presets(args) -> int:
    from .presets import get_preset, preset_names, required_files

    names = [args.name] if args.name else preset_names()
    for name in names:
        preset = get_preset(name)
        if args.check:
            need = required_files(preset, args.data_root, args.ckpt_dir)
            print(need.message)
            if not need.ok:
                return 1
        else:
            print(json.dumps(preset.to_dict(), indent=2))
    return 0


COMMANDS = {"train": _cmd_train, "train-baseline": _cmd_train_baseline, "eval": _cmd_eval,
            "import-edm": _cmd_import_edm, "presets": _cmd_presets}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        if args.command == "run-notebooks":
            from .main_job import cli_run_notebooks

            return cli_run_notebooks(args)
        from .sweep import run_sweep_command

        return run_sweep_command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rdc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
