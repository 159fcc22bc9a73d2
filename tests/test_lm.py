"""Likelihood maximization: constraints, determinism, batching, validation, and that it lowers the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rdc_lib.data import load_dataset
from rdc_lib.diffusion.lm import (
    LMConfig,
    LMDivergenceError,
    LMNoise,
    draw_lm_noise,
    likelihood_maximization,
    unconditional_loss,
)
from rdc_lib.diffusion.loss import edm_loss
from rdc_lib.models.checkpoints import load_denoiser
from rdc_lib.models.config import DenoiserConfig, build_denoiser

from .conftest import TINY_BACKBONE

torch.set_num_threads(1)

TINY = dict(TINY_BACKBONE)


def tiny_denoiser(seed: int = 0, scale: float = 0.1):
    """Random tiny denoiser; the zero-initialised layers are perturbed so the network is not trivial."""
    torch.manual_seed(seed)  # test-only: builds weights
    den = build_denoiser(DenoiserConfig(heads="single", backbone=TINY)).eval()
    with torch.no_grad():
        for p in den.parameters():
            p.add_(scale * torch.randn_like(p))
    return den


@pytest.fixture(scope="module")
def den():
    return tiny_denoiser()


@pytest.fixture(scope="module")
def trained():
    """A tiny denoiser trained for 80 steps on digits (label dropout 0.5, so the null label learns)."""
    torch.manual_seed(0)
    net = build_denoiser(DenoiserConfig(heads="single", backbone=TINY))
    x, y = load_dataset("digits", "train")
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(80):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = edm_loss(net, x[idx] * 2 - 1, y[idx], generator=g, label_dropout=0.5).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def images(b: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g)


@pytest.mark.parametrize("norm,eta", [("linf", 8 / 255), ("linf", 0.1), ("l2", 0.3), ("l2", 0.0)])
@pytest.mark.parametrize("optimizer", ["sgd", "sign", "adam"])
def test_projection_and_range(den, norm, eta, optimizer):
    x = images(5)
    x[0] = 0.0  # saturated images exercise the [0, 1] clip
    x[1] = 1.0
    g = torch.Generator().manual_seed(1)
    r = likelihood_maximization(
        den, x, steps=4, eta=eta, norm=norm, optimizer=optimizer, step_size=0.3, generator=g, return_trajectory=True
    )
    assert r.x.shape == x.shape and r.trajectory.shape == (5, 5, 1, 8, 8) and r.losses.shape == (4, 5)
    assert r.x.min() >= 0 and r.x.max() <= 1
    delta = (r.trajectory - x).flatten(2)
    dist = delta.abs().amax(2) if norm == "linf" else delta.norm(dim=2)
    assert (dist <= eta + 1e-6).all()
    assert torch.allclose(r.distance, dist[-1], atol=1e-6)
    if eta > 0:
        assert (r.x != x).any(), "LM should move the images"
    if norm == "linf":
        lo, hi = r.bounds
        assert (r.x >= lo - 1e-7).all() and (r.x <= hi + 1e-7).all()
    else:
        assert r.bounds is None


def test_steps_zero_returns_input(den):
    x = images(3)
    r = likelihood_maximization(den, x, steps=0, return_trajectory=True)
    assert torch.equal(r.x, x)
    assert r.trajectory.shape == (1, 3, 1, 8, 8) and r.losses.shape == (0, 3)


def test_paper_step_units(den):
    """A sign step of step_size 0.1 (model space) moves pixels by 0.05 in [0, 1] when the ball allows it."""
    x = torch.full((2, 1, 8, 8), 0.5)
    r = likelihood_maximization(
        den, x, steps=1, step_size=0.1, eta=1.0, optimizer="sign", generator=torch.Generator().manual_seed(0)
    )
    moved = (r.x - x).abs()
    assert torch.allclose(moved[moved > 0], torch.tensor(0.05), atol=1e-6)
    r = likelihood_maximization(
        den, x, steps=1, step_size=0.1, eta=1.0, optimizer="sgd", generator=torch.Generator().manual_seed(0)
    )
    rms = (r.x - x).pow(2).flatten(1).mean(1).sqrt()
    assert torch.allclose(rms, torch.full((2,), 0.05), atol=1e-5)  # normalised step: RMS = step_size / 2


def test_default_config_is_paper():
    cfg = LMConfig()
    assert (cfg.steps, cfg.step_size, cfg.eta, cfg.norm, cfg.sigma_range) == (5, 0.03, 8 / 255, "linf", (0.4, 0.6))
    assert cfg.optimizer == "sgd"


def test_adam_matches_torch_adam(den):
    """optimizer='adam' equals torch.optim.Adam on the model-space image, projected after each step."""
    x = images(3).double()
    den64 = tiny_denoiser().double()
    cfg = LMConfig(steps=4, step_size=0.05, eta=0.2, optimizer="adam")
    noise = draw_lm_noise(4, tuple(x.shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = likelihood_maximization(den64, x, noise=noise, config=cfg).x
    p = (x * 2 - 1).clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.05)
    for k in range(4):
        loss = unconditional_loss(den64, (p + 1) / 2, noise.sigma[k], noise.eps[k]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            xp = (p + 1) / 2
            xp = (x + (xp - x).clamp(-0.2, 0.2)).clamp(0, 1)
            p.copy_(xp * 2 - 1)
    assert torch.allclose(ours, (p.detach() + 1) / 2, atol=1e-6)


SHIPPED = Path(__file__).resolve().parents[1] / "data" / "checkpoints" / "digits_single.safetensors"


@pytest.mark.parametrize("which", ["tiny-trained"] + (["shipped"] if SHIPPED.exists() else []))
def test_loss_decreases_on_trained_denoiser(which, request):
    trained = request.getfixturevalue("trained") if which == "tiny-trained" else load_denoiser(SHIPPED).eval()
    xt, _ = load_dataset("digits", "test")
    g = torch.Generator().manual_seed(0)
    x = (xt[:12] + 0.15 * torch.randn(xt[:12].shape, generator=g)).clamp(0, 1)
    # the paper's config reaches the small ball's boundary after one step, then moves along it;
    # a wider ball shows the descent step by step
    for cfg, ratio, down in ((LMConfig(), 0.97, 0.0), (LMConfig(steps=6, eta=0.2, step_size=0.05), 0.9, 0.8)):
        r = likelihood_maximization(trained, x, config=cfg, generator=g, return_trajectory=True)
        # every iterate scored with the same 16 fresh noise draws (common random numbers)
        ev = draw_lm_noise(16, (12, 1, 8, 8), generator=g)
        n_it = r.trajectory.shape[0]
        flat = r.trajectory.unsqueeze(1).expand(n_it, 16, 12, 1, 8, 8).reshape(-1, 1, 8, 8)
        with torch.no_grad():
            loss = unconditional_loss(
                trained,
                flat,
                ev.sigma.repeat(n_it, 1).reshape(-1),
                ev.eps.repeat(n_it, 1, 1, 1, 1).reshape(-1, 1, 8, 8),
            )
        per_iter = loss.reshape(n_it, 16, 12).mean(1)  # (N + 1, B)
        assert per_iter[-1].mean() < ratio * per_iter[0].mean()
        assert (per_iter[-1] < per_iter[0]).float().mean() >= 0.9
        steps_down = (per_iter[1:].mean(1) < per_iter[:-1].mean(1)).float().mean()
        assert steps_down >= down  # fraction of steps that lower the batch-mean loss


def test_nan_raises_naming_step(den):
    class NaNAfter(torch.nn.Module):
        """Wraps a denoiser and returns NaN from the k-th call on."""

        def __init__(self, inner, k):
            super().__init__()
            self.inner, self.k, self.calls = inner, k, 0
            self.img_channels, self.img_resolution = 1, 8

        def forward(self, x, sigma, labels=None):
            out = self.inner(x, sigma, labels)
            self.calls += 1
            return out * float("nan") if self.calls > self.k else out

    with pytest.raises(LMDivergenceError, match="at step 2") as info:
        likelihood_maximization(NaNAfter(den, 2), images(2), steps=5, generator=torch.Generator().manual_seed(0))
    assert info.value.step == 2 and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=-1), "steps"),
        (dict(eta=-0.1), "eta"),
        (dict(step_size=0.0), "step_size"),
        (dict(sigma_range=(0.0, 0.5)), "sigma_range"),
        (dict(sigma_range=(0.6, 0.4)), "sigma_range"),
        (dict(norm="l1"), "linf, l2"),
        (dict(optimizer="lbfgs"), "sgd, sign, adam"),
    ],
)
def test_bad_settings_raise(den, kwargs, match):
    with pytest.raises(ValueError, match=match):
        likelihood_maximization(den, images(1), **kwargs)
    with pytest.raises(ValueError, match=match):
        LMConfig(**kwargs)


def test_bad_input_and_noise_raise(den):
    with pytest.raises(ValueError, match="expected images in"):
        likelihood_maximization(den, images(2) * 3)
    with pytest.raises(ValueError, match="noise.sigma"):
        likelihood_maximization(
            den, images(2), steps=2, noise=LMNoise(torch.full((3, 2), 0.5), torch.zeros(3, 2, 1, 8, 8))
        )
    with pytest.raises(ValueError, match="noise.eps"):
        likelihood_maximization(
            den, images(2), steps=2, noise=LMNoise(torch.full((2, 2), 0.5), torch.zeros(2, 2, 1, 4, 4))
        )


def test_determinism_with_generator(den):
    x = images(3)
    a = likelihood_maximization(den, x, generator=torch.Generator().manual_seed(7)).x
    b = likelihood_maximization(den, x, generator=torch.Generator().manual_seed(7)).x
    c = likelihood_maximization(den, x, generator=torch.Generator().manual_seed(8)).x
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the same draw passed explicitly replays the run
    noise = draw_lm_noise(5, tuple(x.shape), generator=torch.Generator().manual_seed(7))
    assert torch.equal(likelihood_maximization(den, x, noise=noise).x, a)


def test_global_rng_untouched(den):
    state = torch.get_rng_state()
    likelihood_maximization(den, images(2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_batch_one_vs_batch_five(den, optimizer, norm):
    x = images(5)
    cfg = LMConfig(steps=3, optimizer=optimizer, norm=norm, eta=0.1 if norm == "linf" else 0.5)
    noise = draw_lm_noise(3, tuple(x.shape), generator=torch.Generator().manual_seed(3))
    batched = likelihood_maximization(den, x, noise=noise, config=cfg).x
    for i in range(5):
        single = likelihood_maximization(
            den, x[i : i + 1], noise=LMNoise(noise.sigma[:, i : i + 1], noise.eps[:, i : i + 1]), config=cfg
        ).x
        assert torch.allclose(single, batched[i : i + 1], atol=1e-5)
    # a batch-1 noise is shared by every image
    shared = LMNoise(noise.sigma[:, :1], noise.eps[:, :1])
    out = likelihood_maximization(den, x[:1].expand(3, -1, -1, -1), noise=shared, config=cfg).x
    assert torch.allclose(out[0], out[2])


def test_callback_and_target_not_detached(den):
    seen = []
    likelihood_maximization(den, images(2), steps=3, callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [s["i"] for s in seen] == [0, 1, 2] and seen[0]["loss"].shape == (2,)
    # the loss gradient includes the MSE target's term: compare with a detached-target version
    x = images(2).requires_grad_(True)
    sigma, eps = torch.full((2,), 0.5), torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(unconditional_loss(den, x, sigma, eps).sum(), x)
    xm = x * 2 - 1
    detached = (den(xm + 0.5 * eps, sigma, None) - xm.detach()).pow(2).flatten(1).mean(1)
    (g_det,) = torch.autograd.grad(detached.sum(), x)
    assert not torch.allclose(g, g_det)
