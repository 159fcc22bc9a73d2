"""The ``rdc`` command line: the parser of every subcommand and the dispatch to its handler.

Each command family has its module in rdc_lib.cli (flags ``add_<command>_parser``, handler ``cmd_<command>``):
train / train-baseline (``train``, ``train_commands``), eval (``evaluate``), certify (``certify``), sweep /
report (``sweep``), run-notebooks (``notebooks``), presets / import-edm (``presets``). The CLI modules are the
only ones that print.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import torch

from .certify import add_certify_parser, cmd_certify
from .evaluate import add_eval_parser, cmd_eval
from .notebooks import add_run_notebooks_parser, cmd_run_notebooks
from .presets import add_import_edm_parser, add_presets_parser, cmd_import_edm, cmd_presets
from .sweep import add_sweep_parsers, cmd_report, cmd_sweep
from .train import add_train_parser
from .train_commands import add_train_baseline_parser, cmd_train, cmd_train_baseline

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "train-baseline": cmd_train_baseline,
    "eval": cmd_eval,
    "certify": cmd_certify,
    "import-edm": cmd_import_edm,
    "presets": cmd_presets,
    "run-notebooks": cmd_run_notebooks,
    "sweep": cmd_sweep,
    "report": cmd_report,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``rdc`` parser with every subcommand (``COMMANDS`` names their handlers)."""
    parser = argparse.ArgumentParser(prog="rdc", description="Robust Diffusion Classifier research companion")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_train_baseline_parser(sub)
    add_eval_parser(sub)
    add_certify_parser(sub)
    add_import_edm_parser(sub)
    add_presets_parser(sub)
    add_run_notebooks_parser(sub)
    add_sweep_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the subcommand; returns the exit code (2: bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rdc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
