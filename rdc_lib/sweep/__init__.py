"""Robustness sweeps: a YAML grid of cells, run on Dask, recorded crash-safely in SQLite, reported.

    spec = load_sweep("examples/sweeps/digits_eps.yaml")   # validated before anything runs
    run_sweep(spec, workers=2)                              # resumes: done cells are skipped
    sweep_status(spec)                                      # SweepStatus(total, done, failed, pending, stale)
    write_report(spec.store)                                # report.md, report.html, cells.csv

Targets: ``function: eval`` (``rdc_lib.evaluation.runner.evaluate_params``), ``function:
module.path:callable`` (called with the cell's params as keyword arguments; returns a JSON-able dict;
the module must be importable on the workers), or ``notebook: path.ipynb`` executed with papermill.

Notebook convention: declare ``result_dir: str = ""`` in the ``parameters`` cell (annotated literals
only) and end with::

    if result_dir:
        Path(result_dir, "results.json").write_text(json.dumps(result))

``result`` being a JSON-able dict. The executed notebook is kept in the same folder (``notebook.ipynb``).

``add_sweep_arguments`` / ``run_sweep_command`` are the ``rdc sweep`` and ``rdc report`` commands.
"""

from __future__ import annotations

import argparse
import json
import sys

from .engine import SlurmOptions, SweepRunResult, SweepStatus, run_sweep, slurm_cluster_kwargs, sweep_status
from .report import Report, write_report
from .spec import SweepSpec, SweepSpecError, load_sweep, parse_sweep
from .store import CellRecord, ResultStore, code_version, plan_cells

__all__ = [
    "CellRecord", "Report", "ResultStore", "SlurmOptions", "SweepRunResult", "SweepSpec", "SweepSpecError",
    "SweepStatus", "add_sweep_arguments", "code_version", "load_sweep", "parse_sweep", "plan_cells",
    "run_sweep", "run_sweep_command", "slurm_cluster_kwargs", "sweep_status", "write_report",
]


def add_sweep_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``report`` sub-commands to the ``rdc`` parser."""
    p = subparsers.add_parser("sweep", help="run a YAML sweep on Dask; resumes, records every cell in SQLite")
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--status", action="store_true", help="print done/failed/pending counts and exit")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (default: keep them)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per GPU, else min(4, cpus); 0 = no Dask)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use a running Dask scheduler")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads per cell")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true", help="write the report next to the store when done")
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
    s.add_argument("--slurm-prologue", action="append", default=[],
                   help="shell line run before the worker, e.g. 'source .venv/bin/activate' (repeatable)")
    s.add_argument("--slurm-log-dir", default=None)

    r = subparsers.add_parser("report", help="tables and plots (report.md, report.html, cells.csv) of a sweep store")
    r.add_argument("store", metavar="STORE", help="the sweep's results.sqlite")
    r.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    r.add_argument("--x", default="eps", help="x axis parameter")
    r.add_argument("--y", default="robust_acc", help="y axis result field")
    r.add_argument("--sweep", default=None, help="only rows of this sweep name")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Dispatch ``rdc sweep`` / ``rdc report``; returns the exit code (1: failed cells, 2: bad input)."""
    try:
        if args.command == "report":
            return cli_report(args)
        return cli_sweep(args)
    except (SweepSpecError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _slurm_options(args: argparse.Namespace) -> SlurmOptions | None:
    if not args.slurm:
        return None
    return SlurmOptions(jobs=args.slurm_jobs, partition=args.slurm_partition, account=args.slurm_account,
                        cores=args.slurm_cores, memory=args.slurm_memory, walltime=args.slurm_walltime,
                        gpus=args.slurm_gpus, directives=tuple(args.slurm_directive),
                        prologue=tuple(args.slurm_prologue), log_directory=args.slurm_log_dir)


def cli_sweep(args: argparse.Namespace) -> int:
    """``rdc sweep``: validate, then print the status or run; the last line is the status as JSON."""
    spec = load_sweep(args.sweep_file)
    if args.status:
        status = sweep_status(spec)
        for key in status.failed_keys:
            print(f"failed: {key[:12]}")
        print(json.dumps({"sweep": spec.name, "store": str(spec.store), **status.as_dict()}))
        return 0
    res = run_sweep(spec, workers=args.workers, scheduler_address=args.scheduler, slurm=_slurm_options(args),
                    retry_failed=args.retry_failed, threads_per_cell=args.threads, progress=not args.no_progress)
    if args.report:
        rep = write_report(spec.store, sweep=spec.name)
        print(f"report: {rep.markdown} {rep.html}")
    print(json.dumps({"sweep": spec.name, "store": str(spec.store), "ran": res.ran, "skipped": res.skipped,
                      "seconds": round(res.seconds, 1), **res.status.as_dict()}))
    return 1 if res.status.failed else 0


def cli_report(args: argparse.Namespace) -> int:
    """``rdc report``: write the report files; the last line lists them as JSON."""
    rep = write_report(args.store, args.out, x=args.x, y=args.y, sweep=args.sweep)
    print(json.dumps({"markdown": str(rep.markdown), "html": str(rep.html), "csv": str(rep.cells_csv),
                      "done": rep.done, "failed": rep.failed, "untrusted": rep.untrusted}))
    return 0
