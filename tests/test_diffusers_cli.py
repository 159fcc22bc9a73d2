"""`rdc eval --denoiser diffusers:PATH` and `rdc certify --denoiser diffusers:PATH` on a tiny saved diffusers model."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from rdc_lib.cli import main


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_diffusers")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=[4, 8],
            down_block_types=["DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D"],
            norm_num_groups=4,
            num_class_embeds=11,
        )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    diffusers.DDPMScheduler(prediction_type="epsilon").save_pretrained(folder / "scheduler")
    return folder


def test_eval_dc_and_rdc_with_a_diffusers_model(tiny_folder, tmp_path, capsys):
    ref = f"diffusers:{tiny_folder}"
    assert (
        main(
            [
                "eval",
                "--defense",
                "dc",
                "--denoiser",
                ref,
                "--n",
                "4",
                "--timesteps",
                "4",
                "--json",
                "--no-progress",
                "--records",
                str(tmp_path / "rec"),
            ]
        )
        == 0
    )
    res = _last_json(capsys.readouterr().out)
    assert res["denoiser"] == ref and res["n"] == 4 and 0 <= res["clean_acc"] <= 1
    hashed = res["provenance"]["checkpoints"]  # the model's files, hashed like a checkpoint
    assert any(k.endswith("unet/diffusion_pytorch_model.safetensors") for k in hashed)
    assert any(k.endswith("scheduler/scheduler_config.json") for k in hashed)
    assert (
        main(
            [
                "eval",
                "--defense",
                "rdc",
                "--denoiser",
                ref,
                "--n",
                "2",
                "--timesteps",
                "2",
                "--lm-steps",
                "1",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    assert _last_json(capsys.readouterr().out)["defense"] == "rdc"


def test_certify_with_a_diffusers_model(tiny_folder, capsys):
    assert (
        main(
            [
                "certify",
                "--base",
                "noised-dc",
                "--denoiser",
                f"diffusers:{tiny_folder}",
                "--timesteps",
                "2",
                "--n-images",
                "1",
                "--n0",
                "5",
                "--n-draws",
                "20",
                "--alpha",
                "0.01",
                "--attack-steps",
                "0",
                "--radii",
                "0",
                "--batch",
                "25",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    out = _last_json(capsys.readouterr().out)
    assert out["images"] == 1 and out["draws_per_image"] == 25


def test_bad_diffusers_reference(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--defense",
                "dc",
                "--denoiser",
                f"diffusers:{tmp_path / 'nope'}",
                "--n",
                "2",
                "--json",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "diffusers model folder not found" in capsys.readouterr().err
    (tmp_path / "cifar").mkdir()
    with torch.random.fork_rng(devices=[]):
        diffusers.UNet2DModel(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=[4, 8],
            down_block_types=["DownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "UpBlock2D"],
            norm_num_groups=4,
            num_class_embeds=10,
        ).save_pretrained(tmp_path / "cifar" / "unet")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "cifar" / "scheduler")
    assert (
        main(
            [
                "eval",
                "--defense",
                "dc",
                "--denoiser",
                f"diffusers:{tmp_path / 'cifar'}",
                "--n",
                "2",
                "--json",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "sample_size 32" in capsys.readouterr().err
