"""Discriminative baselines: the digits CNN, (adversarial) training, checkpoints, and the shipped files."""

from __future__ import annotations

import pytest
import torch

from rdc_lib.attacks import PGD
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import (
    BASELINE_KINDS,
    ClassifierConfig,
    DigitsCNN,
    load_classifier,
    train_baseline_kind,
    train_classifier,
)
from rdc_lib.models.checkpoints import checkpoint_extra, save_checkpoint, save_denoiser
from rdc_lib.models.config import DenoiserConfig, build_denoiser

from .conftest import TINY_BACKBONE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_shape_and_input_validation():
    net = DigitsCNN()
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert net(torch.rand(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ValueError, match="channels"):
        net(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="expected images in"):
        net(torch.rand(2, 1, 8, 8) * 255)
    with pytest.raises(ValueError, match="spatial size"):
        net(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="valid choices: digits-cnn"):
        ClassifierConfig(arch="resnet")


def test_training_is_reproducible_and_round_trips(tmp_path):
    a = train_classifier(tmp_path / "a.safetensors", epochs=1, seed=3, progress=False)
    b = train_classifier(tmp_path / "b.safetensors", epochs=1, seed=3, progress=False)
    c = train_classifier(tmp_path / "c.safetensors", epochs=1, seed=4, progress=False)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.test_accuracy > 0.5  # one epoch already learns
    loaded = load_classifier(a.path)
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(loaded(x), a.model(x))
    extra = checkpoint_extra(a.path)
    assert extra["seed"] == 3 and extra["adversarial"] is False and extra["epochs"] == 1


def test_adversarial_training_runs_and_records_its_budget(tmp_path):
    out = train_classifier(
        tmp_path / "at.safetensors", adversarial=True, eps=0.1, attack_steps=2, epochs=1, seed=0, progress=False
    )
    extra = checkpoint_extra(out.path)
    assert extra["adversarial"] is True and extra["eps"] == 0.1 and extra["attack_steps"] == 2
    assert len(out.train_loss) == 1 and out.train_loss[0] > 0
    with pytest.raises(ValueError, match="eps > 0"):
        train_classifier(tmp_path / "bad.safetensors", adversarial=True, eps=0.0, epochs=1, progress=False)
    with pytest.raises(ValueError, match="valid choices: linf, l2"):
        train_classifier(tmp_path / "bad.safetensors", norm="l1", epochs=1, progress=False)


def test_load_refuses_other_kinds_and_mismatched_weights(tmp_path):
    den_path = tmp_path / "den.safetensors"
    cfg = DenoiserConfig(heads="single", backbone=dict(TINY_BACKBONE))
    save_denoiser(den_path, build_denoiser(cfg), cfg)
    with pytest.raises(ValueError, match="expected a 'classifier' checkpoint"):
        load_classifier(den_path)
    small = DigitsCNN(ClassifierConfig(channels=(8, 16)))
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, small, kind="classifier", config={"arch": "digits-cnn", "channels": [16, 32]})
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_classifier(wrong)
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, small, kind="classifier", config={"arch": "vit"})
    with pytest.raises(ValueError, match="invalid classifier config"):
        load_classifier(bad)
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="valid choices: cnn, at-cnn"):
        train_baseline_kind("mlp", tmp_path / "x.safetensors")


def test_shipped_checkpoints():
    x, y = load_dataset("digits", "test")
    robust = {}
    for kind, name in (("cnn", "digits_cnn"), ("at-cnn", "digits_at_cnn")):
        path = checkpoint_path(name)
        assert path.stat().st_size < 10 * 2**20
        extra = checkpoint_extra(path)
        for key, value in BASELINE_KINDS[kind].items():
            assert extra[key] == value, (kind, key)
        model = load_classifier(path)
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        assert clean >= 0.97 and clean == pytest.approx(extra["test_accuracy"], abs=1e-6)
        robust[kind] = PGD(model, norm="linf", eps=0.1, steps=10, seed=0).run(x, y).robust_accuracy
    assert robust["cnn"] < 0.7
    assert robust["at-cnn"] > robust["cnn"] + 0.2, robust
