"""Gradients through likelihood maximization: exact or BPDA (docs/paper.md section 4).

Exact LM gradients at bounded memory
------------------------------------
Each LM step is itself a gradient step, so d LM(x) / dx is second order. :func:`lm_exact` runs the N
steps without a graph, stores only the N + 1 iterates (and Adam's state, if used): images, small.
Its backward pass walks the steps from last to first; for step k it rebuilds that one step's graph
(``create_graph=True`` for the inner gradient) from the stored iterate and the same sigma/eps, and
pulls the incoming vector back through it with one vector-Jacobian product, w.r.t. the iterate,
the optimizer state and the ball centre x (the projection depends on x at every step). Only one
step's graph is alive at a time, so peak memory does not grow with N. For small inputs
(``lm_graph="auto"``, what RobustDiffusionClassifier uses) keeping the unrolled graph of the forward
is cheaper: the same gradient without running every step twice.

What is exact: everything, with the almost-everywhere derivative of the piecewise-linear parts
(the l_inf clamp, the l2 rescale's branch and the [0, 1] clip pass gradient where not clipped).
'sgd' (normalised gradient) and 'adam' are smooth in x; 'sign' has zero derivative almost
everywhere, so its exact gradient keeps only the projection terms (use 'sgd', the default, for
attacks). Gradients are w.r.t. the input images only (the denoiser's parameters get none).
:func:`lm_bpda` is the BPDA alternative: the LM output forward, the identity backward.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..core.choices import LM_GRAPH_MODES
from ..core.utils import check_images
from ..models.base import Denoiser
from .lm import LMConfig, LMNoise, likelihood_maximization, lm_step, run_lm

__all__ = ["LM_GRAPH_MODES", "LM_UNROLL_MAX_ELEMENTS", "lm_bpda", "lm_exact", "lm_unrolls"]


class _LMRecompute(torch.autograd.Function):
    """x (B, C, H, W) -> LM(x), backward by per-step recomputation (see module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, sigma: Tensor, eps: Tensor, denoiser: Denoiser, cfg: LMConfig) -> Tensor:
        noise = LMNoise(sigma, eps)
        iterates, states, _ = run_lm(denoiser, x.detach(), noise, cfg, keep_states=True)
        flat_states = [torch.stack([s[i] for s in states]) for i in range(cfg.state_size)]
        ctx.save_for_backward(torch.stack(iterates), sigma, eps, *flat_states)
        ctx.denoiser, ctx.cfg = denoiser, cfg
        return iterates[-1].clone()

    @staticmethod
    @once_differentiable  # the recomputed step graphs are not themselves differentiated again
    def backward(ctx, grad_out: Tensor):
        iterates, sigma, eps, *flat_states = ctx.saved_tensors
        denoiser, cfg = ctx.denoiser, ctx.cfg
        x0 = iterates[0]
        cot_x = grad_out
        cot_state = [torch.zeros_like(x0) for _ in range(cfg.state_size)]
        cot_x0 = torch.zeros_like(x0)
        for k in reversed(range(cfg.steps)):
            with torch.enable_grad():
                xk = iterates[k].detach().requires_grad_(True)
                center = x0.detach().requires_grad_(True)
                state = tuple(s[k].detach().requires_grad_(True) for s in flat_states)
                x_next, state_next, _ = lm_step(
                    denoiser, xk, center, sigma[k], eps[k], cfg, state, k, create_graph=True
                )
                grads = torch.autograd.grad(
                    (x_next, *state_next), (xk, center, *state), (cot_x, *cot_state), allow_unused=True
                )
            grads = [torch.zeros_like(x0) if g is None else g for g in grads]
            cot_x, cot_x0 = grads[0], cot_x0 + grads[1]
            cot_state = grads[2:]
        return cot_x0 + cot_x, None, None, None, None


def _checked(denoiser: Denoiser, x: Tensor, noise: LMNoise, cfg: LMConfig) -> LMNoise:
    check_images(x, channels=denoiser.img_channels, resolution=denoiser.img_resolution)
    return noise.check(x, cfg.steps)


# input elements x LM steps up to which ``lm_graph="auto"`` keeps the unrolled graph (digits: a batch of
# up to 204 images at N = 5; CIFAR-10: up to 4 images); above it the per-step recomputation bounds memory
LM_UNROLL_MAX_ELEMENTS = 2**16


def lm_unrolls(x: Tensor, cfg: LMConfig, lm_graph: Literal["auto", "recompute", "unroll"] = "auto") -> bool:
    """Whether :func:`lm_exact` with ``lm_graph`` keeps the unrolled graph for input x (B, C, H, W)."""
    if lm_graph not in LM_GRAPH_MODES:
        raise ValueError(f"unknown lm_graph {lm_graph!r}; valid choices: {', '.join(LM_GRAPH_MODES)}")
    if lm_graph == "auto":
        return x.numel() * cfg.steps <= LM_UNROLL_MAX_ELEMENTS
    return lm_graph == "unroll"


def lm_exact(
    denoiser: Denoiser,
    x: Tensor,
    noise: LMNoise,
    cfg: LMConfig | None = None,
    *,
    lm_graph: Literal["auto", "recompute", "unroll"] = "recompute",
) -> Tensor:
    """LM(x) (B, C, H, W) in [0, 1] whose backward is the exact gradient.

    ``noise`` (:class:`rdc_lib.diffusion.lm.LMNoise`) is replayed in the backward pass. ``lm_graph``:
    'recompute' (default) rebuilds one step at a time in the backward, memory independent of N;
    'unroll' keeps the forward's second-order graph of all N steps (memory linear in N, but each
    step's forward and first-order gradient run once instead of twice); 'auto' unrolls small inputs
    (:data:`LM_UNROLL_MAX_ELEMENTS`). All three give the same gradient.
    """
    cfg = cfg or LMConfig()
    noise = _checked(denoiser, x, noise, cfg)
    if cfg.steps == 0:
        return x
    if lm_unrolls(x, cfg, lm_graph):
        return likelihood_maximization(denoiser, x, noise=noise, config=cfg, create_graph=True).x
    return _LMRecompute.apply(x, noise.sigma.contiguous(), noise.eps.contiguous(), denoiser, cfg)


def lm_bpda(denoiser: Denoiser, x: Tensor, noise: LMNoise, cfg: LMConfig | None = None) -> Tensor:
    """LM(x) forward, identity backward (BPDA, docs/paper.md section 4)."""
    cfg = cfg or LMConfig()
    noise = _checked(denoiser, x, noise, cfg)
    x_hat = likelihood_maximization(denoiser, x.detach(), noise=noise, config=cfg).x
    return x + (x_hat - x).detach()
