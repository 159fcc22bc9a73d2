"""Adversarial training inputs (rdc train --adv-eps): PGD against the network's own diffusion classifier."""

import pytest
import torch

from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.data import load_dataset
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.models import load_denoiser, read_checkpoint
from rdc_lib.train import TrainConfig, adversarial_batch, train_denoiser

from .conftest import TINY_BACKBONE


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(adv_eps=-0.1), r"adv_eps must be in \[0, 1\)"),
        (dict(adv_eps=1.0), r"adv_eps must be in \[0, 1\)"),
        (dict(adv_fraction=0.0), r"adv_fraction must be in \(0, 1\]"),
        (dict(adv_steps=0), "adv_steps must be >= 1"),
        (dict(adv_grid_sigma_min=0.0), "adv_grid_sigma_min must be in"),
    ],
)
def test_adversarial_flags_out_of_range_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def _margin(net, x_model, y, sigma_min: float) -> torch.Tensor:
    """(B,) true-class logit minus the largest other logit of the network's fixed-noise DC."""
    dc = DiffusionClassifier(net, make_grid(16, "paper", sigma_min=sigma_min), noise_mode="fixed", seed=1)
    with torch.no_grad():
        logits = dc((x_model + 1) / 2)
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], float("-inf")).amax(1)


def test_adversarial_batch_attacks_the_networks_own_classifier_inside_the_ball():
    net = load_denoiser(resolve_checkpoint("digits_film_multi_distill9")).train()
    x, y = load_dataset("digits", "train")
    x, y = x[:8] * 2 - 1, y[:8]
    cfg = TrainConfig(heads="multi", adv_eps=0.1, adv_fraction=0.5, adv_steps=3)
    out = adversarial_batch(net, x, y, cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and net.training  # the caller's mode is restored
    assert all(p.grad is None for p in net.parameters())  # no gradient reaches the weights
    moved = (out - x).abs().amax(dim=(1, 2, 3))
    assert torch.equal(out[4:], x[4:])  # only the first adv_fraction is attacked
    assert (moved[:4] <= 2 * 0.1 + 1e-6).all() and (moved[:4] > 0).any()  # model space: twice the pixel radius
    assert out.min() >= -1 and out.max() <= 1
    # the inputs are adversarial for the network's DC: every attacked image's class margin shrinks by a third
    net.eval()
    before, after = _margin(net, x[:4], y[:4], 0.6), _margin(net, out[:4], y[:4], 0.6)
    assert (before > 0).all() and (after < 2 / 3 * before).all(), (before, after)


def test_adversarial_batch_is_reproducible_from_the_generator():
    net = load_denoiser(resolve_checkpoint("digits_film_multi_distill9"))
    x, y = load_dataset("digits", "train")
    x, y = x[:4] * 2 - 1, y[:4]
    cfg = TrainConfig(heads="multi", adv_eps=0.1, adv_fraction=1.0, adv_steps=1)
    a = adversarial_batch(net, x, y, cfg, torch.Generator().manual_seed(3))
    b = adversarial_batch(net, x, y, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_training_with_adversarial_inputs_runs_and_records_its_settings(tmp_path):
    out = tmp_path / "adv.safetensors"
    cfg = TrainConfig(
        heads="multi",
        backbone=dict(TINY_BACKBONE),
        steps=2,
        batch_size=4,
        warmup=1,
        adv_eps=0.05,
        adv_fraction=0.5,
        adv_steps=1,
    )
    summary = train_denoiser(cfg, out, progress=False)
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    tc = read_checkpoint(out, expected_kind="denoiser")[2]["train_config"]
    assert (tc["adv_eps"], tc["adv_fraction"], tc["adv_steps"], tc["adv_grid_sigma_min"]) == (0.05, 0.5, 1, 0.6)
