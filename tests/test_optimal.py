"""The closed-form optimal denoiser and the theory measurements (docs/paper.md section 6)."""

from __future__ import annotations

import math

import pytest
import torch

from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.experiments.nearest_neighbour import nearest_neighbour_agreement, nearest_neighbour_predict
from rdc_lib.experiments.theory import denoiser_error_by_sigma, gap_by_sigma, optimal_classifier
from rdc_lib.models import DenoiserConfig, build_denoiser
from rdc_lib.models.optimal import OptimalDenoiser

SIGMAS = [1e-4, 1e-2, 0.3, 1.0, 3.0, 100.0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    """24 random 1x4x4 training images in [0, 1] over 3 unbalanced classes, float64."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 4, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 0] * 4)
    return images, labels


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


def brute_force(images, labels, x, sigma, label, num_classes):
    """Plain Python loop over the training images: weights exp(-|x - x_i|^2 / 2 sigma^2), weighted mean."""
    train = [img.reshape(-1) * 2 - 1 for img in images]
    xf = x.reshape(-1)
    members = [i for i in range(len(train)) if label == num_classes or int(labels[i]) == label]
    logw = [-float(((xf - train[i]) ** 2).sum()) / (2 * sigma**2) for i in members]
    top = max(logw)
    w = [math.exp(v - top) for v in logw]
    total = sum(w)
    out = torch.zeros_like(xf)
    for wi, i in zip(w, members):
        out += wi / total * train[i]
    return out.reshape(x.shape)


# ---- exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
def test_matches_brute_force(toy, sigma):
    images, labels = toy
    den = OptimalDenoiser(images, labels)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64) * 0.7
    every = den.denoise_all(x, torch.full((5,), sigma, dtype=torch.float64), torch.arange(4))
    for b in range(5):
        for label in range(4):  # 3 classes + null
            ref = brute_force(images, labels, x[b], sigma, label, 3)
            assert torch.allclose(every[b, label], ref, atol=1e-6, rtol=0), (sigma, b, label)


def test_forward_matches_brute_force_mixed_labels_and_sigmas(toy):
    images, labels = toy
    den = OptimalDenoiser(images, labels)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    sig = torch.tensor([1e-4, 0.05, 0.5, 2.0, 30.0, 0.2], dtype=torch.float64)
    lab = torch.tensor([0, 1, 2, 3, 3, 1])
    out = den(x, sig, lab)
    for b in range(6):
        ref = brute_force(images, labels, x[b], float(sig[b]), int(lab[b]), 3)
        assert torch.allclose(out[b], ref, atol=1e-6, rtol=0)
    assert torch.equal(den(x, sig, None), den(x, sig, torch.full((6,), 3)))


def test_limits(toy):
    images, labels = toy
    den = OptimalDenoiser(images, labels)
    model = images * 2 - 1
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 4, 4, generator=g, dtype=torch.float64)
    big = den.denoise_all(x, torch.full((4,), 1e5, dtype=torch.float64), torch.arange(4))
    for c in range(3):
        assert torch.allclose(big[:, c], model[labels == c].mean(0).expand(4, -1, -1, -1), atol=1e-8)
    assert torch.allclose(big[:, 3], model.mean(0).expand(4, -1, -1, -1), atol=1e-8)
    for dtype in (torch.float32, torch.float64):  # a training image at tiny sigma comes back (memorization)
        den_d = den.to(dtype)
        out = den_d(model.to(dtype), torch.full((24,), 1e-4, dtype=dtype), labels)
        assert torch.allclose(out, model.to(dtype), atol=1e-6)
        out_null = den_d(model.to(dtype), torch.full((24,), 1e-4, dtype=dtype))
        assert torch.allclose(out_null, model.to(dtype), atol=1e-6)


def test_tiny_sigma_digits_float32_no_nan(digits):
    (xtr, ytr), (xte, _) = digits
    den = OptimalDenoiser(xtr, ytr)
    x = xte[:20] * 2 - 1
    for sigma in (1e-4, 1e-7, 1e-20):
        out = den.denoise_all(x, torch.full((20,), sigma))
        assert torch.isfinite(out).all()
    out = den(xtr[:30] * 2 - 1, torch.full((30,), 1e-4), ytr[:30])
    assert torch.allclose(out, xtr[:30] * 2 - 1, atol=1e-5)


# ---- equivalences --------------------------------------------------------------------------------
def test_denoise_all_equals_forward_loop_and_batch_sizes(toy):
    images, labels = toy
    den = OptimalDenoiser(images.float(), labels)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 1, 4, 4, generator=g)
    sig = torch.tensor([1e-3, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0])
    every = den.denoise_all(x, sig, torch.arange(4))
    for c in range(4):
        assert torch.allclose(every[:, c], den(x, sig, torch.full((7,), c)), atol=1e-6)
    assert torch.allclose(den.denoise_all(x, sig), every[:, :3])
    singles = torch.cat([den.denoise_all(x[i : i + 1], sig[i : i + 1], torch.arange(4)) for i in range(7)])
    assert torch.allclose(singles, every, atol=1e-6)
    chunked = OptimalDenoiser(images.float(), labels, max_chunk_elements=1)
    assert torch.allclose(chunked.denoise_all(x, sig, torch.arange(4)), every, atol=1e-6)
    assert den.passes_per_denoise_all(3) == 1 and den.heads == "multi" and den.kind == "optimal"


def test_float32_close_to_float64(digits):
    (xtr, ytr), (xte, _) = digits
    den = OptimalDenoiser(xtr, ytr)
    g = torch.Generator().manual_seed(5)
    x = xte[:16] * 2 - 1 + 0.3 * torch.randn(16, 1, 8, 8, generator=g)
    sig = torch.full((16,), 0.3)
    out32 = den.denoise_all(x, sig, torch.arange(11))
    out64 = den.denoise_all(x.double(), sig.double(), torch.arange(11))
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert torch.allclose(out32.double(), out64, atol=1e-4)


# ---- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.3, 1.5])
def test_gradcheck_float64(toy, sigma):
    images, labels = toy
    den = OptimalDenoiser(images, labels)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    sig = torch.full((3,), sigma, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: den(v, sig, torch.tensor([0, 2, 3])), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda v: den.denoise_all(v, sig, torch.arange(4)), (x,), eps=1e-6, atol=1e-5)


def test_gradients_finite_at_tiny_sigma(toy):
    images, labels = toy
    den = OptimalDenoiser(images.float(), labels)
    x = (images[:4].float() * 2 - 1 + 1e-3).requires_grad_(True)
    den.denoise_all(x, torch.full((4,), 1e-4), torch.arange(4)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_inside_diffusion_classifier_gradients(toy):
    images, labels = toy
    x = images[:5].float().clamp(0.05, 0.95)
    grads = []
    for mode in ("chunked", "autograd"):
        dc = DiffusionClassifier(
            OptimalDenoiser(images.float(), labels), make_grid(6), noise_mode="fixed", backward_mode=mode, chunk_size=7
        )
        xr = x.clone().requires_grad_(True)
        logits = dc(xr)
        assert logits.shape == (5, 3)
        logits[:, 0].sum().backward()
        grads.append(xr.grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


# ---- behaviour on digits -------------------------------------------------------------------------
def test_optimal_dc_classifies_digits(digits):
    (xtr, ytr), (xte, yte) = digits
    dc = DiffusionClassifier(OptimalDenoiser(xtr, ytr), make_grid(8), noise_mode="fixed", seed=0)
    assert dc.network_passes(50) == 50 * 8
    with torch.no_grad():
        logits = dc(xte[:50])
        train_logits = dc(xtr[:50])
    acc = float((logits.argmax(1) == yte[:50]).float().mean())
    assert acc >= 0.94, f"optimal DC accuracy on 50 digits test images at T=8: {acc:.3f}"
    assert bool((train_logits.argmax(1) == ytr[:50]).all())  # memorization: training images are recognised
    agree = nearest_neighbour_agreement(logits, xte[:50], xtr, ytr)
    assert agree.agreement >= 0.94 and agree.dc_pred.shape == (50,)


def test_optimal_classifier_helper(toy):
    images, labels = toy
    dc = optimal_classifier(images.float(), labels, make_grid(4), noise_mode="fixed")
    assert isinstance(dc, DiffusionClassifier) and dc.denoiser.kind == "optimal" and dc.num_classes == 3


# ---- theory measurements -------------------------------------------------------------------------
def test_denoiser_error_by_sigma_memorization_and_chunking(digits):
    (xtr, ytr), (xte, yte) = digits
    den = OptimalDenoiser(xtr, ytr)
    sigmas = torch.tensor([1e-3, 0.1, 1.0])
    g = torch.Generator().manual_seed(7)
    err_train = denoiser_error_by_sigma(den, xtr[:20], sigmas, ytr[:20], g)
    err_test = denoiser_error_by_sigma(den, xte[:20], sigmas, yte[:20], torch.Generator().manual_seed(7))
    assert err_train.shape == (3,)
    assert err_train[0] < 1e-10 < err_test[0]  # training image returned at small sigma, test image not
    noise = torch.randn(20, 3, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    a = denoiser_error_by_sigma(den, xte[:20], sigmas, yte[:20], noise=noise)
    b = denoiser_error_by_sigma(den, xte[:20], sigmas, yte[:20], noise=noise, chunk_size=7)
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="noise must have shape"):
        denoiser_error_by_sigma(den, xte[:20], sigmas, noise=noise[:, :2])


def test_gap_by_sigma_paired(toy):
    images, labels = toy
    opt = OptimalDenoiser(images.float(), labels)
    learned = build_denoiser(
        DenoiserConfig(
            num_classes=3,
            img_resolution=4,
            heads="single",
            backbone=dict(model_channels=8, channel_mult=[1], num_blocks=1, dropout=0.0),
        )
    ).eval()
    curves = gap_by_sigma(
        learned, opt, images[:12].float(), labels[:12], [0.05, 0.5, 2.0], torch.Generator().manual_seed(9)
    )
    assert torch.allclose(curves.gap, curves.learned - curves.optimal)
    # on its own training images D* has the lowest expected loss; a random network is far worse
    assert bool((curves.optimal < curves.learned).all())
    assert set(curves.to_dict()) == {"sigmas", "learned", "optimal", "gap"}


def test_nearest_neighbour_predict(toy):
    images, labels = toy
    g = torch.Generator().manual_seed(10)
    x = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    pred = nearest_neighbour_predict(x, images, labels)
    for b in range(6):
        d = [float(((x[b] - images[i]) ** 2).sum()) for i in range(24)]
        assert int(pred[b]) == int(labels[d.index(min(d))])
    assert torch.equal(nearest_neighbour_predict(images, images, labels), labels)
    loo = nearest_neighbour_predict(images, images, labels, exclude_exact=True)
    assert loo.shape == (24,)


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_training_sets(toy):
    images, labels = toy
    with pytest.raises(ValueError, match="empty"):
        OptimalDenoiser(images[:0], labels[:0])
    with pytest.raises(ValueError, match="single class"):
        OptimalDenoiser(images[labels == 0], labels[labels == 0])
    with pytest.raises(ValueError, match=r"expected labels in \[0, 1\]"):
        OptimalDenoiser(images, labels, num_classes=2)
    with pytest.raises(ValueError, match="negative"):
        OptimalDenoiser(images, labels - 1)
    with pytest.raises(ValueError, match="23 labels but train_images has 24"):
        OptimalDenoiser(images, labels[:-1])
    with pytest.raises(ValueError, match=r"classes \[3\] have no training images"):
        OptimalDenoiser(images, labels, num_classes=4)
    with pytest.raises(ValueError, match=r"train_images has values in .*expected images in \[0.0, 1.0\]"):
        OptimalDenoiser(images * 3, labels)
    with pytest.raises(ValueError, match="integer"):
        OptimalDenoiser(images, labels.float())


def test_bad_call_inputs(toy):
    images, labels = toy
    den = OptimalDenoiser(images, labels)
    with pytest.raises(ValueError, match=r"\(2, 1, 5, 5\).*\(N, 1, 4, 4\)"):
        den(torch.zeros(2, 1, 5, 5, dtype=torch.float64), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        den.denoise_all(torch.zeros(2, 3, 4, 4), torch.ones(2))
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        den(torch.zeros(2, 1, 4, 4), torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\]"):
        den(torch.zeros(2, 1, 4, 4), torch.ones(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\]"):
        den.denoise_all(torch.zeros(2, 1, 4, 4), torch.ones(2), torch.tensor([5]))
