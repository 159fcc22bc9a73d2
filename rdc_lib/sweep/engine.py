"""Run a sweep's cells as tasks on Dask distributed and record each result the moment it arrives.

Where the cells run (rdc_lib.sweep.cluster): a local Dask cluster (one worker per GPU when there are GPUs), an
existing scheduler, Slurm jobs, or no Dask (``workers=0``: one by one in this process).

The client keeps about one cell per worker thread in flight (explicit unique task keys, ``pure=False``;
topped up after each result), loops over ``as_completed`` and writes each outcome to the store in its
own transaction, so a killed client loses only the cells in flight. A worker death re-runs the cell elsewhere
(Dask's allowed-failures); a cell that keeps killing workers is recorded as failed with the ``KilledWorker``
message.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.progress import progress_bar
from ..core.stored_state import is_stored_state_error
from .cluster import SlurmOptions, dask_client, visible_gpus
from .execute import CellOutcome, CellTask, execute_cell, failed_outcome
from .spec import SweepSpec
from .store import CellRecord, PlannedCell, ResultStore, move_store_aside, plan_cells, target_id

__all__ = ["SweepRunResult", "SweepStatus", "run_sweep", "sweep_status"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class SweepStatus:
    """Counts of a sweep's cells in its store; ``stale`` = rows of other code/checkpoint versions."""

    total: int
    done: int
    failed: int
    pending: int
    stale: int = 0
    failed_keys: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "failed_keys"}


@dataclass(frozen=True)
class SweepRunResult:
    """What ``run_sweep`` did: cells run now (by outcome), cells skipped as done/failed, final status."""

    status: SweepStatus
    ran: int
    ran_done: int
    ran_failed: int
    skipped: int
    seconds: float
    outcomes: tuple[CellOutcome, ...] = field(default=(), repr=False)


def sweep_status(spec: SweepSpec, *, code: str | None = None) -> SweepStatus:
    """Done / failed / pending counts of ``spec``'s cells (the store is read, never created)."""
    cells = plan_cells(spec, code)
    if not spec.store.is_file():
        return SweepStatus(total=len(cells), done=0, failed=0, pending=len(cells))
    with ResultStore(spec.store, readonly=True) as store:
        return _status(cells, store.statuses(), spec.name, store)


def _status(cells: list[PlannedCell], statuses: dict[str, str], name: str, store: ResultStore) -> SweepStatus:
    keys = {c.key for c in cells}
    mine = {k: s for k, s in statuses.items() if k in keys}
    done = sum(s == "done" for s in mine.values())
    failed = tuple(sorted(k for k, s in mine.items() if s == "failed"))
    stale = sum(1 for r in store.rows(sweep=name) if r.key not in keys)
    return SweepStatus(
        total=len(cells),
        done=done,
        failed=len(failed),
        pending=len(cells) - done - len(failed),
        stale=stale,
        failed_keys=failed,
    )


# --------------------------------------------------------------------------- run


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = None,
    scheduler_address: str | None = None,
    slurm: SlurmOptions | None = None,
    retry_failed: bool = False,
    devices: Sequence[str] | None = None,
    threads_per_cell: int | None = None,
    progress: bool = True,
    code: str | None = None,
    dashboard_address: str | None = None,
    restart_store: bool = False,
) -> SweepRunResult:
    """Run every cell of ``spec`` not yet done in its store (failed ones too with ``retry_failed``).

    ``workers``: local worker processes (default: one per visible GPU, else ``min(4, cpus)``; 0 = run in
    this process without Dask). ``devices``: GPU ids to pin workers to (default: ``visible_gpus()``;
    ``[]`` disables pinning). ``threads_per_cell``: OpenMP/torch threads per cell (default: cpus //
    workers locally, the job's cores on Slurm). ``code`` pins the code version in the keys.
    ``dashboard_address``: the Dask dashboard of an embedded cluster (default: a free port; needs bokeh).
    ``retry_failed``: a failed cell whose error was damaged stored state (``StoredStateError``) has its
    folder moved aside first; other failed cells resume from what their folder holds.
    ``restart_store``: move the store (and its -wal/-shm files) aside and start a fresh one (every cell
    runs again; eval cells resume from their intact records).
    """
    if scheduler_address is not None and slurm is not None:
        raise ValueError("give either scheduler_address or slurm options, not both")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    t0 = time.perf_counter()
    cells = plan_cells(spec, code)
    spec.output.mkdir(parents=True, exist_ok=True)
    if restart_store:
        moved = move_store_aside(spec.store)
        if moved:
            log.warning(
                "sweep %s: the store is kept as %s; starting a fresh one", spec.name, ", ".join(map(str, moved))
            )
    with ResultStore(spec.store) as store:
        statuses = store.statuses(c.key for c in cells)
        todo = [c for c in cells if statuses.get(c.key) is None or (retry_failed and statuses[c.key] == "failed")]
        damaged = (
            {r.key for r in store.rows(status="failed") if is_stored_state_error(r.error)} if retry_failed else set()
        )
        log.info(
            "sweep %s: %d cells, %d done, %d failed, %d to run",
            spec.name,
            len(cells),
            sum(s == "done" for s in statuses.values()),
            sum(s == "failed" for s in statuses.values()),
            len(todo),
        )
        outcomes: list[CellOutcome] = []
        if todo:
            local = scheduler_address is None and slurm is None
            gpus = list(devices) if devices is not None else (visible_gpus() if local else [])
            n = workers if workers is not None else (len(gpus) or min(4, os.cpu_count() or 1))
            if threads_per_cell is None:
                threads_per_cell = (
                    slurm.cores
                    if slurm is not None
                    else (max(1, (os.cpu_count() or 1) // max(n, 1)) if local else None)
                )
            tasks = [_task(spec, c, threads_per_cell, restart=c.key in damaged) for c in todo]
            if local and n == 0:
                outcomes = _run_inline(spec, todo, tasks, store, progress)
            else:
                with dask_client(
                    n,
                    gpus,
                    scheduler_address=scheduler_address,
                    slurm=slurm,
                    threads=threads_per_cell,
                    dashboard_address=dashboard_address,
                ) as client:
                    expected = slurm.jobs if slurm is not None else (n if local else 0)
                    outcomes = _run_dask(client, spec, todo, tasks, store, progress, expected)
        status = _status(cells, store.statuses(c.key for c in cells), spec.name, store)
    ran_done = sum(o.status == "done" for o in outcomes)
    return SweepRunResult(
        status=status,
        ran=len(outcomes),
        ran_done=ran_done,
        ran_failed=len(outcomes) - ran_done,
        skipped=len(cells) - len(todo),
        seconds=time.perf_counter() - t0,
        outcomes=tuple(outcomes),
    )


def _task(spec: SweepSpec, cell: PlannedCell, threads: int | None, restart: bool = False) -> CellTask:
    return CellTask(
        key=cell.key,
        kind=spec.target_kind,
        target=spec.target,
        params=cell.params,
        cell_dir=str((spec.output / "cells" / cell.key[:16]).resolve()),
        kernel=spec.kernel,
        cell_timeout=spec.cell_timeout,
        threads=threads,
        restart=restart,
    )


def _record(store: ResultStore, spec: SweepSpec, cell: PlannedCell, outcome: CellOutcome) -> None:
    store.record(
        CellRecord(
            key=cell.key,
            sweep=spec.name,
            target=target_id(spec),
            params=cell.params,
            status=outcome.status,
            code_version=cell.code_version,
            checkpoints=cell.checkpoints,
            finished=outcome.finished,
            result=outcome.result,
            error=outcome.error,
            notebook=outcome.notebook,
            worker=outcome.worker,
            started=outcome.started,
            duration=outcome.duration,
        )
    )
    if outcome.status == "failed":
        log.warning(
            "cell %s %s failed: %s", cell.key[:12], cell.params, ((outcome.error or "?").splitlines() or ["?"])[0]
        )
    else:
        log.info("cell %s %s done in %.1f s", cell.key[:12], cell.params, outcome.duration or 0.0)


def _progress_bar(total: int, spec: SweepSpec, enabled: bool) -> Any:
    return progress_bar(total, f"sweep {spec.name}", "cell", enabled=enabled)


def _run_inline(
    spec: SweepSpec, cells: list[PlannedCell], tasks: list[CellTask], store: ResultStore, progress: bool
) -> list[CellOutcome]:
    outcomes = []
    with _progress_bar(len(cells), spec, progress) as bar:
        for cell, task in zip(cells, tasks):
            outcome = execute_cell(task)
            _record(store, spec, cell, outcome)
            outcomes.append(outcome)
            bar.update(1)
    return outcomes


def _capacity(client: Any, expected: int) -> int:
    """Cells to keep in flight: the cluster's worker threads now, at least ``expected`` and 1."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # the scheduler is busy or restarting: keep the last known level
        threads = 0
    return max(1, expected, threads)


def _run_dask(
    client: Any,
    spec: SweepSpec,
    cells: list[PlannedCell],
    tasks: list[CellTask],
    store: ResultStore,
    progress: bool,
    expected_slots: int,
) -> list[CellOutcome]:
    """Keep about one cell per worker thread in flight (topped up after each result), so no cell waits
    queued behind another on a busy worker, and a dying worker takes only its own cell with it."""
    from distributed import as_completed  # about 1 s to import: only a run on Dask pays it

    run_id = uuid.uuid4().hex[:8]  # unique task keys: never attach to a stale task of an earlier client
    queue = list(zip(cells, tasks))[::-1]
    in_flight: dict[str, tuple[PlannedCell, Any]] = {}
    ac = as_completed()

    def top_up() -> None:
        cap = _capacity(client, expected_slots)
        while queue and len(in_flight) < cap:
            cell, task = queue.pop()
            fut = client.submit(execute_cell, task, key=f"rdc-cell-{cell.key[:16]}-{run_id}", pure=False)
            in_flight[fut.key] = (cell, fut)
            ac.add(fut)

    outcomes = []
    failed = 0
    try:
        with _progress_bar(len(cells), spec, progress) as bar:
            top_up()
            for fut in ac:
                cell, _ = in_flight.pop(fut.key)
                try:
                    outcome = fut.result()
                except Exception as exc:  # the worker died (KilledWorker) or the task could not run
                    outcome = failed_outcome(cell.key, exc)
                _record(store, spec, cell, outcome)
                outcomes.append(outcome)
                failed += outcome.status == "failed"
                bar.update(1)
                bar.set_postfix(failed=failed, refresh=False)
                fut.release()
                top_up()
    finally:
        client.cancel([f for _, f in in_flight.values()])
    return outcomes
