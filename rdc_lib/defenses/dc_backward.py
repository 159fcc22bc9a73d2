"""Input gradients of the diffusion classifier's ELBO sums (B, K), computed with less work than plain autograd.

Both functions return total[b, k] = sum_t terms[b, k, t] (rdc_lib.diffusion.elbo.elbo_terms) and differ only in
their backward pass (the gradient is the same as plain autograd's, up to float rounding):

- :class:`ChunkedELBOSum`: forward without a graph, backward recomputes one chunk of levels at a time (all
  classes), so peak memory does not grow with K x T.
- :class:`SparseELBOSum` (a network that needs one pass per class: single-head): the backward runs only for the
  (image, class) pairs whose incoming gradient is nonzero. Margin-type attack losses depend on a few logits per
  image (DLR: 3 of K, CW margin: 2, targeted DLR: at most 5), so their exact gradient needs the backward of those
  classes only, after the forward of all K. A dense incoming gradient (cross-entropy) uses the graph the forward
  kept (when it fits in one chunk) or the chunked recomputation, exactly as before.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..diffusion.elbo import elbo_row_terms, elbo_terms, levels_per_chunk
from ..diffusion.schedules import NoiseGrid
from ..models.base import Denoiser

__all__ = ["SPARSE_MAX_FRACTION", "ChunkedELBOSum", "SparseELBOSum"]

# Largest share of nonzero (image, class) cotangents for which the pairwise recomputation runs (forward + backward
# of those pairs); above it the backward of all pairs (kept graph or chunked recomputation) is cheaper. DLR
# (3 of 10 classes) and targeted DLR (at most 5 of 10) are below it, cross-entropy (all) is above.
SPARSE_MAX_FRACTION = 0.6


def recompute_levels(
    x: Tensor, noise: Tensor, denoiser: Denoiser, grid: NoiseGrid, classes: Tensor, chunk_size: int, grad_out: Tensor
) -> Tensor:
    """Vector-Jacobian product of total (B, K) with ``grad_out`` (B, K), recomputing one chunk of levels at a time."""
    grad_x = torch.zeros_like(x)
    T, batch = len(grid), x.shape[0]
    per_chunk = levels_per_chunk(denoiser, batch, classes.numel(), noise.shape[1] == 1, chunk_size)
    for start in range(0, T, per_chunk):
        sl = slice(start, min(start + per_chunk, T))
        sub = NoiseGrid(grid.sigmas[sl], grid.weights[sl], grid.kind, grid.weighting)
        with torch.enable_grad():
            xc = x.detach().requires_grad_(True)
            part = elbo_terms(denoiser, xc, sub, classes=classes, noise=noise[:, :, sl], chunk_size=chunk_size).sum(-1)
            (g,) = torch.autograd.grad(part, xc, grad_out)
        grad_x += g
    return grad_x


def recompute_pairs(
    x: Tensor, noise: Tensor, denoiser: Denoiser, grid: NoiseGrid, classes: Tensor, chunk_size: int, grad_out: Tensor
) -> Tensor:
    """Vector-Jacobian product of total (B, K) with ``grad_out`` (B, K) from the pairs where grad_out != 0 only.

    Every (pair, level) row is one network pass; at most ``chunk_size`` rows per call.
    """
    b_idx, k_idx = (grad_out != 0).nonzero(as_tuple=True)
    T = len(grid)
    sigmas, weights = grid.sigmas.to(x.device, x.dtype), grid.weights.to(x.device, x.dtype)
    rows = b_idx.numel() * T
    grad_x = torch.zeros_like(x)
    for start in range(0, rows, chunk_size):
        r = torch.arange(start, min(start + chunk_size, rows), device=x.device)
        pair, level = r // T, r % T
        b, k = b_idx[pair], k_idx[pair]
        eps = noise[b, k if noise.shape[1] > 1 else torch.zeros_like(k), level]
        with torch.enable_grad():
            xr = x[b].detach().requires_grad_(True)
            terms = elbo_row_terms(denoiser, xr, sigmas[level], weights[level], classes[k], eps)
            (g,) = torch.autograd.grad(terms, xr, grad_out[b, k])
        grad_x.index_add_(0, b, g)
    return grad_x


def recompute_image_classes(
    x: Tensor, noise: Tensor, denoiser: Denoiser, grid: NoiseGrid, classes: Tensor, chunk_size: int, grad_out: Tensor
) -> Tensor:
    """:func:`recompute_pairs` for a denoiser that shares its label-independent layers across classes
    (``denoiser.shares_prefix()``) and eps shared by the classes: per image, its classes with a nonzero
    incoming gradient (padded with zero-gradient ones to the largest count) go through one shared pass."""
    nz = grad_out != 0
    counts = nz.sum(1)
    imgs = counts.nonzero().flatten()
    kmax = int(counts.max())
    # positions of each image's nonzero classes first (a stable sort keeps the padding deterministic)
    pos = nz[imgs].to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :kmax]  # (B', kmax)
    cot, labels = grad_out[imgs].gather(1, pos), classes[pos]
    x_sel, eps = x[imgs].detach(), noise[imgs, 0]  # (B', C, H, W), (B', T, ...)
    T, n, img = len(grid), imgs.numel(), x.shape[1:]
    sigmas, weights = grid.sigmas.to(x.device, x.dtype), grid.weights.to(x.device, x.dtype)
    per_chunk = max(1, chunk_size // max(1, n * kmax))
    grad_x = torch.zeros_like(x)
    for start in range(0, T, per_chunk):
        sl = slice(start, min(start + per_chunk, T))
        tc = sl.stop - sl.start
        with torch.enable_grad():
            xc = x_sel.requires_grad_(True)
            x0 = xc * 2 - 1
            noisy = (x0.unsqueeze(1) + sigmas[sl].reshape(1, tc, 1, 1, 1) * eps[:, sl]).reshape(n * tc, *img)
            den = denoiser.denoise_classes(noisy, sigmas[sl].repeat(n), labels.repeat_interleave(tc, dim=0))
            den = den.reshape(n, tc, kmax, *img)
            terms = ((den - x0.reshape(n, 1, 1, *img)) ** 2).flatten(3).mean(-1) * weights[sl].reshape(1, tc, 1)
            (g,) = torch.autograd.grad(terms.sum(1), xc, cot)
        grad_x.index_add_(0, imgs, g)
        x_sel = x_sel.detach()
    return grad_x


def _sparse(grad_out: Tensor) -> bool:
    return bool((grad_out != 0).sum() <= SPARSE_MAX_FRACTION * grad_out.numel())


def _forward(
    ctx,
    x: Tensor,
    noise: Tensor,
    denoiser: Denoiser,
    grid: NoiseGrid,
    classes: Tensor,
    chunk_size: int,
    keep_graph: bool,
) -> Tensor:
    """The forward of both functions: total (B, K) = sum_t terms, with what their backward needs saved on ``ctx``;
    ``keep_graph``: also the forward's graph (``ctx.graph`` = (input, total)), else ``ctx.graph`` is None."""
    with torch.enable_grad() if keep_graph else torch.no_grad():
        xc = x.detach().requires_grad_(True) if keep_graph else x
        total = elbo_terms(denoiser, xc, grid, classes=classes, noise=noise, chunk_size=chunk_size).sum(-1)
    ctx.graph = (xc, total) if keep_graph else None
    ctx.save_for_backward(x, noise, classes)
    ctx.denoiser, ctx.grid, ctx.chunk_size = denoiser, grid, chunk_size
    return total.detach()


class ChunkedELBOSum(torch.autograd.Function):
    """sum_t terms (B, K) with a memory-bounded backward that recomputes one chunk of levels at a time."""

    @staticmethod
    def forward(
        ctx, x: Tensor, noise: Tensor, denoiser: Denoiser, grid: NoiseGrid, classes: Tensor, chunk_size: int
    ) -> Tensor:
        return _forward(ctx, x, noise, denoiser, grid, classes, chunk_size, keep_graph=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, noise, classes = ctx.saved_tensors
        grad_x = recompute_levels(x, noise, ctx.denoiser, ctx.grid, classes, ctx.chunk_size, grad_out)
        return grad_x, None, None, None, None, None


class SparseELBOSum(torch.autograd.Function):
    """sum_t terms (B, K) whose backward runs only the (image, class) pairs with a nonzero incoming gradient.

    ``keep_graph``: the forward keeps its graph (one chunk holds every level) for a dense incoming gradient;
    otherwise a dense one is recomputed chunk by chunk (:func:`recompute_levels`).
    """

    forward = staticmethod(_forward)  # (ctx, x, noise, denoiser, grid, classes, chunk_size, keep_graph)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, noise, classes = ctx.saved_tensors
        graph, ctx.graph = ctx.graph, None  # used at most once; a second backward recomputes
        args = (x, noise, ctx.denoiser, ctx.grid, classes, ctx.chunk_size, grad_out)
        if _sparse(grad_out):
            shares = (
                noise.shape[1] == 1
                and callable(getattr(ctx.denoiser, "shares_prefix", None))
                and ctx.denoiser.shares_prefix()
            )
            grad_x = recompute_image_classes(*args) if shares else recompute_pairs(*args)
        elif graph is not None:
            (grad_x,) = torch.autograd.grad(graph[1], graph[0], grad_out)
        else:
            grad_x = recompute_levels(*args)
        return grad_x, None, None, None, None, None, None
