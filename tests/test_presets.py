"""Named presets: values from docs/paper.md, kwargs that fit the library functions, missing-file messages."""

from __future__ import annotations

import inspect
from dataclasses import FrozenInstanceError

import pytest
import torch

from rdc_lib.data import CIFAR10_FILES
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.defenses.presets import PRESETS, get_preset, preset_names, required_files
from rdc_lib.diffusion.schedules import make_grid


def test_names_and_unknown_name():
    assert preset_names() == ["cifar10-paper", "digits"]
    with pytest.raises(ValueError, match="unknown preset 'cifar'; valid choices: cifar10-paper, digits"):
        get_preset("cifar")
    with pytest.raises(FrozenInstanceError):
        get_preset("digits").lm.eta = 0.5
    with pytest.raises(TypeError):
        PRESETS["mine"] = get_preset("digits")


def test_paper_values():
    p = get_preset("cifar10-paper")
    grid = make_grid(**p.grid.kwargs())
    assert torch.allclose(grid.sigmas.double(), torch.linspace(1e-4, 3, 1001, dtype=torch.float64)[:-1], atol=1e-6)
    assert grid.weighting == "edm"
    assert (p.lm.steps, p.lm.step_size, p.lm.eta, p.lm.norm, p.lm.sigma_range) == (5, 0.1, 8 / 255, "linf", (0.4, 0.6))
    a = p.attack
    assert (a.attack, a.iterations, a.restarts, a.eot, a.eps_linf, a.eps_l2) == ("apgd-dlr", 100, 5, 1, 8 / 255, 0.5)
    assert (a.stadv_bound, a.stadv_iterations) == (0.05, 100)
    assert (p.data.num_test, p.data.num_ablation) == (512, 100)
    assert p.checkpoints.lm != p.checkpoints.classifier  # separate unconditional network for LM
    d = get_preset("digits")
    assert len(make_grid(**d.grid.kwargs())) == 32 and d.data.dataset == "digits"
    assert (d.lm.steps, d.lm.step_size, d.lm.eta, d.lm.sigma_range, d.attack.eps_linf) == (
        5,
        0.03,
        8 / 255,
        (0.4, 0.6),
        0.1,
    )
    assert p.to_dict()["lm"]["eta"] == 8 / 255


@pytest.mark.parametrize("name", ["digits", "cifar10-paper"])
def test_kwargs_fit_the_library_signatures(name):
    p = get_preset(name)
    inspect.signature(make_grid).bind(**p.grid.kwargs())
    inspect.signature(DiffusionClassifier).bind(None, None, **p.dc.kwargs())
    lm = pytest.importorskip("rdc_lib.diffusion.lm")
    lm.LMConfig(**p.lm.kwargs())  # validates every value
    inspect.signature(lm.likelihood_maximization).bind(None, None, **p.lm.kwargs())


def test_required_files_for_cifar(tmp_path):
    data, ckpt = tmp_path / "cifar", tmp_path / "ckpt"
    data.mkdir(), ckpt.mkdir()
    for n in CIFAR10_FILES[:3]:
        (data / n).write_bytes(b"x")
    (ckpt / "edm-cifar10-32x32-cond-vp.pkl").write_bytes(b"x")
    req = required_files("cifar10-paper", data, ckpt)
    assert not req.ok
    assert [m.name for m in req.missing] == [
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "edm-cifar10-32x32-cond-vp.safetensors",
        "edm-cifar10-32x32-uncond-vp.safetensors",
    ]
    assert "put data_batch_4, data_batch_5, test_batch" in req.message
    assert (
        f"rdc import-edm {ckpt / 'edm-cifar10-32x32-cond-vp.pkl'} {ckpt / 'edm-cifar10-32x32-cond-vp.safetensors'}"
        in req.message
    )
    assert "download edm-cifar10-32x32-uncond-vp.pkl from the NVlabs EDM release" in req.message
    for n in CIFAR10_FILES:
        (data / n).write_bytes(b"x")
    for n in ("edm-cifar10-32x32-cond-vp.safetensors", "edm-cifar10-32x32-uncond-vp.safetensors"):
        (ckpt / n).write_bytes(b"x")
    assert required_files(get_preset("cifar10-paper"), data, ckpt).ok
    with pytest.raises(ValueError, match="needs data_root"):
        required_files("cifar10-paper", None, ckpt)


def test_required_files_for_digits(tmp_path):
    req = required_files("digits", None, tmp_path)
    assert [m.name for m in req.missing] == ["digits_single.safetensors"]
    assert "data/README.md" in req.message
    (tmp_path / "digits_single.safetensors").write_bytes(b"x")
    assert required_files("digits", None, tmp_path).ok
