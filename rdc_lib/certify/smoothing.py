"""Cohen et al. (2019) randomized smoothing: CERTIFY and PREDICT for any base classifier.

The smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I) in pixel space.
CERTIFY draws ``n0`` selection samples to guess the top class c_A, then ``n`` fresh estimation samples
to count how often f returns c_A; the one-sided (1 - alpha) Clopper-Pearson lower bound p_A_lower on
P(f(x + delta) = c_A) gives, when p_A_lower > 1/2, the certified l2 radius sigma * Phi^-1(p_A_lower):
with probability >= 1 - alpha over the draws, g(x + d) = c_A for every ||d||_2 < radius. Otherwise
the certificate abstains. Draws are made ``draw_batch`` at a time (per base call) from a ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
from torch import Tensor

ABSTAIN = -1


class BaseClassifier(Protocol):
    """f: noisy images (B, C, H, W) (pixel space, unbounded) -> logits (B, K)."""

    num_classes: int

    def __call__(self, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Certificate:
    prediction: int  # c_A, or ABSTAIN (-1)
    radius: float  # certified l2 radius in pixel space; 0.0 when abstaining
    p_lower: float  # Clopper-Pearson lower bound on p_A
    count: int  # estimation draws that returned the selected class
    n: int  # estimation draws
    n0: int  # selection draws
    selected: int  # the class selected by the n0 draws (kept when abstaining)

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def as_dict(self) -> dict:
        return asdict(self)


def check_sigma(sigma: float) -> float:
    if not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma (smoothing noise std, pixel space) must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: float) -> float:
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha (failure probability of the certificate) must be in (0, 1), got {alpha!r}")
    return float(alpha)


def check_radii(radii) -> list[float]:
    """A non-empty list of finite radii >= 0 (pixel-space l2), returned sorted."""
    vals = [float(r) for r in radii]
    if not vals:
        raise ValueError("radii must be a non-empty list of l2 radii >= 0 (pixel space), got []")
    bad = [r for r in vals if not math.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"radii must be finite and >= 0 (pixel-space l2 radii), got {bad} in {vals}")
    return sorted(vals)


def min_draws(alpha: float) -> int:
    """Smallest n for which n/n successes give p_A_lower = alpha^(1/n) > 1/2 (a non-zero radius)."""
    check_alpha(alpha)
    return math.floor(math.log2(1 / alpha)) + 1


def check_draws(n0: int, n: int, alpha: float) -> None:
    if not isinstance(n0, int) or n0 < 1:
        raise ValueError(f"n0 (selection draws) must be an int >= 1, got {n0!r}")
    need = min_draws(alpha)
    if not isinstance(n, int) or n < need:
        raise ValueError(
            f"n = {n!r} estimation draws can never certify a non-zero radius at alpha = {alpha}: "
            f"even n/n successes give p_A_lower = alpha^(1/n) <= 1/2; need n >= {need}"
        )


def clopper_pearson_lower(count: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial p from ``count`` of ``n``."""
    from scipy.stats import beta  # heavy (scipy.stats, ~1 s): only the certified bound needs it

    check_alpha(alpha)
    if not 0 <= count <= n or n < 1:
        raise ValueError(f"need 0 <= count <= n and n >= 1, got count={count}, n={n}")
    return 0.0 if count == 0 else float(beta.ppf(alpha, count, n - count + 1))


def norm_ppf(p: float) -> float:
    """Phi^-1(p) for p in (0, 1)."""
    return math.sqrt(2) * float(torch.special.erfinv(torch.tensor(2 * p - 1, dtype=torch.float64)))


@torch.no_grad()
def sample_counts(
    base: BaseClassifier, x: Tensor, sigma: float, num: int, *, generator: torch.Generator, draw_batch: int = 256
) -> Tensor:
    """Class counts (K,) of f(x + sigma * delta) over ``num`` draws; x (C, H, W) in [0, 1].

    Draws are processed ``draw_batch`` at a time (memory-bounded); delta comes from ``generator``.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be one image (C, H, W), got shape {tuple(x.shape)}")
    if draw_batch < 1:
        raise ValueError(f"draw_batch must be >= 1, got {draw_batch}")
    counts = torch.zeros(base.num_classes, dtype=torch.long)
    done = 0
    while done < num:
        b = min(draw_batch, num - done)
        noise = torch.randn((b, *x.shape), generator=generator, device=generator.device, dtype=x.dtype)
        preds = base(x.unsqueeze(0) + sigma * noise.to(x.device)).argmax(1).cpu()
        counts += torch.bincount(preds, minlength=base.num_classes)
        done += b
    return counts


@dataclass(frozen=True)
class Smoothed:
    """The smoothed classifier g of a base classifier f: pixel-space noise ``sigma`` (> 0), draws from
    ``generator``, ``draw_batch`` draws per base call (memory-bounded)."""

    base: BaseClassifier
    sigma: float
    generator: torch.Generator
    draw_batch: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_sigma(self.sigma))

    def counts(self, x: Tensor, num: int) -> Tensor:
        """Class counts (K,) of f(x + sigma * delta) over ``num`` fresh draws; x (C, H, W) in [0, 1]."""
        return sample_counts(self.base, x, self.sigma, num, generator=self.generator, draw_batch=self.draw_batch)


def certify(g: Smoothed, x: Tensor, *, n0: int = 100, n: int = 1000, alpha: float = 0.001) -> Certificate:
    """Cohen et al.'s CERTIFY for one image x (C, H, W) in [0, 1]: ``n0`` selection draws, ``n`` estimation
    draws, failure probability ``alpha``; radius in pixel-space l2."""
    alpha = check_alpha(alpha)
    check_draws(n0, n, alpha)
    selected = int(g.counts(x, n0).argmax())
    count = int(g.counts(x, n)[selected])
    p_lower = clopper_pearson_lower(count, n, alpha)
    if p_lower <= 0.5:
        return Certificate(ABSTAIN, 0.0, p_lower, count, n, n0, selected)
    return Certificate(selected, g.sigma * norm_ppf(p_lower), p_lower, count, n, n0, selected)


def predict(g: Smoothed, x: Tensor, *, n: int = 100, alpha: float = 0.001) -> int:
    """Cohen et al.'s PREDICT: the top class of ``n`` draws if a two-sided binomial test against the runner-up
    passes at level ``alpha``, else ABSTAIN."""
    from scipy.stats import binomtest  # heavy (scipy.stats, ~1 s): only the abstain test needs it

    alpha = check_alpha(alpha)
    counts = g.counts(x, n)
    top2 = counts.topk(2)
    n_a, n_b = int(top2.values[0]), int(top2.values[1])
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(top2.indices[0])
