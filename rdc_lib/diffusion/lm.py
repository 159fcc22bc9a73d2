"""Likelihood maximization (LM), the purification step of RDC (docs/paper.md section 4).

Starting from images x in [0, 1], LM takes N gradient steps that lower the *unconditional*
diffusion loss

    L(x_hat) = E_{sigma, eps} mean_pixels (D(x_hat' + sigma eps; sigma, null) - x_hat')^2,
    x_hat' = 2 x_hat - 1 (model space),

with one sigma ~ U(sigma_range) and one eps ~ N(0, I) per step and per image, and after each step
projects onto the eta-ball around the input (l_inf or l2, per image) and clips to [0, 1].

Decisions (each a parameter; the defaults are the paper's settings except the step size, below):

- **Target not detached.** The loss is differentiated through both the denoiser input and the MSE
  target x_hat', as in the paper's objective and the reference code.
- **Units.** ``eta`` is in [0, 1] pixel units (the threat model's). ``step_size`` is in model-space
  units, as in the reference (Adam, lr 0.1 on 2x - 1 images: 5 steps can move a pixel 0.5 in model
  space = 64/255 in pixels). A 'sign' step therefore moves every pixel by step_size / 2 in [0, 1].
- **Optimizers.** 'sign': x -= step_size sign(g). 'sgd': normalised gradient descent,
  x -= step_size g / rms(g) per image (rms over pixels), so each step has the same per-pixel RMS
  size as a sign step or the reference's first Adam step. 'adam': Adam (betas 0.9, 0.999,
  eps 1e-8, bias-corrected) on the model-space image, state carried across projections.
- **Default 'sgd' with step 0.03.** The paper's 0.1 is Adam's learning rate. A normalised-gradient
  step of 0.1 (0.05 per pixel in [0, 1]) already overshoots the 8/255 ball in one step, and the
  later steps then oscillate on its boundary: on 60 digits test images the estimated log-likelihood
  bound (unconditional ELBO on a fixed grid) went -0.3750 -> -0.3406 -> -0.3426 -> -0.3413 -> -0.3409
  -> -0.3407, not monotone; Adam (lr 0.1, the reference's) rose monotonically to -0.3364; 'sgd' with
  step 0.03 rose monotonically to -0.3347, the highest (benchmarks/timing/bench_rdc.py). So the default is
  'sgd' with 0.03 (about 4/255 per pixel per step, 5 steps, eta 8/255 l_inf). Unlike 'sign' (zero derivative almost
  everywhere) or 'adam' (whose first step g / (|g| + eps) is a smoothed sign with derivative ~eps / |g|) it is twice
  differentiable in x, so exact gradients through LM (rdc_lib.diffusion.lm_grad)
  carry the second-order information instead of masking it.
- **Projection.** l_inf: clamp the perturbation to [-eta, eta]; l2: rescale it to norm <= eta;
  then clip to [0, 1] (clipping never leaves the ball, since the centre is inside [0, 1]^d).
  Their derivatives are the exact almost-everywhere ones (gradient passes where not clipped).
- **Randomness** comes only from ``generator`` or an explicit ``noise`` (:class:`LMNoise`), so the
  same draw can be replayed (exact gradients, fixed randomness known to the attacker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.choices import LM_ETA, LM_NORMS, LM_OPTIMIZERS, LM_STEP_SIZE, LM_STEPS
from ..core.utils import check_images
from ..models.base import Denoiser

__all__ = [
    "LM_NORMS",
    "LM_OPTIMIZERS",
    "LMConfig",
    "LMDivergenceError",
    "LMNoise",
    "LMResult",
    "draw_lm_noise",
    "initial_state",
    "likelihood_maximization",
    "lm_step",
    "project",
    "run_lm",
    "unconditional_loss",
]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_TINY = 1e-20  # keeps rms(g) and ||delta|| away from 0 (smoothly)


class LMDivergenceError(ValueError):
    """A NaN or inf appeared during likelihood maximization; ``step`` is the 0-based step index."""

    def __init__(self, step: int, what: str):
        super().__init__(
            f"likelihood maximization produced non-finite values ({what}) at step {step}; "
            "check the denoiser, the input and the step size"
        )
        self.step = step


@dataclass(frozen=True)
class LMConfig:
    """Settings of likelihood maximization (defaults: the paper's, docs/paper.md section 4)."""

    steps: int = LM_STEPS  # N gradient steps
    step_size: float = LM_STEP_SIZE  # model-space units (see module docstring)
    eta: float = LM_ETA  # ball radius in [0, 1] pixel units
    norm: Literal["linf", "l2"] = "linf"  # ball of the projection
    sigma_range: tuple[float, float] = (0.4, 0.6)  # sigma ~ U(lo, hi) per step, model space
    optimizer: Literal["sgd", "sign", "adam"] = "sgd"  # 'sgd' = normalised gradient steps

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {self.steps!r}")
        if not self.step_size > 0:
            raise ValueError(f"step_size must be > 0, got {self.step_size!r}")
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if self.norm not in LM_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid choices: {', '.join(LM_NORMS)}")
        if self.optimizer not in LM_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(LM_OPTIMIZERS)}")
        rng = tuple(self.sigma_range)
        if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
            raise ValueError(f"sigma_range must be (lo, hi) with 0 < lo <= hi, got {self.sigma_range!r}")
        object.__setattr__(self, "sigma_range", (float(rng[0]), float(rng[1])))

    def kwargs(self) -> dict:
        """The settings as keyword arguments of :func:`likelihood_maximization`."""
        return asdict(self)

    @property
    def state_size(self) -> int:
        """Optimizer state tensors carried between steps (Adam: m and v)."""
        return 2 if self.optimizer == "adam" else 0


@dataclass
class LMNoise:
    """The randomness of one LM run: ``sigma`` (N, B or 1) and ``eps`` (N, B or 1, C, H, W).

    A batch dimension of 1 is shared by every image. ``draw_lm_noise`` draws sigma first, then eps.
    """

    sigma: Tensor
    eps: Tensor

    @property
    def steps(self) -> int:
        return self.sigma.shape[0]

    def check(self, x: Tensor, steps: int) -> "LMNoise":
        """Validate against images x (B, C, H, W) and N = ``steps``; returns self broadcast to batch B."""
        b = x.shape[0]
        if self.sigma.ndim != 2 or self.sigma.shape[0] != steps or self.sigma.shape[1] not in (1, b):
            raise ValueError(f"noise.sigma must have shape (N={steps}, B={b} or 1), got {tuple(self.sigma.shape)}")
        if self.eps.shape[0] != steps or self.eps.shape[1] not in (1, b) or self.eps.shape[2:] != x.shape[1:]:
            raise ValueError(
                f"noise.eps must have shape (N={steps}, B={b} or 1, {', '.join(map(str, x.shape[1:]))}), "
                f"got {tuple(self.eps.shape)}"
            )
        if not (self.sigma > 0).all():
            raise ValueError("noise.sigma must be > 0")
        sigma = self.sigma.to(x.device, x.dtype).expand(steps, b)
        eps = self.eps.to(x.device, x.dtype).expand(steps, b, *x.shape[1:])
        return LMNoise(sigma, eps)


@dataclass
class LMResult:
    """Output of :func:`likelihood_maximization`.

    x: (B, C, H, W) optimized images in [0, 1]. distance: (B,) ||x - input|| in the LM norm.
    losses: (N, B) the unconditional loss at iterate k with step k's sigma and eps.
    trajectory: (N + 1, B, C, H, W) iterates, input first (if requested).
    bounds: (lower, upper) (B, C, H, W) feasible box for norm 'linf' (ball intersected with [0, 1]),
    None for 'l2'.
    """

    x: Tensor
    distance: Tensor
    losses: Tensor
    trajectory: Tensor | None = None
    bounds: tuple[Tensor, Tensor] | None = None


def draw_lm_noise(
    steps: int,
    shape: tuple[int, ...],
    sigma_range: tuple[float, float] = (0.4, 0.6),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LMNoise:
    """sigma (N, B) ~ U(sigma_range), then eps (N, B, C, H, W) ~ N(0, I); ``shape`` = (B, C, H, W)."""
    lo, hi = sigma_range
    batch = shape[0]
    u = torch.rand((steps, batch), generator=generator, device=device, dtype=dtype)
    eps = torch.randn((steps, *shape), generator=generator, device=device, dtype=dtype)
    return LMNoise(lo + (hi - lo) * u, eps)


def unconditional_loss(denoiser: Denoiser, x: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Per-image loss (B,): mean_pixels (D(x' + sigma eps; sigma, null) - x')^2, x' = 2x - 1.

    x (B, C, H, W) in [0, 1]; sigma (B,); eps (B, C, H, W). The target x' is not detached.
    """
    xm = x * 2 - 1
    noisy = xm + sigma.reshape(-1, 1, 1, 1) * eps
    den = denoiser(noisy, sigma, None)
    return (den - xm).pow(2).flatten(1).mean(1)


def _direction(cfg: LMConfig, g: Tensor, state: tuple[Tensor, ...], k: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Descent direction from the model-space gradient g (B, C, H, W) and the optimizer state."""
    if cfg.optimizer == "sign":
        return g.sign(), state
    if cfg.optimizer == "sgd":
        rms = (g.pow(2).flatten(1).mean(1) + _TINY).sqrt()
        return g / rms.reshape(-1, 1, 1, 1), state
    b1, b2 = _ADAM_BETAS
    m, v = state
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t = k + 1
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    # + _TINY inside the root keeps its derivative finite where a pixel's gradient is exactly 0
    return m_hat / ((v_hat + _TINY).sqrt() + _ADAM_EPS), (m, v)


def project(x: Tensor, x0: Tensor, eta: float, norm: str) -> Tensor:
    """Project x onto {||x - x0|| <= eta} (per image, l_inf or l2), then clip to [0, 1]."""
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eta, eta)
    else:
        n = (delta.pow(2).flatten(1).sum(1) + _TINY).sqrt()
        scale = torch.where(n > eta, eta / n, torch.ones_like(n))
        delta = delta * scale.reshape(-1, 1, 1, 1)
    return (x0 + delta).clamp(0.0, 1.0)


def lm_step(
    denoiser: Denoiser,
    xk: Tensor,
    x0: Tensor,
    sigma: Tensor,
    eps: Tensor,
    cfg: LMConfig,
    state: tuple[Tensor, ...],
    k: int,
    *,
    create_graph: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor]:
    """One LM step k: (x_{k+1}, state_{k+1}, loss_k (B,)). Images in [0, 1], sigma (B,), eps like x.

    With ``create_graph`` the result is differentiable w.r.t. xk, x0 and state (second order);
    otherwise xk is treated as a fresh leaf and the result carries no graph.
    """
    with torch.enable_grad():
        if not create_graph or not xk.requires_grad:
            xk = xk.detach().requires_grad_(True)
        loss = unconditional_loss(denoiser, xk, sigma, eps)
        (g_pix,) = torch.autograd.grad(loss.sum(), xk, create_graph=create_graph)
    g = g_pix / 2  # gradient w.r.t. the model-space image x' = 2x - 1
    d, state = _direction(cfg, g, state, k)
    x_next = project(xk - (cfg.step_size / 2) * d, x0, cfg.eta, cfg.norm)
    if not create_graph:
        x_next, loss = x_next.detach(), loss.detach()
        state = tuple(s.detach() for s in state)
    return x_next, state, loss


def initial_state(cfg: LMConfig, x: Tensor) -> tuple[Tensor, ...]:
    """Optimizer state before step 0: () or Adam's (m, v) zeros like x."""
    return tuple(torch.zeros_like(x) for _ in range(cfg.state_size))


def run_lm(
    denoiser: Denoiser,
    x: Tensor,
    noise: LMNoise,
    cfg: LMConfig,
    *,
    create_graph: bool = False,
    callback: Callable[[dict], None] | None = None,
    keep_states: bool = False,
) -> tuple[list[Tensor], list[tuple[Tensor, ...]], list[Tensor]]:
    """Run the N steps with a checked ``noise``: (iterates [N + 1], states [N + 1 or 0], losses [N]).

    Raises :class:`LMDivergenceError` naming the step where a NaN/inf first appears.
    """
    xk, state = x, initial_state(cfg, x)
    iterates, states, losses = [x], [state] if keep_states else [], []
    for k in range(cfg.steps):
        x_next, state, loss = lm_step(
            denoiser, xk, x, noise.sigma[k], noise.eps[k], cfg, state, k, create_graph=create_graph
        )
        if not bool(torch.isfinite(loss).all()):
            raise LMDivergenceError(k, "loss")
        if not bool(torch.isfinite(x_next).all()) or not all(bool(torch.isfinite(s).all()) for s in state):
            raise LMDivergenceError(k, "gradient step")
        if callback is not None:
            callback(
                {"i": k, "x": xk.detach(), "x_next": x_next.detach(), "loss": loss.detach(), "sigma": noise.sigma[k]}
            )
        iterates.append(x_next)
        losses.append(loss)
        if keep_states:
            states.append(state)
        xk = x_next
    return iterates, states, losses


def _distance(x: Tensor, x0: Tensor, norm: str) -> Tensor:
    d = (x - x0).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.pow(2).sum(1).sqrt()


def likelihood_maximization(
    denoiser: Denoiser,
    x: Tensor,  # (B, C, H, W) in [0, 1]
    *,
    steps: int = LM_STEPS,
    step_size: float = LM_STEP_SIZE,
    eta: float = LM_ETA,
    norm: Literal["linf", "l2"] = "linf",
    sigma_range: tuple[float, float] = (0.4, 0.6),
    optimizer: Literal["sgd", "sign", "adam"] = "sgd",
    generator: torch.Generator | None = None,
    noise: LMNoise | None = None,  # replayed randomness; drawn from generator if None
    callback: Callable[[dict], None] | None = None,  # called after each step with {i, x, x_next, loss, sigma}
    create_graph: bool = False,  # keep the unrolled graph (memory grows with N)
    return_trajectory: bool = False,
    config: LMConfig | None = None,  # overrides the individual settings
) -> LMResult:
    """Likelihood maximization (docs/paper.md section 4): returns :class:`LMResult`.

    ``create_graph=False`` returns images with no autograd graph; ``True`` keeps the plain unrolled
    graph (second order, memory linear in N: the reference for rdc_lib.diffusion.lm_grad.lm_exact, which gives
    the same gradient at memory independent of N).
    """
    cfg = config if config is not None else LMConfig(steps, step_size, eta, norm, tuple(sigma_range), optimizer)
    if denoiser is None or not callable(denoiser):
        raise ValueError("denoiser must be a Denoiser (callable D(x, sigma, labels))")
    check_images(
        x, channels=getattr(denoiser, "img_channels", None), resolution=getattr(denoiser, "img_resolution", None)
    )
    if noise is None:
        noise = draw_lm_noise(
            cfg.steps, tuple(x.shape), cfg.sigma_range, generator=generator, device=x.device, dtype=x.dtype
        )
    noise = noise.check(x, cfg.steps)
    x0 = x if create_graph else x.detach()
    iterates, _, losses = run_lm(denoiser, x0, noise, cfg, create_graph=create_graph, callback=callback)
    out = iterates[-1]
    bounds = None
    if cfg.norm == "linf":
        xd = x.detach()
        bounds = ((xd - cfg.eta).clamp(0.0, 1.0), (xd + cfg.eta).clamp(0.0, 1.0))
    return LMResult(
        x=out,
        distance=_distance(out.detach(), x.detach(), cfg.norm),
        trajectory=torch.stack([t.detach() for t in iterates]) if return_trajectory else None,
        losses=torch.stack([l.detach() for l in losses]) if losses else x.new_zeros((0, x.shape[0])),
        bounds=bounds,
    )
