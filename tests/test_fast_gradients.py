"""The issue-41 fast paths (rdc_lib.fast_paths) give the plain autograd gradient, on both shipped defaults.

- the single-head FiLM network's shared label-independent start (forward_classes) and the split first decoder
  block give the same outputs as the plain network;
- the DC's sparse backward (only the (image, class) pairs with a nonzero incoming gradient) gives the plain
  autograd gradient for dense (CE) and sparse (DLR, targeted DLR) losses, fixed and stochastic noise (a draw from a
  fixed generator, replayed), with less network work for the sparse losses; the RDC's exact gradient too;
- the equality check can fail: a backward that skips one needed class is caught.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rdc_lib.attacks.losses import get_loss
from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.defenses.dc_backward import recompute_image_classes, recompute_pairs
from rdc_lib.defenses.rdc import RobustDiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.fast_paths import fast_paths_state, set_fast_paths
from rdc_lib.models.checkpoints import load_denoiser
from rdc_lib.models.config import DenoiserConfig, build_denoiser

torch.set_num_threads(1)
GRID = make_grid(4)
LOSSES = ("ce", "dlr", "dlr-targeted")


@pytest.fixture(scope="module", params=["single", "multi"])
def default_net(request):
    """The shipped default denoiser of each heads, in float64."""
    return load_denoiser(resolve_checkpoint(DEFAULT_DENOISERS[request.param]), dtype=torch.float64)


def digits_like(b: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g, dtype=torch.float64) * 0.8 + 0.1


def tiny_film(heads: str = "single", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    net = build_denoiser(DenoiserConfig(arch="film", heads=heads, backbone={"model_channels": 8, "dropout": 0.0}))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.double().eval()


def loss_grad(model, x: Tensor, y: Tensor, loss: str, noise, fast: bool) -> Tensor:
    set_fast_paths(model, fast)
    try:
        xa = x.clone().requires_grad_(True)
        value = get_loss(loss)(model(xa, noise=noise), y, (y + 3) % 10).sum()
        (g,) = torch.autograd.grad(value, xa)
    finally:
        set_fast_paths(model, True)
    return g


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_film_shared_start_and_split_decoder_match_the_plain_network():
    net = tiny_film()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    classes = torch.tensor([4, 0, 10])  # any labels, the null label too
    set_fast_paths(net, False)
    plain = net.denoise_all(x, sigma, classes)  # K passes of the plain network
    set_fast_paths(net, True)
    assert net.shares_prefix()
    fast = net.denoise_all(x, sigma, classes)
    assert fast.shape == plain.shape == (3, 3, 1, 8, 8)
    assert (fast - plain).abs().max() <= 1e-12 * plain.abs().max()
    per_image = torch.tensor([[1, 2], [9, 1], [0, 0]])  # (B, K') classes per image
    got = net.denoise_classes(x, sigma, per_image)
    want = torch.stack([net(x, sigma, per_image[:, j]) for j in range(2)], dim=1)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()
    net.train()  # dropout draws differ: the plain path
    assert not net.shares_prefix()
    with pytest.raises(ValueError, match="share_prefix"):
        net.denoise_classes(x, sigma, per_image)


@pytest.mark.parametrize("noise_mode,losses", [("fixed", ("ce", "dlr")), ("stochastic", ("dlr-targeted",))])
def test_dc_gradient_equals_plain_autograd_on_the_defaults(default_net, noise_mode, losses):
    x, y = digits_like(2), torch.tensor([3, 7])
    fast = DiffusionClassifier(default_net, GRID, noise_mode=noise_mode, seed=5)
    plain = DiffusionClassifier(default_net, GRID, noise_mode=noise_mode, seed=5, backward_mode="autograd")
    noise = fast.draw_noise(x)  # one draw of the fixed generator, replayed by both
    for loss in losses:
        g_plain = loss_grad(plain, x, y, loss, noise, fast=False)
        g_fast = loss_grad(fast, x, y, loss, noise, fast=True)
        assert g_plain.norm() > 0
        assert rel(g_fast, g_plain) <= 1e-10, loss
    with torch.no_grad():
        set_fast_paths(fast, False)
        before = fast(x, noise=noise)
        set_fast_paths(fast, True)
        assert (fast(x, noise=noise) - before).abs().max() <= 1e-12 * before.abs().max()


def test_float32_gradients_are_as_accurate_as_plain_autograd_on_the_single_head_default():
    """In float32 both gradients carry rounding error (DLR divides by a logit gap): against the float64 gradient
    the fast one is within 1e-5 relative or no worse than twice the plain float32 gradient's error, on digits test
    images. (Not on arbitrary inputs: with two logits within 1e-4 of each other, as on a random image, a logit
    rounding error of 3e-7 alone moves the DLR gradient by about 1e-5, and any change in the order of the sums,
    the plain path's included, lands anywhere from 2e-6 to 2e-5.)"""
    net = load_denoiser(resolve_checkpoint(DEFAULT_DENOISERS["single"]))
    dc = DiffusionClassifier(net, GRID, noise_mode="fixed", backward_mode="autograd")
    dc64 = DiffusionClassifier(
        load_denoiser(resolve_checkpoint(DEFAULT_DENOISERS["single"]), dtype=torch.float64),
        GRID,
        noise_mode="fixed",
        backward_mode="autograd",
    )
    x, y = load_dataset("digits", "test")
    x, y = x[4:7].double(), y[4:7]
    noise = dc64.draw_noise(x)
    for loss in LOSSES:
        exact = loss_grad(dc64, x, y, loss, noise, fast=False)
        dc.backward_mode = "autograd"
        plain_err = rel(loss_grad(dc, x.float(), y, loss, noise.float(), fast=False).double(), exact)
        dc.backward_mode = "chunked"
        fast_err = rel(loss_grad(dc, x.float(), y, loss, noise.float(), fast=True).double(), exact)
        assert fast_err <= max(1e-5, 2 * plain_err), (loss, fast_err, plain_err)


@pytest.mark.parametrize("heads", ["single", "multi"])
@pytest.mark.parametrize("noise_mode", ["fixed", "stochastic"])
def test_float32_dc_gradient_within_1e5_of_plain_autograd_on_the_defaults(heads, noise_mode):
    """What the attacks use: float32, digits test images, T = 16, the shipped defaults, every fast path on against
    plain autograd with every fast path off (stochastic: a draw of a fixed generator, replayed): relative
    difference <= 1e-5. (DLR divides by a logit gap: on inputs whose gap is tiny both float32 gradients carry
    more rounding error; the float64 tests above bound the paths themselves.)"""
    net = load_denoiser(resolve_checkpoint(DEFAULT_DENOISERS[heads]))
    fast = DiffusionClassifier(net, make_grid(16), noise_mode=noise_mode, seed=7)
    plain = DiffusionClassifier(net, make_grid(16), noise_mode=noise_mode, seed=7, backward_mode="autograd")
    x, y = load_dataset("digits", "test")
    x, y = x[:4], y[:4]
    noise = fast.draw_noise(x)
    for loss in LOSSES:
        g_plain = loss_grad(plain, x, y, loss, noise, fast=False)
        assert g_plain.norm() > 0
        assert rel(loss_grad(fast, x, y, loss, noise, fast=True), g_plain) <= 1e-5, loss


@pytest.mark.parametrize("switch", ["share_prefix", "split_decoder", "channels_last", "fused"])
def test_each_network_fast_path_alone_matches_the_plain_network(switch):
    """Every switch of the network on its own (the others off) gives the plain outputs and input gradient."""
    net = tiny_film()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.2, 0.7, 1.5, 4.0], dtype=torch.float64)
    classes = torch.tensor([1, 6, 10])

    def run():
        xa = x.clone().requires_grad_(True)
        out = net.denoise_all(xa, sigma, classes)
        (g,) = torch.autograd.grad((out * out.detach().sin()).sum(), xa)
        return out.detach(), g

    set_fast_paths(net, False)
    want = run()
    for m in net.modules():
        if hasattr(m, switch):
            setattr(m, switch, True)
    got = run()
    set_fast_paths(net, True)
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max(), switch


def test_rdc_exact_gradient_equals_plain_autograd_on_the_defaults(default_net):
    x, y = digits_like(2, seed=1), torch.tensor([0, 4])
    kwargs = {"grid": GRID, "noise_mode": "stochastic", "seed": 3}
    fast = RobustDiffusionClassifier(default_net, **kwargs)
    plain = RobustDiffusionClassifier(
        default_net, classifier=DiffusionClassifier(default_net, GRID, backward_mode="autograd"), **kwargs
    )
    noise = fast.draw_noise(x)
    for loss in ("ce", "dlr"):
        g_plain = loss_grad(plain, x, y, loss, noise, fast=False)
        assert rel(loss_grad(fast, x, y, loss, noise, fast=True), g_plain) <= 1e-10, loss


class RowCount:
    def __init__(self, net):
        self.rows = 0
        net.backbone.conv_out.register_forward_pre_hook(
            lambda _m, inp: setattr(self, "rows", self.rows + inp[0].shape[0])
        )


@pytest.mark.parametrize("chunk_size,shared", [(4096, True), (7, True), (7, False)])
def test_sparse_backward_runs_fewer_passes_and_matches(chunk_size, shared):
    net = tiny_film()
    counter = RowCount(net)
    dc = DiffusionClassifier(net, GRID, noise_mode="fixed", chunk_size=chunk_size, shared_noise=shared)
    ref = DiffusionClassifier(net, GRID, noise_mode="fixed", backward_mode="autograd", shared_noise=shared)
    x, y = digits_like(3, seed=2), torch.tensor([2, 2, 8])
    noise = dc.draw_noise(x)
    rows = {}
    for loss in ("ce", "dlr"):
        g_ref = loss_grad(ref, x, y, loss, noise, fast=False)
        counter.rows = 0
        g = loss_grad(dc, x, y, loss, noise, fast=True)
        rows[loss] = counter.rows
        assert rel(g, g_ref) <= 1e-10, loss
    forward = 3 * 10 * len(GRID)
    # DLR: the forward of all 10 classes, then at most 3 classes per image again; CE: every class (graph kept
    # when it fits, else recomputed)
    assert rows["dlr"] <= forward + 3 * 3 * len(GRID) < rows["ce"] + forward
    assert rows["ce"] == (forward if chunk_size == 4096 else 2 * forward)


def test_the_equality_check_catches_a_skipped_class():
    """A backward that drops one class with a nonzero incoming gradient is far from the plain gradient."""
    net = tiny_film()
    dc = DiffusionClassifier(net, GRID, noise_mode="fixed")
    x = digits_like(2, seed=4)
    noise = dc.draw_noise(x).expand(2, -1, -1, -1, -1, -1)
    grad_out = torch.zeros(2, 10, dtype=torch.float64)
    grad_out[:, 1], grad_out[:, 4], grad_out[0, 7] = 1.0, -0.7, 0.4
    classes = torch.arange(10)
    args = (x, noise, net, GRID, classes, 4096)
    full = recompute_image_classes(*args, grad_out)
    assert rel(recompute_pairs(*args, grad_out), full) <= 1e-10
    skipped = grad_out.clone()
    skipped[0, 7] = 0.0  # the bug: one needed class left out
    assert rel(recompute_image_classes(*args, skipped), full) > 1e-3


def test_switch_sets_and_reports_every_fast_path():
    dc = DiffusionClassifier(tiny_film(), GRID)
    blocks = 3  # the tiny network's FiLM blocks (encoder, middle, decoder)
    on = {"share_prefix": [True], "sparse_backward": [True], "split_decoder": [True], "channels_last": [True]}
    assert fast_paths_state(dc) == {**on, "fused": [True] * blocks}
    set_fast_paths(dc, False)
    assert fast_paths_state(dc) == {**{k: [False] for k in on}, "fused": [False] * blocks}
    assert not dc.denoiser.shares_prefix()
    with pytest.raises(ValueError, match="True or False"):
        set_fast_paths(dc, 1)
    with pytest.raises(ValueError, match="nn.Module"):
        set_fast_paths("dc", True)


@pytest.mark.parametrize("size", [(2, 3, 4, 4), (1, 2, 3, 5)])
def test_parity_convolution_equals_convolving_the_upsampled_input(size):
    from torch.nn import functional as F

    from rdc_lib.models.film import conv3x3_upsampled, upsample2

    g = torch.Generator().manual_seed(0)
    low = torch.randn(*size, generator=g, dtype=torch.float64)
    w = torch.randn(4, size[1], 3, 3, generator=g, dtype=torch.float64)
    want = F.conv2d(upsample2(low), w, padding=1)
    assert (conv3x3_upsampled(low, w) - want).abs().max() <= 1e-12 * want.abs().max()
    w_bad = w.clone()
    w_bad[:, :, 0, 0] += 1.0  # a wrong tap is caught
    assert (conv3x3_upsampled(low, w_bad) - want).abs().max() > 1e-3
