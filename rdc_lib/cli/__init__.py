"""The ``rdc`` command line: ``main`` parses and dispatches (``rdc_lib.cli.main``); each command family has its
module here (``add_<command>_parser`` adds its flags, ``cmd_<command>`` runs it). ``python -m rdc_lib.cli`` runs
the same entry point."""

from .evaluate import eval_config
from .main import COMMANDS, build_parser, main
from .notebooks import add_run_notebooks_parser, cmd_run_notebooks
from .sweep import add_sweep_parsers, cmd_report, cmd_sweep

__all__ = [
    "COMMANDS",
    "add_run_notebooks_parser",
    "add_sweep_parsers",
    "build_parser",
    "cmd_report",
    "cmd_run_notebooks",
    "cmd_sweep",
    "eval_config",
    "main",
]
