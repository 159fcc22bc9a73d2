"""DiffPure baseline and the samplers behind it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdc_lib.defenses.purify import DiffPure
from rdc_lib.diffusion.sampling import euler_sde, heun_ode, karras_sigmas
from rdc_lib.models.config import DenoiserConfig, build_denoiser

from .conftest import TINY_BACKBONE

torch.set_num_threads(1)

TINY = dict(TINY_BACKBONE)


@pytest.fixture(scope="module")
def den():
    torch.manual_seed(0)  # test-only: builds weights
    net = build_denoiser(DenoiserConfig(heads="single", backbone=TINY)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 64, 10)).eval()


class GaussianDenoiser(nn.Module):
    """The optimal denoiser for data x0 ~ N(0, c^2 I): D(x; sigma) = c^2 / (c^2 + sigma^2) x."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, sigma, labels=None):
        return (self.c**2 / (self.c**2 + sigma**2)).reshape(-1, 1, 1, 1) * x


def images(b=3, seed=0):
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_karras_sigmas():
    s = karras_sigmas(10, 0.002, 0.5)
    assert s.shape == (11,) and s[-1] == 0
    assert abs(float(s[0]) - 0.5) < 1e-12 and abs(float(s[-2]) - 0.002) < 1e-12
    assert (s[1:] < s[:-1]).all()
    with pytest.raises(ValueError):
        karras_sigmas(0, 0.002, 0.5)


def test_heun_ode_solves_gaussian_flow():
    # the probability-flow ODE for N(0, c^2) data scales x by sqrt(c^2 + sigma^2): from sigma_T to 0
    c, s_t = 0.5, 2.0
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = x_t * c / (c**2 + s_t**2) ** 0.5
    errors = []
    for n in (20, 40):
        out = heun_ode(GaussianDenoiser(c), x_t, karras_sigmas(n, 0.002, s_t))
        errors.append(float((out / expected - 1).abs().max()))
    assert errors[1] < 3e-3
    assert 3.0 < errors[0] / errors[1] < 5.0  # second-order convergence (Heun)


def test_euler_sde_samples_gaussian():
    c, s_t = 0.5, 1.0
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(64, 1, 8, 8, generator=g, dtype=torch.float64) * (c**2 + s_t**2) ** 0.5
    out = euler_sde(GaussianDenoiser(c), x_t, karras_sigmas(40, 0.002, s_t), generator=g)
    assert abs(float(out.std()) - c) < 0.05 * c and abs(float(out.mean())) < 0.05
    steps = []
    euler_sde(GaussianDenoiser(c), x_t, karras_sigmas(3, 0.002, s_t), generator=g, callback=steps.append)
    assert [s["i"] for s in steps] == [0, 1, 2]
    with pytest.raises(ValueError, match="noise must have shape"):
        euler_sde(GaussianDenoiser(c), x_t, karras_sigmas(3, 0.002, s_t), noise=torch.zeros(2, 64, 1, 8, 8))


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_shapes_range_and_determinism(den, cnn, mode):
    x = images()
    fixed = DiffPure(den, cnn, steps=3, mode=mode, noise_mode="fixed", seed=1)
    pur = fixed.purify(x)
    assert pur.shape == x.shape and pur.min() >= 0 and pur.max() <= 1
    assert fixed(x).shape == (3, 10)
    assert torch.equal(fixed.purify(x), pur)
    for i in range(3):  # fixed randomness is shared by the batch: per-image results
        assert torch.allclose(fixed.purify(x[i : i + 1]), pur[i : i + 1], atol=1e-5)
    stoch = DiffPure(den, cnn, steps=3, mode=mode, seed=1)
    assert not torch.equal(stoch.purify(x), stoch.purify(x))
    assert torch.equal(
        DiffPure(den, cnn, steps=3, mode=mode, seed=2).purify(x),
        DiffPure(den, cnn, steps=3, mode=mode, seed=2).purify(x),
    )
    assert fixed.network_passes(3) == 3 * (5 if mode == "ode" else 3)


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_gradients_flow_and_checkpoint_matches(den, cnn, mode):
    x = images(2)
    y = torch.tensor([3, 5])
    grads = []
    for ckpt in (False, True):
        model = DiffPure(den, cnn, steps=3, mode=mode, noise_mode="fixed", checkpoint=ckpt)
        xg = x.clone().requires_grad_(True)
        state = torch.get_rng_state()
        loss = nn.functional.cross_entropy(model(xg), y)
        (g,) = torch.autograd.grad(loss, xg)
        assert torch.equal(state, torch.get_rng_state())
        grads.append(g)
    assert torch.isfinite(grads[0]).all() and (grads[0].flatten(1).abs().sum(1) > 0).all()
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_validation(den, cnn):
    with pytest.raises(ValueError, match="ode, sde"):
        DiffPure(den, cnn, mode="ddim")
    with pytest.raises(ValueError, match="steps"):
        DiffPure(den, cnn, steps=0)
    with pytest.raises(ValueError, match="t_star_sigma"):
        DiffPure(den, cnn, t_star_sigma=0.0)
    with pytest.raises(ValueError, match="expected images in"):
        DiffPure(den, cnn).purify(images(1) * 2)


def test_bpda_mode_backpropagates_the_classifier_gradient_at_the_purified_point(den, cnn):
    x = images(3).requires_grad_(True)
    exact = DiffPure(den, cnn, noise_mode="fixed", steps=3)
    approx = DiffPure(den, cnn, noise_mode="fixed", steps=3, grad_mode="bpda")
    assert torch.allclose(exact(x), approx(x))  # same forward
    (g_bpda,) = torch.autograd.grad(approx(x).sum(), x)
    x_pur = exact.purify(x.detach()).requires_grad_(True)
    (g_cls,) = torch.autograd.grad(cnn(x_pur).sum(), x_pur)
    assert torch.allclose(g_bpda, g_cls, atol=1e-6)  # identity through purification
    (g_exact,) = torch.autograd.grad(exact(x).sum(), x)
    assert not torch.allclose(g_exact, g_bpda)


def test_bad_grad_mode_is_refused(den, cnn):
    from rdc_lib.defenses import DefenseSpec

    with pytest.raises(ValueError, match="valid choices: exact, bpda"):
        DiffPure(den, cnn, grad_mode="straight-through")
    with pytest.raises(ValueError, match="valid choices with bpda: rdc, diffpure"):
        DefenseSpec(name="dc", grad_mode="bpda")
