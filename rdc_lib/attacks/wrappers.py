"""Gradient wrappers for adaptive attacks: BPDA and Expectation over Transformation.

- :class:`BPDA` (Athalye et al. 2018, https://arxiv.org/abs/1802.00420): run a non-differentiable or
  expensive stage g exactly in the forward pass, and back-propagate through a differentiable
  approximation h (the identity by default, h(x) = x, so dL/dx := dL/dg(x)).
- :class:`EOT`: a model whose logits are the mean over ``draws`` evaluations of a stochastic model, in one
  batched forward (the attacks also take ``eot=`` directly; this wrapper is for evaluating or for
  attacks written elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["BPDA", "EOT", "bpda"]


class _BPDAFunction(torch.autograd.Function):
    """forward: g(x) without a graph; backward: vector-Jacobian product of h at x (identity if h is None)."""

    @staticmethod
    def forward(ctx, x: Tensor, forward_fn: Callable[[Tensor], Tensor], backward_fn: Callable[[Tensor], Tensor] | None):
        with torch.no_grad():
            out = forward_fn(x)
        if backward_fn is None and out.shape != x.shape:
            raise ValueError(
                f"identity BPDA needs forward_fn to keep the shape, got {tuple(x.shape)} -> {tuple(out.shape)}; "
                "pass backward_fn, a differentiable approximation with the same output shape"
            )
        ctx.save_for_backward(x)
        ctx.backward_fn = backward_fn
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        if ctx.backward_fn is None:
            return grad_out, None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            approx = ctx.backward_fn(xx)
            (grad_x,) = torch.autograd.grad(approx, xx, grad_out)
        return grad_x, None, None


def bpda(
    x: Tensor, forward_fn: Callable[[Tensor], Tensor], backward_fn: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """forward_fn(x) whose gradient is that of ``backward_fn`` (identity when None)."""
    return _BPDAFunction.apply(x, forward_fn, backward_fn)


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation around one stage.

    Arguments:
        forward_fn: the stage run in the forward pass (any callable; no graph is kept).
        backward_fn: a differentiable approximation used for the backward pass; None = identity
            (then ``forward_fn`` must keep the input shape).

    Shape:
        - x: any tensor accepted by ``forward_fn``; output: ``forward_fn(x)``.

    Examples::
        >>> purify = BPDA(lambda x: likelihood_maximization(denoiser, x).x)   # identity backward
        >>> model = nn.Sequential(purify, diffusion_classifier)
    """

    def __init__(self, forward_fn: Callable[[Tensor], Tensor], backward_fn: Callable[[Tensor], Tensor] | None = None):
        super().__init__()
        if not callable(forward_fn) or (backward_fn is not None and not callable(backward_fn)):
            raise ValueError("forward_fn (and backward_fn, if given) must be callables tensor -> tensor")
        self.forward_fn = forward_fn
        self.backward_fn = backward_fn

    def forward(self, x: Tensor) -> Tensor:
        return bpda(x, self.forward_fn, self.backward_fn)


class EOT(nn.Module):
    """Mean logits of a stochastic model over ``draws`` copies of the batch, in one batched forward.

    Shape:
        - x: (B, C, H, W); output: (B, K) = mean_d model(x)[d-th copy].
    """

    def __init__(self, model: Callable[[Tensor], Tensor], draws: int):
        super().__init__()
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be an int >= 1, got {draws!r}")
        self.model = model
        self.draws = draws

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        logits = self.model(x.repeat(self.draws, *([1] * (x.ndim - 1))))
        return logits.reshape(self.draws, b, *logits.shape[1:]).mean(dim=0)
