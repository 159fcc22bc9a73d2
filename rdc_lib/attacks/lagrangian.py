"""The Lagrangian ("adaptive") attack on likelihood maximization (docs/paper.md section 4).

LM pulls an input towards high likelihood under the defense's unconditional diffusion model, which can
undo an adversarial perturbation that made the image unlikely. The Lagrangian attack anticipates this: it
maximises the classification loss while keeping the adversarial image likely, by ascending

    J(x') = L_cls(f(x'), y) - lam * L_diff(x'),
    L_diff(x') = E_{sigma ~ U(sigma_range), eps ~ N(0, I)} mean_pixels (D(u + sigma eps; sigma, null) - u)^2,
    u = 2 x' - 1 (model space),

L_diff being LM's own objective (:func:`rdc_lib.diffusion.lm.unconditional_loss`; the target u is not detached, as
in LM). Every gradient step estimates L_diff and its input gradient with ``diffusion_draws`` fresh draws of
(sigma, eps) from the attack's generator (the default sigma range is LM's, (0.4, 0.6)); L_cls and its
gradient come from the usual EOT forward through the defense. The paper reports that this attack was no
stronger than BPDA-AutoAttack [secondary]; offering it lets that claim be measured.

Conventions:

- ``lam = 0`` never calls the denoiser nor draws its noise: the attack is then exactly the plain PGD/APGD
  with the same seed.
- Denoiser passes are not model queries: ``AttackResult.queries`` counts defense calls only; each gradient
  step additionally costs ``diffusion_draws`` denoiser forward+backward passes per active example.
- The recorded loss history is the objective J (classification loss minus lam * L_diff).
- The denoiser is put in eval mode during the attack (its modes are restored afterwards).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..core.utils import check_images
from ..diffusion.lm import unconditional_loss
from ..models.base import Denoiser
from .apgd import APGD
from .base import AttackContext, Model, eval_mode
from .losses import LossFn
from .pgd import PGD
from .selective_eot import ContextView

__all__ = [
    "LagrangianAPGD",
    "LagrangianContext",
    "LagrangianPGD",
    "diffusion_loss_grad",
    "expected_unconditional_loss",
]

_LM_SIGMA_RANGE = (0.4, 0.6)


def _check_setup(denoiser: Any, lam: float, sigma_range: tuple[float, float], draws: int, attack: str) -> None:
    if denoiser is None:
        raise ValueError(
            f"{attack} needs denoiser=, the defense's diffusion model whose unconditional loss it "
            "penalises (for an RDC: denoiser=rdc.denoiser)"
        )
    if not callable(denoiser):
        raise ValueError(f"denoiser must be a Denoiser, callable D(x, sigma, labels), got {type(denoiser).__name__}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (weight of the diffusion loss) must be a finite number >= 0, got {lam!r}")
    rng = tuple(sigma_range)
    if len(rng) != 2 or not 0 < rng[0] <= rng[1] or not math.isfinite(rng[1]):
        raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo <= hi, got {sigma_range!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"diffusion_draws must be an int >= 1, got {draws!r}")


def diffusion_loss_grad(denoiser: Denoiser, x: Tensor, sigma: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Unconditional diffusion loss (n,) and its input gradient (n, C, H, W), averaged over J draws.

    x (n, C, H, W) in [0, 1]; sigma (J, n) > 0 in model space; eps (J, n, C, H, W) standard normal.
    """
    j, n = sigma.shape
    with torch.enable_grad():
        xr = x.detach().repeat(j, 1, 1, 1).requires_grad_(True)
        losses = unconditional_loss(denoiser, xr, sigma.reshape(-1), eps.reshape(j * n, *x.shape[1:]))
        (grad,) = torch.autograd.grad(losses.sum(), xr)
    return losses.detach().reshape(j, n).mean(0), grad.reshape(j, n, *x.shape[1:]).mean(0)


@torch.no_grad()
def expected_unconditional_loss(
    denoiser: Denoiser,
    x: Tensor,
    *,
    draws: int = 16,
    sigma_range: tuple[float, float] = _LM_SIGMA_RANGE,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo estimate (B,) of L_diff(x) with ``draws`` (sigma, eps) pairs per image.

    Draws sigma (draws, B) first, then eps (draws, B, C, H, W), from ``generator`` (on its device), so two
    batches of the same shape measured with equally seeded generators share their noise (common random
    numbers: the difference between them has low variance).
    """
    check_images(x)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an int >= 1, got {draws!r}")
    _check_setup(denoiser, 0.0, sigma_range, 1, "expected_unconditional_loss")
    device = generator.device if generator is not None else x.device
    lo, hi = sigma_range
    sigma = lo + (hi - lo) * torch.rand((draws, x.shape[0]), generator=generator, device=device, dtype=x.dtype)
    eps = torch.randn((draws, *x.shape), generator=generator, device=device, dtype=x.dtype)
    sigma, eps = sigma.to(x.device), eps.to(x.device)
    total = x.new_zeros(x.shape[0])
    with eval_mode(denoiser):
        for d in range(draws):
            total += unconditional_loss(denoiser, x, sigma[d], eps[d])
    return total / draws


class LagrangianContext(ContextView):
    """A context whose objective is L_cls - lam * L_diff (see the module docstring)."""

    def __init__(
        self,
        base: AttackContext,
        *,
        denoiser: Denoiser,
        lam: float,
        sigma_range: tuple[float, float] = _LM_SIGMA_RANGE,
        diffusion_draws: int = 1,
    ):
        super().__init__(base)
        _check_setup(denoiser, lam, sigma_range, diffusion_draws, "LagrangianContext")
        self.denoiser = denoiser
        self.lam = float(lam)
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.diffusion_draws = diffusion_draws

    def loss_grad(
        self, idx: Tensor, x_cand: Tensor, loss_fn: LossFn, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """J (n,) and dJ/dx (n, C, H, W) at ``x_cand``; the classification part is averaged over EOT draws."""
        loss, grad = self.base.loss_grad(idx, x_cand, loss_fn, target)
        if self.lam == 0:
            return loss, grad
        lo, hi = self.sigma_range
        n = x_cand.shape[0]
        sigma = lo + (hi - lo) * self.base.rand(self.diffusion_draws, n)
        eps = self.base.randn(self.diffusion_draws, *x_cand.shape)
        l_diff, g_diff = diffusion_loss_grad(self.denoiser, x_cand, sigma, eps)
        objective = loss - self.lam * l_diff.to(loss.dtype)
        self.base.history[-1] = float(objective.mean())
        return objective, grad - self.lam * g_diff.to(grad.dtype)


def _check_shape(denoiser: Any, x: Tensor) -> None:
    check_images(
        x,
        channels=getattr(denoiser, "img_channels", None),
        resolution=getattr(denoiser, "img_resolution", None),
        name="x (checked against the denoiser)",
    )


class _Lagrangian:
    """Mixin over PGD or APGD: the attack runs on a :class:`LagrangianContext` of the call's context."""

    def __init__(
        self,
        model: Model,
        *,
        denoiser: Denoiser,
        lam: float = 1.0,
        sigma_range: tuple[float, float] = _LM_SIGMA_RANGE,
        diffusion_draws: int = 1,
        **attack_kwargs: Any,
    ):
        _check_setup(denoiser, lam, sigma_range, diffusion_draws, type(self).__name__)
        super().__init__(model, **attack_kwargs)  # type: ignore[call-arg]  # the PGD or APGD of the class
        self.denoiser, self.lam = denoiser, float(lam)
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.diffusion_draws = diffusion_draws

    def _perturb(self, ctx: AttackContext, idx: Tensor) -> None:
        _check_shape(self.denoiser, ctx.x)
        view = LagrangianContext(
            ctx,
            denoiser=self.denoiser,
            lam=self.lam,
            sigma_range=self.sigma_range,
            diffusion_draws=self.diffusion_draws,
        )
        with eval_mode(self.denoiser):
            super()._perturb(view, idx)  # type: ignore[misc]  # a view quacks like an AttackContext

    def _repr_extra(self) -> str:
        return f", lam={self.lam:g}, sigma_range={self.sigma_range}, diffusion_draws={self.diffusion_draws}"


class LagrangianPGD(_Lagrangian, PGD):
    """PGD on L_cls(f(x'), y) - lam * L_diff(x'): the adaptive attack against likelihood maximization.

    Distance Measure : Linf, L2

    Arguments, besides those of :class:`PGD` (model, the budget keywords, step_size, loss, random_start):
        denoiser: the defense's diffusion model (its null label gives L_diff); required.
        lam: weight of the diffusion loss, >= 0 (0: plain PGD).
        sigma_range: sigma ~ U(lo, hi) (model space) of the L_diff estimate; default LM's (0.4, 0.6).
        diffusion_draws: (sigma, eps) draws per gradient step for the L_diff estimate.

    Shape:
        - x: (B, C, H, W) in [0, 1], the denoiser's channels and resolution; y: (B,) int64.
        - output: (B, C, H, W) in [0, 1], within the eps-ball.

    Examples::
        >>> attack = LagrangianPGD(rdc, denoiser=rdc.denoiser, lam=1.0, eps=8 / 255, steps=100, seed=0)
        >>> x_adv = attack(x, y)
    """


class LagrangianAPGD(_Lagrangian, APGD):
    """APGD (Croce & Hein 2020) on L_cls - lam * L_diff; arguments as :class:`APGD` plus ``denoiser``,
    ``lam``, ``sigma_range`` and ``diffusion_draws`` (see :class:`LagrangianPGD`).

    Examples::
        >>> x_adv = LagrangianAPGD(rdc, denoiser=rdc.denoiser, lam=1.0, eps=8 / 255, loss="dlr", seed=0)(x, y)
    """

    @property
    def name(self) -> str:
        return f"Lagrangian-{super().name}"
