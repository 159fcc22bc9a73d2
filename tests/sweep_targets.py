"""Cheap sweep targets for tests/test_sweep.py and benchmarks/timing/bench_sweep.py (``function: sweep_targets:...``).

They are imported by name on Dask workers, so this folder must be on the workers' ``sys.path``
(test_sweep.py puts it there before any cluster starts; subprocesses get it via PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def tiny_cell(
    x: int,
    seed: int,
    scale: float = 1.0,
    label: str = "a",
    sleep: float = 0.0,
    log_file: str = "",
    fail_marker: str = "",
    fail_x: int = -1,
    crash_x: int = -1,
) -> dict:
    """value = x * scale + seed, after ``sleep`` seconds. Appends one JSON line per execution to
    ``log_file``; raises while ``fail_marker`` exists and ``x == fail_x``; kills its own process
    (like a segfault) when ``x == crash_x``."""
    if log_file:
        line = json.dumps({"x": x, "seed": seed, "scale": scale, "pid": os.getpid(), "t": time.time()}) + "\n"
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one O_APPEND write: lines from several workers never interleave
        finally:
            os.close(fd)
    if x == crash_x:
        os._exit(13)
    time.sleep(sleep)
    if fail_marker and x == fail_x and Path(fail_marker).exists():
        raise RuntimeError(f"requested failure for x={x} (marker {fail_marker} exists)")
    return {
        "x": x,
        "seed": seed,
        "value": x * scale + seed,
        "label": label,
        "pid": os.getpid(),
        "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def fake_eval(
    defense: str,
    eps: float,
    seed: int,
    attack: str = "pgd",
    norm: str = "linf",
    n: int = 8,
    untrusted_eps: float = -1.0,
) -> dict:
    """An evaluation-shaped result (robust accuracy falling with eps) without any model."""
    robust = max(0.0, 0.9 - 4 * eps - (0.2 if defense == "cnn" else 0.0) + 0.01 * seed)
    trusted = eps != untrusted_eps
    checks = {"gradients": {"passed": True}, "large_budget": {"passed": trusted, "robust_acc": 0.5}}
    return {
        "defense": defense,
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "n": n,
        "seed": seed,
        "clean_acc": 0.95,
        "robust_acc": robust,
        "seconds": 0.01,
        "checks": checks,
        "trusted": trusted,
    }


def busy_cell(x: int, seed: int, label: str = "a", work: float = 1.0) -> dict:
    """Burn ``work`` seconds of this process's CPU time (a CPU-bound cell for benchmarks)."""
    t0, spins = time.process_time(), 0
    while time.process_time() - t0 < work:
        spins += sum(i * i for i in range(1000)) > 0
    return {"x": x, "seed": seed, "label": label, "spins": spins, "pid": os.getpid()}
