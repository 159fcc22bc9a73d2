"""Shared fixtures: one torch thread, tiny random denoisers, seeded generators, a CIFAR batch writer."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rdc_lib.models import DenoiserConfig, build_denoiser

# the tiny small-U-Net backbone of the unit tests; copy it (dict(TINY_BACKBONE)) before changing it
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """The script ``benchmarks/<folder>/<name>.py`` (timing/, drivers/) or ``benchmarks/<name>.py`` as a module,
    loaded from its file as when it runs as a script."""
    paths = [p for p in (BENCHMARKS / f"{name}.py", *BENCHMARKS.glob(f"*/{name}.py")) if p.is_file()]
    if len(paths) != 1:
        raise FileNotFoundError(f"expected one script {name}.py under {BENCHMARKS}, found {paths}")
    spec = importlib.util.spec_from_file_location(f"_rdc_bench_{name}", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_BACKBONE = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, dropout=0.0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole test module, restored afterwards (the machine's cores are shared: one thread
    is faster here than two contending ones). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``; module-scoped fixtures then run single-threaded too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_denoiser(heads: str = "single", num_classes: int = 10, seed: int = 0, dtype=torch.float32):
    """A small random denoiser whose output layers are non-zero (so the classes differ)."""
    gen = torch.Generator().manual_seed(seed)
    net = build_denoiser(DenoiserConfig(heads=heads, num_classes=num_classes, backbone=dict(TINY_BACKBONE)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.to(dtype).eval()


@pytest.fixture(params=["single", "multi"])
def heads(request) -> str:
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def write_cifar_batches(folder: Path, n_per_batch: int = 4, names=None, seed: int = 0) -> None:
    """Tiny files in the exact CIFAR-10 python-pickle batch format."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, n_per_batch).tolist(),
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
