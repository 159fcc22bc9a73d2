"""``rdc run-notebooks``: execute every notebook (papermill) into a run folder (rdc_lib.jobs.main_job)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ..jobs.main_job import run_notebooks

__all__ = ["add_run_notebooks_parser", "cmd_run_notebooks"]


def add_run_notebooks_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rdc run-notebooks`` to the ``rdc`` parser's sub-commands; returns its parser."""
    p = subparsers.add_parser(
        "run-notebooks", help="execute every notebook (papermill) into a run folder with a summary table"
    )
    p.add_argument("--out", default="runs/latest", metavar="DIR", help="run folder (default runs/latest)")
    p.add_argument(
        "--params",
        default=None,
        metavar="FILE.yaml",
        help="parameters file, e.g. notebooks/params/small.yaml (flat name: value; per_notebook overrides)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="run only these notebooks (stem, file name or NN prefix)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="one more parameter for every notebook that declares it (VALUE parsed as YAML)",
    )
    p.add_argument(
        "--notebooks-dir",
        default=None,
        metavar="DIR",
        help="folder of the NN_*.ipynb notebooks (default: the repository's notebooks/)",
    )
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' kernelspec)")
    p.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_run_notebooks(args: argparse.Namespace) -> int:
    """``rdc run-notebooks``: run, print the summary table and where the outputs are; last line JSON.

    Exit code 0 when every notebook succeeded, 1 when any failed, 2 for bad arguments.
    """
    try:
        extra = {name: yaml.safe_load(value) for name, value in (args.parameter or [])}
        summary = run_notebooks(
            args.out,
            args.params,
            args.only,
            progress=not args.no_progress,
            notebooks_dir=args.notebooks_dir,
            kernel_name=args.kernel,
            cell_timeout=args.cell_timeout,
            parameters=extra,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"rdc run-notebooks: error: {exc}", file=sys.stderr)
        return 2
    print(summary.markdown())
    out = Path(summary.run_dir)
    print(f"outputs: {out.resolve()} (summary: {out / 'summary.md'}, {out / 'summary.json'})")
    print(
        json.dumps(
            {
                "run_dir": str(out),
                "summary": str(out / "summary.json"),
                "notebooks": len(summary.notebooks),
                "failed": summary.failed,
            }
        )
    )
    return 0 if summary.ok else 1
