"""Norm balls for l_inf and l2 threat models on images in [0, 1].

Every function works per example: norms are taken over (C, H, W) and returned with shape (B, 1, 1, 1),
so any batch size (1 included) broadcasts correctly.
"""

from __future__ import annotations

from torch import Tensor

from ..core.choices import NORMS

__all__ = [
    "NORMS",
    "check_norm",
    "clip01",
    "per_example_norm",
    "normalize",
    "steepest_direction",
    "project",
    "project_ball",
]

_TINY = 1e-12


def check_norm(norm: str) -> str:
    """Return ``norm`` if it is a supported threat model, else raise ``ValueError`` listing the choices."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid choices: {', '.join(NORMS)}")
    return norm


def clip01(x: Tensor) -> Tensor:
    """Clamp images to the valid range [0, 1]."""
    return x.clamp(0.0, 1.0)


def per_example_norm(t: Tensor, norm: str) -> Tensor:
    """||t_b|| over all non-batch dims, shape (B, 1, ..., 1) (same rank as ``t``)."""
    check_norm(norm)
    flat = t.reshape(t.shape[0], -1)
    value = flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)
    return value.reshape((t.shape[0],) + (1,) * (t.ndim - 1))


def normalize(t: Tensor) -> Tensor:
    """t_b / ||t_b||_2 per example (zero rows stay zero)."""
    return t / (per_example_norm(t, "l2") + _TINY)


def steepest_direction(grad: Tensor, norm: str) -> Tensor:
    """Unit-norm steepest ascent direction for ``grad``: sign(g) for l_inf, g / ||g||_2 for l2."""
    check_norm(norm)
    return grad.sign() if norm == "linf" else normalize(grad)


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """Euclidean projection of perturbations ``delta`` (B, ...) onto the ``norm`` ball of radius ``eps``."""
    check_norm(norm)
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / (per_example_norm(delta, "l2") + _TINY)).clamp(max=1.0)
    return delta * scale


def project_ball(x_adv: Tensor, x: Tensor, norm: str, eps: float) -> Tensor:
    """Project ``x_adv`` onto {x' in [0, 1] : ||x' - x|| <= eps}.

    Projects the perturbation onto the ball, then clips to [0, 1]. For x in [0, 1] the clip only shrinks
    each coordinate of the perturbation towards 0, so the result stays inside the ball for both norms.
    """
    return clip01(x + project(x_adv - x, norm, eps))
