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

The ``rdc sweep`` and ``rdc report`` commands are in rdc_lib/cli/sweep.py.
"""

from __future__ import annotations

from .cluster import SlurmOptions, slurm_cluster_kwargs
from .engine import SweepRunResult, SweepStatus, run_sweep, sweep_status
from .report import Report, write_report
from .spec import SweepSpec, SweepSpecError, load_sweep, parse_sweep
from .store import CellRecord, ResultStore, code_version, plan_cells

__all__ = [
    "CellRecord",
    "Report",
    "ResultStore",
    "SlurmOptions",
    "SweepRunResult",
    "SweepSpec",
    "SweepSpecError",
    "SweepStatus",
    "code_version",
    "load_sweep",
    "parse_sweep",
    "plan_cells",
    "run_sweep",
    "slurm_cluster_kwargs",
    "sweep_status",
    "write_report",
]
