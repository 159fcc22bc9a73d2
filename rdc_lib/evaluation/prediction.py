"""Batched predictions of a defense: one call, N calls, and "all of R calls correct" (stochastic defenses)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["correct_all", "n_evaluate", "predict"]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 64) -> Tensor:
    """Predicted labels (N,) for images (N, C, H, W), in batches."""
    return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, x.shape[0], batch_size)])


@torch.no_grad()
def n_evaluate(model: nn.Module, x: Tensor, n_eval: int, batch_size: int = 64) -> Tensor:
    """Predicted labels (n_eval, N) of ``n_eval`` calls on images (N, C, H, W), batched together.

    The N images are repeated n_eval times and classified in batches of ``batch``: a stochastic
    defense draws fresh randomness for every copy (the same as n_eval separate calls), with fewer
    network calls when N is small.
    """
    reps = x.repeat(n_eval, *([1] * (x.ndim - 1)))
    return predict(model, reps, batch_size).reshape(n_eval, x.shape[0])


@torch.no_grad()
def correct_all(model: nn.Module, x: Tensor, y: Tensor, reads: int = 1, batch_size: int = 64) -> Tensor:
    """(N,) bool: ``reads`` independent calls all classify the images x (N, C, H, W) as y (N,)."""
    ok = torch.ones_like(y, dtype=torch.bool)
    for _ in range(reads):
        ok &= predict(model, x, batch_size) == y
    return ok
