"""Run one sweep cell (on a Dask worker, or in-process): a papermill execution or a direct function call.

``execute_cell`` never raises for a failing target: the failure comes back as a ``CellOutcome`` with
``status="failed"`` and the error text, so the client records it like any other result. Only a worker
that dies (segfault, OOM kill) surfaces as an exception on the client (``KilledWorker``).

Notebook convention: the engine passes ``result_dir`` (the cell's folder); the notebook writes its
JSON-able result dict to ``<result_dir>/results.json`` in its last cell and skips that when
``result_dir`` is empty (interactive use). Notebooks run through ``rdc_lib.jobs.papermill_runner`` (the
main job's runner too): the executed notebook is written as ``notebook.part.ipynb`` and renamed to
``notebook.ipynb`` when papermill returns (also after an error, so the failing cell's traceback is kept as
the record); kernels run with the notebook's folder as cwd; kernel start-up races are retried.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.stored_state import DAMAGED, StoredStateError, is_stored_state_error, move_aside
from ..evaluation.provenance import eval_provenance
from ..evaluation.runner import EvalConfig, evaluate_params
from ..jobs.papermill_runner import RESULT_FILE, PapermillJob, error_head, strip_ansi
from .store import utc_now
from .targets import resolve_callable

__all__ = ["CellOutcome", "CellTask", "execute_cell"]

log = logging.getLogger(__name__)

NOTEBOOK_FILE = "notebook.ipynb"
_MAX_ERROR_CHARS = 20_000
CELL_RESTART = "--retry-failed (rdc sweep; retry_failed=True in run_sweep())"
_SWEEP_WAY_OUT = (
    "In a sweep: rerun with `rdc sweep FILE --retry-failed` (retry_failed=True): this cell's folder "
    f"is moved aside as '<folder>.{DAMAGED}-<time>' (nothing is deleted) and the cell runs afresh."
)


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to run one cell (picklable, no open handles)."""

    key: str
    kind: str  # "notebook" | "function"
    target: str  # notebook path, "eval" or "module:callable"
    params: dict[str, Any]  # seed included
    cell_dir: str  # per-cell folder: executed notebook, results.json, eval records
    kernel: str | None = None
    cell_timeout: float | None = None
    threads: int | None = None  # torch / OpenMP threads for this cell
    kernel_start_retries: int = 2
    restart: bool = False  # move the cell folder aside first (its stored state was damaged)


@dataclass(frozen=True)
class CellOutcome:
    """What a worker reports back for one cell."""

    key: str
    status: str  # "done" | "failed"
    started: str | None  # None: the worker died before reporting
    finished: str
    duration: float | None
    result: dict[str, Any] | None = None
    error: str | None = None
    notebook: str | None = None
    worker: str | None = None


def execute_cell(task: CellTask) -> CellOutcome:
    """Run the cell; catch every error of the target into a failed outcome."""
    started, t0 = utc_now(), time.perf_counter()
    cell_dir = Path(task.cell_dir)
    notebook = None
    try:
        if task.restart and cell_dir.exists():
            moved = move_aside(cell_dir, DAMAGED)
            log.warning("cell %s: its damaged folder is kept as %s; the cell runs afresh", task.key[:12], moved)
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / "params.json").write_text(json.dumps(task.params, indent=1, sort_keys=True))
        _set_threads(task.threads, torch_now=task.target == "eval")
        if task.kind == "notebook":
            notebook = str(cell_dir / NOTEBOOK_FILE)
            result = _run_notebook(task, cell_dir)
        else:
            result = _run_function(task, cell_dir)
        result = _jsonable(result)
        status, error = "done", None
    except Exception as exc:  # the target's failure is data: it becomes a 'failed' row
        status, result, error = "failed", None, _error_text(exc)
        if is_stored_state_error(error):
            error = error.replace("\n", f"\n{_SWEEP_WAY_OUT}\n", 1)
    if notebook is not None and not Path(notebook).is_file():
        notebook = None
    return CellOutcome(
        key=task.key,
        status=status,
        started=started,
        finished=utc_now(),
        duration=time.perf_counter() - t0,
        result=result,
        error=error,
        notebook=notebook,
        worker=_worker_name(),
    )


def _run_function(task: CellTask, cell_dir: Path) -> Any:
    if task.target == "eval":
        params = dict(task.params)
        params.setdefault("records_dir", str(cell_dir / "records"))  # an interrupted cell resumes its chunks
        result = evaluate_params(params)
        cfg = EvalConfig.from_params({k: v for k, v in params.items() if k not in ("records_dir", "device")})
        return {**result, "provenance": eval_provenance(cfg)}
    return resolve_callable(task.target)(**task.params)


def _run_notebook(task: CellTask, cell_dir: Path) -> dict[str, Any]:
    job = PapermillJob(Path(task.target), cell_dir / NOTEBOOK_FILE, cell_dir, task.params)
    job.run(kernel_name=task.kernel, cell_timeout=task.cell_timeout, kernel_start_retries=task.kernel_start_retries)
    result_file = job.result_file
    if not result_file.is_file():
        raise RuntimeError(
            f"the notebook {task.target} finished without writing {result_file}: its last cell must "
            f"write a JSON dict to Path(result_dir) / {RESULT_FILE!r} (see rdc_lib.sweep)"
        )
    try:
        result = json.loads(result_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoredStateError(result_file, f"it is not valid JSON ({exc})", restart=CELL_RESTART) from exc
    if not isinstance(result, dict):
        raise ValueError(f"{result_file} must hold a JSON object, got {type(result).__name__}")
    return result


def _jsonable(result: Any) -> dict[str, Any]:
    """Check the target returned a JSON-able dict (NaN allowed); return it unchanged."""
    if not isinstance(result, dict):
        raise TypeError(f"the target must return a JSON-able dict, got {type(result).__name__}")
    try:
        json.dumps(result, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the target's result is not JSON-able: {exc}") from exc
    return result


def _error_text(exc: BaseException) -> str:
    if type(exc).__name__ == "PapermillExecutionError":
        body = "\n".join(exc.traceback)
    else:
        body = "".join(traceback.format_exception(exc))
    text = f"{error_head(exc, cell='notebook cell')}\n\n{strip_ansi(body)}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "\n... (truncated)"


def _set_threads(threads: int | None, *, torch_now: bool) -> None:
    """OpenMP/torch threads for this cell: env for notebook kernels, ``torch.set_num_threads`` in-process."""
    if threads is None:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if torch_now or "torch" in sys.modules:
        torch.set_num_threads(threads)


def _worker_name() -> str:
    try:
        from distributed import get_worker  # heavy (distributed, ~0.4 s): only a Dask worker has one

        return f"{get_worker().name}@{socket.gethostname()}"
    except (ImportError, ValueError):
        return f"pid{os.getpid()}@{socket.gethostname()}"


def failed_outcome(key: str, exc: BaseException, started: str | None = None) -> CellOutcome:
    """A failed outcome for an error seen on the client (e.g. ``KilledWorker``: the worker died)."""
    return CellOutcome(
        key=key, status="failed", started=started, finished=utc_now(), duration=None, error=_error_text(exc)
    )
