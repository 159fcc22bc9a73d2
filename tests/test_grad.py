"""Exact LM gradients by recomputation, memory bound, and the gradient health checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdc_lib.diffusion.lm import LMConfig, draw_lm_noise, likelihood_maximization
from rdc_lib.diffusion.lm_grad import lm_bpda, lm_exact
from rdc_lib.evaluation.grad import (
    GradientCosine,
    SavedTensorMeter,
    check_gradients_finite_nonzero,
    finite_difference_check,
    gradient_cosine_similarity,
    model_parameters,
    suggest_eot,
)
from rdc_lib.models.config import DenoiserConfig, build_denoiser

from .conftest import TINY_BACKBONE

torch.set_num_threads(1)

TINY = dict(TINY_BACKBONE)


@pytest.fixture(scope="module")
def den64():
    torch.manual_seed(0)  # test-only: builds weights
    den = build_denoiser(DenoiserConfig(heads="single", backbone=TINY)).double().eval()
    with torch.no_grad():
        for p in den.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return den


def images(b: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g, dtype=dtype) * 0.8 + 0.1


def unrolled_vjp(den, x, noise, cfg, v):
    xa = x.clone().requires_grad_(True)
    out = likelihood_maximization(den, xa, noise=noise, config=cfg, create_graph=True).x
    (g,) = torch.autograd.grad((out * v).sum(), xa)
    return out.detach(), g


def exact_vjp(den, x, noise, cfg, v):
    xb = x.clone().requires_grad_(True)
    out = lm_exact(den, xb, noise, cfg)
    (g,) = torch.autograd.grad((out * v).sum(), xb)
    return out.detach(), g


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "sign"])
@pytest.mark.parametrize("norm,eta", [("linf", 0.1), ("linf", 8 / 255), ("l2", 0.5)])
def test_recompute_equals_unrolled_autograd(den64, optimizer, norm, eta):
    x = images(3)
    cfg = LMConfig(steps=3, optimizer=optimizer, norm=norm, eta=eta)
    g = torch.Generator().manual_seed(1)
    noise = draw_lm_noise(3, tuple(x.shape), generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    out_a, grad_a = unrolled_vjp(den64, x, noise, cfg, v)
    out_b, grad_b = exact_vjp(den64, x, noise, cfg, v)
    assert torch.allclose(out_a, out_b, rtol=0, atol=1e-12)  # same forward (kernels may round differently)
    assert grad_a.norm() > 0
    assert (grad_a - grad_b).norm() <= 1e-5 * grad_a.norm()
    if optimizer != "sign":  # the second-order term is present: not the BPDA identity
        assert not torch.allclose(grad_b, v)


def test_exact_gradient_matches_finite_differences(den64):
    x = images(2, seed=3)
    cfg = LMConfig(steps=5, eta=0.1)
    g = torch.Generator().manual_seed(2)
    noise = draw_lm_noise(5, tuple(x.shape), generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    _, grad = exact_vjp(den64, x, noise, cfg, v)

    def f(z):
        with torch.no_grad():
            return (likelihood_maximization(den64, z, noise=noise, config=cfg).x * v).sum()

    for _ in range(3):
        d = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-6
        fd = (f(x + h * d) - f(x - h * d)) / (2 * h)
        ad = (grad * d).sum()
        assert abs(fd - ad) <= 1e-4 * abs(ad) + 1e-8


def test_bpda_is_identity(den64):
    x = images(2).requires_grad_(True)
    noise = draw_lm_noise(5, tuple(x.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = lm_bpda(den64, x, noise)
    ref = likelihood_maximization(den64, x.detach(), noise=noise).x
    assert torch.equal(out.detach(), ref)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (g,) = torch.autograd.grad((out * v).sum(), x)
    assert torch.equal(g, v)


def test_exact_steps_zero_and_param_free(den64):
    x = images(2).requires_grad_(True)
    noise = draw_lm_noise(0, tuple(x.shape), dtype=torch.float64)
    assert lm_exact(den64, x, noise, LMConfig(steps=0)) is x
    with pytest.raises(ValueError, match="noise.sigma"):
        lm_exact(den64, x, noise, LMConfig(steps=2))


def peak_saved_bytes(den, x, steps, exact):
    cfg = LMConfig(steps=steps)
    noise = draw_lm_noise(steps, tuple(x.shape), generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    xg = x.clone().requires_grad_(True)
    with SavedTensorMeter(exclude=model_parameters(den)) as meter:
        if exact:
            out = lm_exact(den, xg, noise, cfg)
        else:
            out = likelihood_maximization(den, xg, noise=noise, config=cfg, create_graph=True).x
        out.sum().backward()
    return meter.peak_bytes


def test_memory_does_not_grow_with_steps(den64):
    x = images(4)
    exact = {n: peak_saved_bytes(den64, x, n, True) for n in (1, 5)}
    unrolled = {n: peak_saved_bytes(den64, x, n, False) for n in (1, 5)}
    assert exact[1] > 0
    assert exact[5] <= 1.5 * exact[1]
    assert unrolled[5] >= 3 * unrolled[1]  # the meter does see growth when there is some


def test_saved_tensor_meter_releases():
    w = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (w * w).sum()  # saves w twice: one storage, 400 bytes
        assert meter.live_bytes == 400
        y.backward()
    assert meter.live_bytes == 0 and meter.peak_bytes == 400


# ----------------------------------------------------------------------------- health checks


class Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(64, 10).double()

    def forward(self, x):
        return self.lin(torch.tanh(3 * x.flatten(1)))


class Rounded(Smooth):
    def forward(self, x):
        return super().forward(torch.round(x * 8) / 8)  # derivative 0 almost everywhere


class NoGraph(Smooth):
    def forward(self, x):
        return super().forward(x.detach())


class NaNGrad(Smooth):
    def forward(self, x):
        return super().forward(x) + (x * 0).sqrt().flatten(1)[:, :10]  # d sqrt(0) = inf -> NaN


class StraightThrough(Smooth):
    def forward(self, x):
        return super().forward(x + (x**2 - x).detach())  # forward x^2, backward identity (BPDA)


class Noisy(Smooth):
    """Stochastic: a fresh random mask per call from its own generator."""

    def __init__(self, keep: float):
        super().__init__()
        self.keep, self.gen = keep, torch.Generator().manual_seed(0)

    def forward(self, x):
        mask = (torch.rand(x.shape, generator=self.gen, dtype=x.dtype) < self.keep).to(x.dtype)
        return super().forward(x * mask)


def xy():
    return images(4, seed=5), torch.tensor([0, 3, 7, 9])


def test_health_passes_on_smooth_model():
    x, y = xy()
    h = check_gradients_finite_nonzero(Smooth(), x, y)
    assert h.passed and h.has_graph and h.message == "ok" and (h.grad_norm > 0).all()
    fd = finite_difference_check(Smooth(), x, y, n_directions=3, eps=1e-5, generator=torch.Generator().manual_seed(0))
    assert fd.passed and fd.rel_error.shape == (3, 4) and fd.max_rel_error < 1e-6
    fd_m = finite_difference_check(Smooth(), x, y, loss="margin", eps=1e-5)
    assert fd_m.passed


@pytest.mark.parametrize("model,text", [(Rounded(), "all-zero"), (NoGraph(), "no graph"), (NaNGrad(), "non-finite")])
def test_health_fails_on_broken_gradients(model, text):
    x, y = xy()
    h = check_gradients_finite_nonzero(model, x, y)
    assert not h.passed and text in h.message


def test_finite_differences_catch_bpda():
    x, y = xy()
    assert check_gradients_finite_nonzero(StraightThrough(), x, y).passed  # gradients look healthy...
    fd = finite_difference_check(StraightThrough(), x, y, eps=1e-5)
    assert not fd.passed and fd.max_rel_error > 0.1  # ...but are not the derivative of the forward
    with pytest.raises(ValueError, match="ce, margin"):
        finite_difference_check(Smooth(), x, y, loss="hinge")


def test_cosine_and_eot():
    x, y = xy()
    det = gradient_cosine_similarity(Smooth(), x, y, n_samples=3)
    assert isinstance(det, GradientCosine) and det.pairwise.shape == (4, 3)
    assert torch.allclose(det.per_example, torch.ones(4, dtype=det.per_example.dtype), atol=1e-6)
    assert suggest_eot(det).eot == 1
    noisy = gradient_cosine_similarity(Noisy(0.5), x, y, n_samples=4)
    assert noisy.mean < 0.95
    noisier = gradient_cosine_similarity(Noisy(0.1), x, y, n_samples=4)
    assert noisier.mean < noisy.mean
    assert suggest_eot(noisier).eot > suggest_eot(noisy).eot > 1


def test_suggest_eot_rule():
    # c = 0.5, target 0.9: M = 9 * (0.5 / 0.5) = 9; averaging 9 draws gives c_M = 1 / (1 + 1/9) = 0.9
    assert suggest_eot(0.5).eot == 9
    assert suggest_eot(torch.tensor([0.95, 0.99])).eot == 1
    s = suggest_eot(-0.1, max_eot=64)
    assert s.eot == 64 and s.capped
    assert suggest_eot(1e-6, max_eot=64).capped
    assert suggest_eot(torch.tensor([0.2, 0.9, 0.9, 0.9]), quantile=0.0).cosine == pytest.approx(0.2)
    with pytest.raises(ValueError, match="target"):
        suggest_eot(0.5, target=1.5)
