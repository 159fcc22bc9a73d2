import pytest
import torch

from rdc_lib.core.choices import GRID_KINDS as GRIDS
from rdc_lib.core.choices import GRID_WEIGHTINGS as WEIGHTINGS
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.diffusion.elbo import elbo_terms
from rdc_lib.diffusion.schedules import lognormal_density
from rdc_lib.models import load_denoiser

from .conftest import tiny_denoiser


@pytest.mark.parametrize("kind", GRIDS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_grids(kind, weighting):
    g = make_grid(16, kind, weighting=weighting)
    assert g.sigmas.shape == g.weights.shape == (16,)
    assert (g.sigmas > 0).all() and (g.weights >= 0).all() and torch.isfinite(g.weights).all()


def test_paper_grid_matches_spec():
    g = make_grid(1000, "paper")
    assert g.sigmas[0].item() == pytest.approx(1e-4) and g.sigmas[-1].item() == pytest.approx(3 - 3 / 1000, rel=1e-4)


def test_lognormal_density_integrates_to_one():
    s = torch.linspace(1e-5, 60, 400001, dtype=torch.float64)
    assert torch.trapezoid(lognormal_density(s), s).item() == pytest.approx(1.0, abs=1e-3)


def test_grid_validation():
    with pytest.raises(ValueError, match="T"):
        make_grid(0)
    with pytest.raises(ValueError, match="valid choices"):
        make_grid(8, "cosine")
    with pytest.raises(ValueError, match="valid choices"):
        make_grid(8, weighting="snr")


def test_elbo_chunked_equals_unchunked(heads):
    net = tiny_denoiser(heads)
    x = torch.rand(3, 1, 8, 8)
    grid = make_grid(6)
    noise = torch.randn(3, 1, 6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = elbo_terms(net, x, grid, noise=noise, chunk_size=1)
    b = elbo_terms(net, x, grid, noise=noise, chunk_size=10**6)
    assert a.shape == (3, 10, 6) and torch.allclose(a, b, atol=1e-6)


def test_single_and_multi_head_paths_agree_for_shared_noise():
    """The shared-noise batched path equals a per-class loop through forward()."""
    net = tiny_denoiser("single")
    x = torch.rand(2, 1, 8, 8)
    grid = make_grid(4)
    noise = torch.randn(2, 1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fast = elbo_terms(net, x, grid, noise=noise)
    per_class = elbo_terms(net, x, grid, noise=noise.expand(2, 10, 4, 1, 8, 8).contiguous(), shared_noise=False)
    assert torch.allclose(fast, per_class, atol=1e-6)


def test_classifier_batched_equals_per_image(heads):
    dc = DiffusionClassifier(tiny_denoiser(heads), make_grid(5), noise_mode="fixed")
    x = torch.rand(4, 1, 8, 8)
    together = dc(x)
    alone = torch.cat([dc(x[i : i + 1]) for i in range(4)])
    assert together.shape == (4, 10) and torch.allclose(together, alone, atol=1e-5)


def test_noise_modes_and_global_rng_untouched():
    x = torch.rand(2, 1, 8, 8)
    fixed = DiffusionClassifier(tiny_denoiser(), make_grid(4), noise_mode="fixed", seed=3)
    stoch = DiffusionClassifier(tiny_denoiser(), make_grid(4), noise_mode="stochastic", seed=3)
    state = torch.get_rng_state()
    assert torch.equal(fixed(x), fixed(x))
    first, second = stoch(x), stoch(x)
    assert not torch.equal(first, second)
    stoch.reseed(3)
    assert torch.equal(stoch(x), first)
    assert torch.equal(state, torch.get_rng_state())


def test_prior_adds_log_prior():
    net = tiny_denoiser()
    x = torch.rand(2, 1, 8, 8)
    prior = torch.tensor([0.5] + [0.5 / 9] * 9)
    a = DiffusionClassifier(net, make_grid(4), noise_mode="fixed")(x)
    b = DiffusionClassifier(net, make_grid(4), noise_mode="fixed", prior=prior)(x)
    assert torch.allclose(b - a, prior.log() - torch.full((10,), 0.1).log(), atol=1e-5)
    with pytest.raises(ValueError, match="summing to 1"):
        DiffusionClassifier(net, prior=torch.ones(10))


def test_chunked_gradient_equals_autograd(heads):
    net = tiny_denoiser(heads, dtype=torch.float64)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    dc = DiffusionClassifier(net, make_grid(7), noise_mode="fixed", chunk_size=5)
    w = torch.randn(3, 10, dtype=torch.float64)
    (g_chunk,) = torch.autograd.grad((dc(x) * w).sum(), x)
    dc.backward_mode = "autograd"
    (g_plain,) = torch.autograd.grad((dc(x) * w).sum(), x)
    assert ((g_chunk - g_plain).norm() / g_plain.norm()).item() < 1e-5


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 8, 8), "4 dims"),
        (torch.rand(2, 3, 8, 8), "channels"),
        (torch.rand(2, 1, 16, 16), "spatial size"),
        (torch.randint(0, 2, (2, 1, 8, 8)), "floating-point"),
        (torch.rand(2, 1, 8, 8) * 2, r"expected images in \[0.0, 1.0\]"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
    ],
)
def test_bad_inputs(bad, match):
    dc = DiffusionClassifier(tiny_denoiser(), make_grid(2))
    with pytest.raises(ValueError, match=match):
        dc(bad)


def test_bad_settings():
    with pytest.raises(ValueError, match="valid choices"):
        DiffusionClassifier(tiny_denoiser(), noise_mode="random")
    with pytest.raises(ValueError, match="valid choices"):
        DiffusionClassifier(tiny_denoiser(), backward_mode="magic")


def test_shipped_checkpoint_classifies_digits():
    """A real check of the trained model: 60 test digits, T = 8, multi-head."""
    x, y = load_dataset("digits", "test")
    dc = DiffusionClassifier(load_denoiser(checkpoint_path("digits_multi")), make_grid(8), noise_mode="fixed")
    with torch.no_grad():
        acc = (dc(x[:60]).argmax(1) == y[:60]).float().mean().item()
    assert acc >= 0.9


def test_bayes_posterior_undoes_the_per_pixel_temperature():
    from rdc_lib.defenses.classifier import bayes_posterior

    per_pixel = torch.tensor([[-0.50, -0.53, -0.56]])  # -L: a per-pixel mean, gaps of hundredths
    flat = per_pixel.softmax(-1)
    sharp = bayes_posterior(per_pixel, 64)
    assert flat.max() < 0.36  # the tempered posterior is nearly uniform
    assert sharp[0, 0] > 0.8 and torch.allclose(sharp, (per_pixel * 64).softmax(-1))
    assert torch.equal(sharp.argmax(-1), flat.argmax(-1))  # the decision does not depend on the scale
    log_prior = torch.tensor([0.2, 0.3, 0.5]).log()
    with_prior = bayes_posterior(per_pixel + log_prior, 64, log_prior)  # the prior is counted once, unscaled
    assert torch.allclose(with_prior, (per_pixel * 64 + log_prior).softmax(-1), atol=1e-6)
    with pytest.raises(ValueError, match="pixels must be the number of values per image"):
        bayes_posterior(per_pixel, 0)


def test_classifier_posterior_uses_its_prior_and_image_size():
    den = tiny_denoiser("multi")
    prior = torch.tensor([0.5] + [0.5 / (den.num_classes - 1)] * (den.num_classes - 1))
    dc = DiffusionClassifier(den, make_grid(4), prior=prior, noise_mode="fixed")
    logits = torch.randn(2, den.num_classes)
    d = den.img_channels * den.img_resolution**2
    expected = ((logits - prior.log()) * d + prior.log()).softmax(-1)
    assert torch.allclose(dc.posterior(logits), expected, atol=1e-6)
