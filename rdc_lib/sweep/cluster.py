"""Where a sweep's cells run: the Dask cluster of a sweep run (rdc_lib.sweep.engine), its GPUs and Slurm jobs.

Where the cells run:
- default: an embedded ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)``. With GPUs
  (``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L``) the default is one worker per GPU, each started with
  its own ``CUDA_VISIBLE_DEVICES`` (so a target's ``"cuda"`` is that worker's GPU; more workers than
  GPUs share them round-robin). The ``eval`` target runs on the device its parameters name (``device: cuda`` in a
  sweep's fixed parameters on GPU workers; ``cpu`` when none is named, as everywhere in rdc_lib).
- ``scheduler_address``: an existing cluster (``dask scheduler`` + ``dask worker --nthreads 1``).
- ``slurm``: dask-jobqueue ``SLURMCluster``, one single-threaded worker per job, ``gres=gpu:N``
  (Slurm sets ``CUDA_VISIBLE_DEVICES``), worker ``--lifetime`` below the walltime so jobs retire
  cleanly instead of dying mid-cell. The output folder must be on a file system the jobs share; the
  store stays with the client.
- ``workers=0``: no Dask; cells run one by one in this process (for debugging).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["SlurmOptions", "dask_client", "slurm_cluster_kwargs", "visible_gpus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlurmOptions:
    """Slurm jobs for the workers (dask-jobqueue ``SLURMCluster``); one single-threaded worker per job."""

    jobs: int = 1  # worker jobs to submit
    partition: str | None = None  # #SBATCH -p
    account: str | None = None  # #SBATCH -A
    cores: int = 4  # --cpus-per-task (torch threads of the cell)
    memory: str = "16GB"
    walltime: str = "01:00:00"
    gpus: int = 1  # --gres=gpu:N per job (0: CPU jobs)
    lifetime: str | None = None  # worker --lifetime; default: walltime - 5 min
    lifetime_stagger: str = "2m"
    directives: tuple[str, ...] = ()  # extra #SBATCH lines, e.g. "--constraint=a100"
    prologue: tuple[str, ...] = ()  # shell lines before the worker, e.g. "source .venv/bin/activate"
    log_directory: str | None = None
    python: str | None = None  # interpreter on the nodes (default: this one)

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.cores < 1 or self.gpus < 0:
            raise ValueError(
                f"Slurm jobs and cores must be >= 1 and gpus >= 0, got jobs={self.jobs}, "
                f"cores={self.cores}, gpus={self.gpus}"
            )
        _walltime_minutes(self.walltime)


def _walltime_minutes(walltime: str) -> int:
    """Minutes of a Slurm walltime ``[D-]HH:MM:SS`` / ``HH:MM`` / ``MM``; ValueError otherwise."""
    days, _, rest = walltime.rpartition("-") if "-" in walltime else ("0", "", walltime)
    parts = rest.split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 3 or not days.isdigit():
        raise ValueError(f"walltime must look like HH:MM:SS, D-HH:MM:SS, HH:MM or MM, got {walltime!r}")
    hours, minutes = (0, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    return int(days) * 1440 + hours * 60 + minutes


def slurm_cluster_kwargs(opts: SlurmOptions) -> dict[str, Any]:
    """Translate ``SlurmOptions`` into ``dask_jobqueue.SLURMCluster`` keyword arguments."""
    lifetime = opts.lifetime or f"{max(_walltime_minutes(opts.walltime) - 5, 1)}m"
    directives = list(opts.directives)
    if opts.gpus:
        directives.append(f"--gres=gpu:{opts.gpus}")
    prologue = [f"export OMP_NUM_THREADS={opts.cores}", *opts.prologue]
    kwargs: dict[str, Any] = dict(
        cores=1,
        processes=1,  # one worker thread: one cell at a time per job
        job_cpu=opts.cores,
        memory=opts.memory,
        walltime=opts.walltime,
        queue=opts.partition,
        account=opts.account,
        job_extra_directives=directives,
        job_script_prologue=prologue,
        worker_extra_args=["--lifetime", lifetime, "--lifetime-stagger", opts.lifetime_stagger],
    )
    if opts.log_directory is not None:
        kwargs["log_directory"] = opts.log_directory
    if opts.python is not None:
        kwargs["python"] = opts.python
    return kwargs


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``, else []."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@contextmanager
def dask_client(
    workers: int,
    devices: Sequence[str],
    *,
    scheduler_address: str | None,
    slurm: SlurmOptions | None,
    threads: int | None,
    dashboard_address: str | None,
) -> Iterator[Any]:
    """A Dask client on the requested cluster; closes what it started."""
    from distributed import Client, LocalCluster  # about 1 s to import: only a run on Dask pays it

    if scheduler_address is not None:
        with Client(scheduler_address) as client:
            yield client
        return
    if slurm is not None:
        from dask_jobqueue import SLURMCluster  # the optional 'slurm' extra

        cluster = SLURMCluster(**slurm_cluster_kwargs(slurm))
        cluster.scale(jobs=slurm.jobs)
    elif devices:
        cluster = _gpu_cluster(workers, devices, threads, dashboard_address)
    else:
        env = {} if threads is None else _thread_env(threads)
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            env=env,
            dashboard_address=dashboard_address or ":0",
            silence_logs=logging.WARNING,
        )
    try:
        with Client(cluster) as client:
            log.info("Dask dashboard: %s", client.dashboard_link)
            yield client
    finally:
        cluster.close()


def _thread_env(threads: int) -> dict[str, str]:
    return {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _gpu_cluster(workers: int, devices: Sequence[str], threads: int | None, dashboard_address: str | None) -> Any:
    """A local cluster whose worker i runs with ``CUDA_VISIBLE_DEVICES=devices[i % len(devices)]``."""
    from distributed import Nanny, Scheduler, SpecCluster  # about 1 s to import: only a run on Dask pays it
    from distributed.system import MEMORY_LIMIT  # distributed, as on the line above

    specs = {}
    for i in range(workers):
        env = {"CUDA_VISIBLE_DEVICES": devices[i % len(devices)], **({} if threads is None else _thread_env(threads))}
        specs[i] = {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "env": env,
                "memory_limit": MEMORY_LIMIT // workers,
                "dashboard": False,
                "silence_logs": logging.WARNING,
            },
        }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard_address or ":0"}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.WARNING)
