"""The ``rdc`` command line: ``main`` parses and dispatches (``rdc_lib.cli.main``); ``rdc train`` lives in
``rdc_lib.cli.train``. ``python -m rdc_lib.cli`` runs the same entry point."""

from .main import (
    add_run_notebooks_arguments,
    add_sweep_arguments,
    build_parser,
    cli_run_notebooks,
    eval_config,
    main,
    run_sweep_command,
)

__all__ = [
    "add_run_notebooks_arguments",
    "add_sweep_arguments",
    "build_parser",
    "cli_run_notebooks",
    "eval_config",
    "main",
    "run_sweep_command",
]
