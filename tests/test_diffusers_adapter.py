"""Bring your own model: the diffusers / k-diffusion adapters against the scheduler's own x0 prediction, loading
from a local diffusers folder, and the errors for models the adapter cannot use (rdc_lib.models.diffusers_adapter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import diffusers
import pytest
import torch

from rdc_lib.models import load_denoiser
from rdc_lib.models.checkpoints import require_trained_null_label
from rdc_lib.models.diffusers_adapter import (
    KDiffusionDenoiser,
    VPDiffusersDenoiser,
    load_diffusers_denoiser,
    require_diffusers,
)
from rdc_lib.models.diffusers_check import adapter_check, scheduler_for

ROOT = Path(__file__).resolve().parents[1]
T = 1000
TOL = 1e-5


def tiny_unet(num_class_embeds: int | None = 11, **kw) -> diffusers.UNet2DModel:
    """A small randomly initialised UNet2DModel for 8x8 digits (seeded on a fork of the global RNG)."""
    args = dict(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=[4, 8],
        down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    )
    args.update(kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return diffusers.UNet2DModel(**args).eval()


def adapter(unet, sched, **kw) -> VPDiffusersDenoiser:
    null = 10 if unet.config.num_class_embeds == 11 else None
    return VPDiffusersDenoiser(unet, sched.alphas_cumprod, sched.config.prediction_type, 10, null, 1, 8, **kw).eval()


def images(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.tensor([0, 7, 10][:n])


def check(den, sched, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    if timesteps is None:
        timesteps = torch.arange(T)
    x0, y = images()
    return adapter_check(den, sched, x0, y, timesteps, torch.Generator().manual_seed(2))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_adapter_matches_the_ddpm_scheduler_at_every_timestep(prediction_type):
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type=prediction_type, clip_sample=False)
    for mode, steps in (("interpolate", torch.arange(T)), ("nearest", torch.arange(0, T, 7))):
        diffs = check(adapter(unet, sched, timestep=mode), sched, steps)
        assert diffs.shape == steps.shape and float(diffs.max()) <= TOL, (mode, float(diffs.max()), int(diffs.argmax()))


def test_adapter_matches_ddim_cosine_and_zero_one_models():
    unet = tiny_unet()
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
    )
    assert float(check(adapter(unet, sched), sched, torch.arange(0, T, 9)).max()) <= TOL
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="epsilon", clip_sample=False)
    zero_one = adapter(unet, ddpm, data_range="zero_one")
    assert float(check(zero_one, ddpm, torch.arange(0, T, 9)).max()) <= TOL


def test_the_check_fails_for_a_wrong_timestep_scaling_or_prediction_type():
    unet = tiny_unet()
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, prediction_type="epsilon", clip_sample=False)
    steps = torch.arange(0, T, 50)
    den = adapter(unet, sched, timestep="nearest")
    den.timesteps_for = lambda sigma: VPDiffusersDenoiser.timesteps_for(den, sigma) + 5  # off by 5 timesteps
    assert float(check(den, sched, steps).max()) > 1e-3
    wrong_type = VPDiffusersDenoiser(unet, sched.alphas_cumprod, "v_prediction", 10, 10, 1, 8).eval()
    assert float(check(wrong_type, sched, steps).max()) > 1e-2
    den = adapter(unet, sched)
    den.log_sigmas = den.log_sigmas + 0.05  # a schedule that is slightly off
    assert float(check(den, sched, steps).max()) > 1e-3


def test_timestep_nearest_and_interpolated():
    sched = diffusers.DDPMScheduler(num_train_timesteps=T)
    interp, nearest = adapter(tiny_unet(), sched), adapter(tiny_unet(), sched, timestep="nearest")
    ls = interp.log_sigmas
    on_grid = ls[[0, 1, 500, 998, 999]].exp()
    assert torch.allclose(interp.timesteps_for(on_grid), torch.tensor([0.0, 1, 500, 998, 999]), atol=1e-4)
    assert nearest.timesteps_for(on_grid).tolist() == [0, 1, 500, 998, 999]
    between = (ls[[10, 600]] + torch.tensor([0.3, 0.8]) * (ls[[11, 601]] - ls[[10, 600]])).exp()
    assert torch.allclose(interp.timesteps_for(between), torch.tensor([10.3, 600.8]), atol=1e-4)
    assert nearest.timesteps_for(between).tolist() == [10, 601]
    outside = torch.tensor([1e-4, 1e4], dtype=torch.float64)  # below sigma(0) ~ 0.01, above sigma(999) ~ 157
    assert interp.timesteps_for(outside).tolist() == [0.0, 999.0] and nearest.timesteps_for(outside).tolist() == [
        0,
        999,
    ]
    # interpolation is continuous in sigma, nearest jumps at the log-midpoint
    x, y = images(2)
    mid = (0.5 * (ls[10] + ls[11])).exp()
    below, above = (mid * torch.tensor([1 - 1e-6, 1 + 1e-6], dtype=torch.float64)).float()
    with torch.no_grad():
        gap_i = (interp(x, below.expand(2), y) - interp(x, above.expand(2), y)).abs().max()
        gap_n = (nearest(x, below.expand(2), y) - nearest(x, above.expand(2), y)).abs().max()
    assert float(gap_i) < 1e-4 < float(gap_n)


def test_null_label_is_mapped_and_required():
    sched = diffusers.DDPMScheduler()
    x, _ = images(2)
    with_null, without = adapter(tiny_unet(11), sched), adapter(tiny_unet(10), sched)
    seen = []
    with_null.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["class_labels"]), with_kwargs=True
    )
    with torch.no_grad():
        with_null(x, 0.5, None)
        with_null(x, 0.5, torch.tensor([3, 10]))
        without(x, 0.5, torch.tensor([3, 9]))  # the DC never asks for the null label
        with pytest.raises(ValueError, match="no null label.*num_class_embeds = 10"):
            without(x, 0.5, None)
    assert seen[0].tolist() == [10, 10] and seen[1].tolist() == [3, 10]


def test_kdiffusion_callable():
    unet, sched = tiny_unet(), diffusers.DDPMScheduler()
    vp = adapter(unet, sched)
    kd = KDiffusionDenoiser(lambda x, s, class_labels: vp._x0_model_space(x, s, class_labels), 10, 1, 8, null_label=10)
    x, y = images()
    sigma = torch.tensor([0.05, 0.7, 2.5])
    with torch.no_grad():
        assert torch.equal(kd(x, sigma, y), vp(x, sigma, y))
        assert torch.equal(kd.denoise_all(x, sigma), vp.denoise_all(x, sigma))
    # a [0, 1] model: the N(0.5, 1/4)-free closed form u / (1 + s^2) seen through the range change
    kd01 = KDiffusionDenoiser(
        lambda u, s, class_labels: u / (1 + s.view(-1, 1, 1, 1) ** 2), 10, 1, 8, data_range="zero_one"
    )
    want = 2 * ((x + 1) / 2) / (1 + (sigma.view(-1, 1, 1, 1) / 2) ** 2) - 1
    assert torch.allclose(kd01(x, sigma, torch.tensor([1, 2, 3])), want, atol=1e-6)
    with pytest.raises(ValueError, match="no null label"):
        KDiffusionDenoiser(lambda x, s, class_labels: x, 10, 1, 8)(x, sigma, None)
    with pytest.raises(ValueError, match="must return the denoised image"):
        KDiffusionDenoiser(lambda x, s, class_labels: x[:, :, :4], 10, 1, 8)(x, sigma, torch.tensor([0, 7, 3]))
    with pytest.raises(TypeError, match="callable"):
        KDiffusionDenoiser("model.pt", 10, 1, 8)


def save_model(folder: Path, unet=None, layout: str = "pipeline", **sched_kw) -> Path:
    unet = unet if unet is not None else tiny_unet()
    sched = diffusers.DDPMScheduler(**{"prediction_type": "epsilon", **sched_kw})
    if layout == "pipeline":
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        sched.save_pretrained(folder / "scheduler")
    else:
        unet.save_pretrained(folder, safe_serialization=True)
        sched.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_load_from_a_local_folder(tmp_path, layout):
    folder = save_model(tmp_path / "m", layout=layout, prediction_type="v_prediction")
    den = load_denoiser(f"diffusers:{folder}")
    assert isinstance(den, VPDiffusersDenoiser) and not den.training and den.prediction_type == "v_prediction"
    assert (den.num_classes, den.img_channels, den.img_resolution, den.model_null_label) == (10, 1, 8, 10)
    ref = adapter(tiny_unet(), scheduler_for(str(folder)))
    x, y = images()
    with torch.no_grad():
        assert torch.allclose(den(x, 0.3, y), ref(x, 0.3, y), atol=1e-6)
    assert float(check(den, scheduler_for(f"diffusers:{folder}"), torch.arange(0, T, 97)).max()) <= TOL
    require_trained_null_label(f"diffusers:{folder}", "likelihood maximization")  # has one: passes
    (folder / "rdc_adapter.json").write_text(json.dumps({"timestep": "nearest", "data_range": "zero_one"}))
    den = load_diffusers_denoiser(folder)
    assert (den.timestep, den.data_range) == ("nearest", "zero_one")


def _edit(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "field, value, message",
    [
        (
            "_class_name",
            "EulerDiscreteScheduler",
            "scheduler _class_name 'EulerDiscreteScheduler'.*supported: DDPMScheduler, DDIMScheduler",
        ),
        ("prediction_type", "flow", "scheduler prediction_type 'flow'.*supported: epsilon, v_prediction, sample"),
        (
            "beta_schedule",
            "sigmoid",
            "scheduler beta_schedule 'sigmoid'.*supported: linear, scaled_linear, squaredcos_cap_v2",
        ),
        ("rescale_betas_zero_snr", True, "rescale_betas_zero_snr.*supported: False"),
    ],
)
def test_unsupported_scheduler(tmp_path, field, value, message):
    folder = save_model(tmp_path / "m")
    _edit(folder / "scheduler" / "scheduler_config.json", **{field: value})
    with pytest.raises(ValueError, match=message):
        load_denoiser(f"diffusers:{folder}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_class_embeds=None), "unconditional model.*num_class_embeds = 10 or 11"),
        (dict(num_class_embeds=5), "num_class_embeds 5.*supported: 10 .* or 11"),
        (dict(sample_size=16), "sample_size 16.*supported: 8"),
        (dict(in_channels=3, out_channels=3), "in_channels 3.*supported: 1"),
        (dict(out_channels=2), "out_channels 2 with scheduler variance_type 'fixed_small'"),
        (dict(class_embed_type="identity"), "class_embed_type 'identity'.*supported: None"),
    ],
)
def test_unsupported_model(tmp_path, kwargs, message):
    args = dict(num_class_embeds=kwargs.pop("num_class_embeds", 11))
    unet = tiny_unet(**args, **{k: v for k, v in kwargs.items() if k != "class_embed_type"})
    folder = save_model(tmp_path / "m", unet)
    if "class_embed_type" in kwargs:
        _edit(folder / "unet" / "config.json", class_embed_type=kwargs["class_embed_type"])
    with pytest.raises(ValueError, match=message):
        load_denoiser(f"diffusers:{folder}")


def test_not_a_diffusers_folder_and_no_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffusers model folder not found"):
        load_denoiser(f"diffusers:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a diffusers model folder: expected unet/config.json"):
        load_denoiser(f"diffusers:{tmp_path / 'empty'}")
    folder = save_model(tmp_path / "m")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ValueError, match="no scheduler config"):
        load_denoiser(f"diffusers:{folder}")
    folder = save_model(tmp_path / "m2")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ValueError, match="no safetensors weights.*pickled .bin weights are never loaded"):
        load_denoiser(f"diffusers:{folder}")
    folder = save_model(tmp_path / "m3")
    (folder / "rdc_adapter.json").write_text(json.dumps({"timestep": "cubic"}))
    with pytest.raises(ValueError, match="timestep.*'cubic'.*interpolate, nearest"):
        load_denoiser(f"diffusers:{folder}")


def test_a_model_without_null_label_is_refused_for_lm(tmp_path):
    folder = save_model(tmp_path / "m", tiny_unet(10))
    den = load_denoiser(f"diffusers:{folder}")
    assert den.model_null_label is None
    with pytest.raises(ValueError, match="likelihood maximization.*has none"):
        require_trained_null_label(f"diffusers:{folder}", "likelihood maximization")


def test_diffusers_is_imported_lazily(monkeypatch):
    code = (
        "import sys, rdc_lib.models, rdc_lib.models.diffusers_adapter, rdc_lib.models.checkpoints; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[diffusers\]'"):
        require_diffusers()
