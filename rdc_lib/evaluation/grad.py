"""Gradient diagnostics (docs/paper.md section 7): health checks and memory accounting.

Library functions that return dataclasses (no printing): whether input gradients exist, are finite
and nonzero; whether they agree with finite differences; how random they are across draws of a
stochastic defense (cosine similarity), and the EOT size that randomness calls for.
:class:`SavedTensorMeter` counts the bytes autograd keeps for backward. The LM gradient modes
(exact, BPDA) live beside LM in :mod:`rdc_lib.diffusion.lm_grad`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..attacks.base import Model

__all__ = [
    "EOT_TARGET",
    "EOTSuggestion",
    "FiniteDifferenceCheck",
    "GradientCosine",
    "GradientHealth",
    "SavedTensorMeter",
    "check_gradients_finite_nonzero",
    "finite_difference_check",
    "gradient_cosine_similarity",
    "model_parameters",
    "suggest_eot",
]

LOSSES = ("ce", "margin")
GradLoss = Literal["ce", "margin"]  # a name of LOSSES


# --------------------------------------------------------------------------------------------
# memory accounting


class SavedTensorMeter:
    """Counts the bytes autograd keeps alive for backward (saved tensors), live and peak.

    A context manager around ``saved_tensors_hooks``: each distinct storage is counted once while
    any graph holds it; tensors sharing storage with ``exclude`` (e.g. model parameters, alive
    anyway) are not counted. Covers the forward and backward passes run inside the ``with``.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t: Tensor) -> "_Held":
        try:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, nbytes = id(t), t.numel() * t.element_size()
        if key in self._excluded:
            return _Held(t, None, 0)
        if self._refs.get(key, 0) == 0:
            self._bytes[key] = nbytes
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key] = self._refs.get(key, 0) + 1
        return _Held(t, self, key)

    @staticmethod
    def _unpack(held: "_Held") -> Tensor:
        return held.tensor

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            self.live_bytes -= self._bytes.pop(key)
            del self._refs[key]


class _Held:
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: Tensor, meter: SavedTensorMeter | None, key: int):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        if self.meter is not None:
            self.meter._release(self.key)


# --------------------------------------------------------------------------------------------
# gradient health checks


def _per_example_loss(model: Model, x: Tensor, y: Tensor, loss: str) -> Tensor:
    logits = model(x)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - logits.gather(1, y[:, None]).squeeze(1)  # margin loss: > 0 means misclassified


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid choices: {', '.join(LOSSES)}")


def _input_grad(model: Model, x: Tensor, y: Tensor, loss: str) -> tuple[Tensor | None, Tensor]:
    """(gradient of the summed per-example loss w.r.t. x, or None if it has no path to x; the losses)."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        values = _per_example_loss(model, xg, y, loss)
        if not values.requires_grad:
            return None, values.detach()
        (g,) = torch.autograd.grad(values.sum(), xg, allow_unused=True)
    return g, values.detach()


@dataclass
class GradientHealth:
    """Result of :func:`check_gradients_finite_nonzero`; per-example tensors have shape (B,)."""

    passed: bool
    has_graph: bool  # the loss depends on the input through autograd at all
    finite: Tensor  # (B,) bool
    nonzero: Tensor  # (B,) bool
    grad_norm: Tensor  # (B,) l2 norm of the input gradient (NaN if no graph)
    message: str


def check_gradients_finite_nonzero(model: Model, x: Tensor, y: Tensor, *, loss: GradLoss = "ce") -> GradientHealth:
    """Do input gradients of the loss exist, and are they finite and nonzero for every example?

    A model that cuts the graph (no_grad, detach, round, a non-differentiable wrapper) fails here;
    an evaluation that skips this check can report a robustness that only reflects masked gradients.
    """
    _check_loss(loss)
    g, _ = _input_grad(model, x, y, loss)
    b = x.shape[0]
    if g is None:
        nan = torch.full((b,), float("nan"))
        return GradientHealth(
            False,
            False,
            torch.zeros(b, dtype=torch.bool),
            torch.zeros(b, dtype=torch.bool),
            nan,
            "the loss does not depend on the input through autograd (no graph)",
        )
    flat = g.flatten(1)
    finite = torch.isfinite(flat).all(1).cpu()
    norm = flat.norm(dim=1).detach().cpu()
    nonzero = (flat != 0).any(1).cpu()
    problems = []
    if not finite.all():
        problems.append(f"{int((~finite).sum())}/{b} examples have non-finite gradients")
    if not nonzero.all():
        problems.append(f"{int((~nonzero).sum())}/{b} examples have all-zero gradients")
    passed = not problems
    return GradientHealth(passed, True, finite, nonzero, norm, "ok" if passed else "; ".join(problems))


@dataclass
class FiniteDifferenceCheck:
    """Result of :func:`finite_difference_check`; tensors have shape (n_directions, B)."""

    passed: bool
    autograd: Tensor  # <grad, d>
    finite_diff: Tensor  # (L(x + eps d) - L(x - eps d)) / (2 eps)
    rel_error: Tensor  # |autograd - finite_diff| / max(|autograd|, |finite_diff|, atol)
    max_rel_error: float
    eps: float
    tol: float


def finite_difference_check(
    model: Model,
    x: Tensor,
    y: Tensor,
    n_directions: int = 4,
    eps: float = 1e-3,
    *,
    tol: float = 0.05,
    atol: float = 1e-6,
    loss: GradLoss = "ce",
    generator: torch.Generator | None = None,
) -> FiniteDifferenceCheck:
    """Directional derivatives of the per-example loss: autograd vs central differences.

    ``model`` must be deterministic (e.g. a defense in ``noise_mode='fixed'``). Directions are
    random, unit l2 per example, supported on pixels at least ``eps`` from the [0, 1] boundary so
    the probes stay valid images. ``passed`` when every relative error is below ``tol``. Disagreement
    means the backward pass is not the derivative of the forward (e.g. BPDA, a stop-gradient).
    """
    _check_loss(loss)
    if n_directions < 1 or not eps > 0:
        raise ValueError(f"need n_directions >= 1 and eps > 0, got {n_directions} and {eps}")
    g, _ = _input_grad(model, x, y, loss)
    if g is None:
        g = torch.zeros_like(x)
    inside = ((x >= eps) & (x <= 1 - eps)).to(x.dtype)
    ad, fd = [], []
    for _ in range(n_directions):
        d = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * inside
        d = d / d.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(-1, 1, 1, 1)
        with torch.no_grad():
            up = _per_example_loss(model, x + eps * d, y, loss)
            down = _per_example_loss(model, x - eps * d, y, loss)
        fd.append((up - down) / (2 * eps))
        ad.append((g * d).flatten(1).sum(1))
    ad_t, fd_t = torch.stack(ad).detach(), torch.stack(fd).detach()
    rel = (ad_t - fd_t).abs() / torch.maximum(torch.maximum(ad_t.abs(), fd_t.abs()), torch.full_like(ad_t, atol))
    max_rel = float(rel.max())
    return FiniteDifferenceCheck(bool(max_rel < tol), ad_t.cpu(), fd_t.cpu(), rel.cpu(), max_rel, eps, tol)


@dataclass
class GradientCosine:
    """Result of :func:`gradient_cosine_similarity`."""

    per_example: Tensor  # (B,) mean pairwise cosine over the n_samples draws
    pairwise: Tensor  # (B, n_samples * (n_samples - 1) / 2)
    mean: float  # mean over examples
    n_samples: int


def gradient_cosine_similarity(
    model: Model, x: Tensor, y: Tensor, n_samples: int = 4, *, loss: GradLoss = "ce"
) -> GradientCosine:
    """Cosine similarity of input gradients across independent calls of a stochastic ``model``.

    Each call must draw fresh randomness (a defense in ``noise_mode='stochastic'``). A deterministic
    model gives 1; a zero gradient counts as cosine 0. Used with :func:`suggest_eot` (docs/paper.md
    section 7: DiffPure's gradients are far more random than the DC's).
    """
    _check_loss(loss)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 to compare gradients, got {n_samples}")
    grads = []
    for _ in range(n_samples):
        g, _ = _input_grad(model, x, y, loss)
        grads.append((torch.zeros_like(x) if g is None else g).flatten(1))
    pairs = [
        F.cosine_similarity(grads[i], grads[j], dim=1, eps=1e-30)
        for i in range(n_samples)
        for j in range(i + 1, n_samples)
    ]
    pairwise = torch.stack(pairs, dim=1).detach().cpu()
    per_example = pairwise.mean(1)
    return GradientCosine(per_example, pairwise, float(per_example.mean()), n_samples)


@dataclass
class EOTSuggestion:
    """Result of :func:`suggest_eot`."""

    eot: int  # suggested number of gradient samples averaged per attack step
    cosine: float  # the cosine the rule used (a low quantile over examples)
    target: float
    quantile: float
    capped: bool = field(default=False)  # True when the rule asked for more than max_eot


# The EOT rule's one target (library, notebooks, benchmarks/drivers/evaluation_report.py): the cosine that two
# independent EOT-averaged gradients should reach (see suggest_eot).
EOT_TARGET = 0.9


def suggest_eot(
    cosines: GradientCosine | Tensor | float,
    *,
    target: float = EOT_TARGET,
    quantile: float = 0.1,
    max_eot: int = 1024,
) -> EOTSuggestion:
    """EOT size so that gradients averaged over M draws are stable.

    Rule: model a gradient draw as g = mu + noise (independent, high-dimensional). Two draws then
    have cosine c = |mu|^2 / (|mu|^2 + s^2), and two independent averages of M draws have
    c_M = |mu|^2 / (|mu|^2 + s^2 / M). The suggestion is the smallest M with c_M >= ``target``:
    M = ceil(target / (1 - target) * (1 - c) / c), using the ``quantile`` (default: 10th percentile)
    of the per-example cosines, clipped to [1, max_eot]. c <= 0 (no shared signal) gives max_eot; so does
    ``target`` = 1 (exact agreement, reached only by a deterministic model, c = 1, which gets 1).
    ``target`` must lie in (0, 1]; the default is :data:`EOT_TARGET`.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(
            f"the EOT target must be a cosine in (0, 1] (default EOT_TARGET = {EOT_TARGET}), got {target!r}"
        )
    if not 0 <= quantile <= 1 or max_eot < 1:
        raise ValueError(f"need 0 <= quantile <= 1 and max_eot >= 1; got {quantile}, {max_eot}")
    if isinstance(cosines, GradientCosine):
        values = cosines.per_example
    else:
        values = torch.as_tensor(cosines, dtype=torch.float64).reshape(-1)
    c = float(torch.quantile(values.double(), quantile))
    if c >= target:
        return EOTSuggestion(1, c, target, quantile)
    if c <= 0 or target == 1:
        return EOTSuggestion(max_eot, c, target, quantile, capped=True)
    m = math.ceil(target / (1 - target) * (1 - c) / c - 1e-9)
    return EOTSuggestion(min(max(m, 1), max_eot), c, target, quantile, capped=m > max_eot)


def model_parameters(module: nn.Module) -> list[Tensor]:
    """Parameters and buffers of ``module`` (to exclude from a :class:`SavedTensorMeter`)."""
    return [*module.parameters(), *module.buffers()]
