"""``rdc sweep`` and ``rdc report``: run a YAML sweep on Dask, and the report of its store (rdc_lib.sweep)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable

from ..core.choices import SPLITS
from ..experiments.selection import with_split
from ..sweep import SlurmOptions, SweepSpecError, load_sweep, run_sweep, sweep_status, write_report

__all__ = ["add_sweep_parsers", "cmd_report", "cmd_sweep"]


def add_sweep_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``report`` sub-commands to the ``rdc`` parser."""
    p = subparsers.add_parser("sweep", help="run a YAML sweep on Dask; resumes, records every cell in SQLite")
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--status", action="store_true", help="print done/failed/pending counts and exit")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="run failed cells again (default: keep them); a cell that failed on damaged stored state "
        "has its folder moved aside first",
    )
    p.add_argument(
        "--restart-store",
        action="store_true",
        help="move the result store aside (renamed, never deleted) and start a fresh one",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: one per GPU, else min(4, cpus); 0 = no Dask)",
    )
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use a running Dask scheduler")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads per cell")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true", help="write the report next to the store when done")
    p.add_argument(
        "--split",
        default=None,
        choices=SPLITS,
        help="eval sweeps: run the cells on this split instead of the file's (a selection sweep reads "
        "'val'; --split test reads test images, into <name>_test)",
    )
    s = p.add_argument_group("Slurm (dask-jobqueue)")
    s.add_argument("--slurm", action="store_true", help="run the workers as Slurm jobs")
    s.add_argument("--slurm-jobs", type=int, default=1, help="worker jobs (one single-threaded worker each)")
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-account", default=None)
    s.add_argument("--slurm-cores", type=int, default=4, help="--cpus-per-task of each job")
    s.add_argument("--slurm-memory", default="16GB")
    s.add_argument("--slurm-walltime", default="01:00:00")
    s.add_argument("--slurm-gpus", type=int, default=1, help="--gres=gpu:N per job (0 for CPU jobs)")
    s.add_argument("--slurm-directive", action="append", default=[], help="extra #SBATCH line (repeatable)")
    s.add_argument(
        "--slurm-prologue",
        action="append",
        default=[],
        help="shell line run before the worker, e.g. 'source .venv/bin/activate' (repeatable)",
    )
    s.add_argument("--slurm-log-dir", default=None)

    r = subparsers.add_parser("report", help="tables and plots (report.md, report.html, cells.csv) of a sweep store")
    r.add_argument("store", metavar="STORE", help="the sweep's results.sqlite")
    r.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    r.add_argument("--x", default="eps", help="x axis parameter")
    r.add_argument("--y", default="robust_acc", help="y axis result field")
    r.add_argument("--sweep", default=None, help="only rows of this sweep name")


def _bad_input_exits_2(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A sweep handler that prints ``error: ...`` and returns 2 on a bad sweep file, a missing file or a bad value."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (SweepSpecError, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


# SlurmOptions field -> its rdc sweep flag's dest (list flags become tuples).
_SLURM_FLAGS = {
    "jobs": "slurm_jobs", "partition": "slurm_partition", "account": "slurm_account", "cores": "slurm_cores",
    "memory": "slurm_memory", "walltime": "slurm_walltime", "gpus": "slurm_gpus", "directives": "slurm_directive",
    "prologue": "slurm_prologue", "log_directory": "slurm_log_dir",
}  # fmt: skip


def _slurm_options(args: argparse.Namespace) -> SlurmOptions | None:
    if not args.slurm:
        return None
    values = {field: getattr(args, dest) for field, dest in _SLURM_FLAGS.items()}
    return SlurmOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@_bad_input_exits_2
def cmd_sweep(args: argparse.Namespace) -> int:
    """``rdc sweep``: validate, then print the status or run; the last line is the status as JSON.

    Exit code 1 when cells failed, 2 for bad input."""
    spec = load_sweep(args.sweep_file)
    if args.split is not None:
        spec = with_split(spec, args.split)
    if args.status:
        status = sweep_status(spec)
        for key in status.failed_keys:
            print(f"failed: {key[:12]}")
        print(json.dumps({"sweep": spec.name, "store": str(spec.store), **status.as_dict()}))
        return 0
    res = run_sweep(
        spec,
        workers=args.workers,
        scheduler_address=args.scheduler,
        slurm=_slurm_options(args),
        retry_failed=args.retry_failed,
        threads_per_cell=args.threads,
        progress=not args.no_progress,
        restart_store=args.restart_store,
    )
    if args.report:
        rep = write_report(spec.store, sweep=spec.name)
        print(f"report: {rep.markdown} {rep.html}")
    print(
        json.dumps(
            {
                "sweep": spec.name,
                "store": str(spec.store),
                "ran": res.ran,
                "skipped": res.skipped,
                "seconds": round(res.seconds, 1),
                **res.status.as_dict(),
            }
        )
    )
    return 1 if res.status.failed else 0


@_bad_input_exits_2
def cmd_report(args: argparse.Namespace) -> int:
    """``rdc report``: write the report files; the last line lists them as JSON (exit code 2 for bad input)."""
    rep = write_report(args.store, args.out, x=args.x, y=args.y, sweep=args.sweep)
    print(
        json.dumps(
            {
                "markdown": str(rep.markdown),
                "html": str(rep.html),
                "csv": str(rep.cells_csv),
                "done": rep.done,
                "failed": rep.failed,
                "untrusted": rep.untrusted,
            }
        )
    )
    return 0
