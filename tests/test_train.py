import pytest
import torch

from rdc_lib.models import build_denoiser, load_denoiser, read_checkpoint, save_denoiser
from rdc_lib.models.ddpmpp import ddpmpp_config
from rdc_lib.train import TrainConfig, _init_partial, train_denoiser

from .conftest import TINY_BACKBONE

TINY = dict(TINY_BACKBONE)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(backbone=dict(TINY), steps=6, batch_size=16, warmup=2, checkpoint_every=3, **kw)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("heads", ["single", "multi"])
def test_train_writes_safe_checkpoint(tmp_path, heads):
    out = tmp_path / "d.safetensors"
    summary = train_denoiser(_cfg(heads=heads), out, progress=False)
    assert summary["steps"] == 6 and torch.isfinite(torch.tensor(summary["loss"]))
    net = load_denoiser(out)
    assert net.heads == heads
    _, config, extra = read_checkpoint(out, expected_kind="denoiser")
    assert config["backbone"]["model_channels"] == 8 and extra["train_config"]["steps"] == 6
    # the resumable state is loadable with weights_only=True (no full unpickling)
    state = torch.load(out.with_name(out.name + ".state.pt"), weights_only=True)
    assert state["step"] == 6


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    ref = tmp_path / "ref.safetensors"
    train_denoiser(_cfg(), ref, progress=False)

    def interrupt(step, loss):
        if step == 5:
            raise _Stop  # dies after the checkpoint at step 3

    out = tmp_path / "run.safetensors"
    with pytest.raises(_Stop):
        train_denoiser(_cfg(), out, progress=False, on_step=interrupt)
    assert not out.exists()
    train_denoiser(_cfg(), out, progress=False)  # resumes from step 3
    a, b = read_checkpoint(ref)[0], read_checkpoint(out)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_config(tmp_path):
    out = tmp_path / "d.safetensors"
    train_denoiser(_cfg(), out, progress=False)
    with pytest.raises(ValueError, match="different training config"):
        train_denoiser(_cfg(lr=1e-3), out, progress=False)


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(label_dropout=1.5)
    with pytest.raises(ValueError, match="valid choices"):
        TrainConfig(heads="both").denoiser_config()


def test_multi_head_ddpmpp_fine_tunes_from_single_head(tmp_path):
    small = dict(model_channels=8, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[4])
    cs = ddpmpp_config(heads="single", img_resolution=8, img_channels=1, **small)
    cm = ddpmpp_config(heads="multi", img_resolution=8, img_channels=1, **small)
    single = build_denoiser(cs).eval()
    save_denoiser(tmp_path / "s.safetensors", single, cs)
    multi = build_denoiser(cm).eval()
    _init_partial(multi, str(tmp_path / "s.safetensors"))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 1.0])
    # every head starts as the single-head network's null-label (unconditional) output
    assert torch.allclose(
        multi.denoise_all(x, sigma, torch.tensor([3, 10])),
        single(x, sigma, None).unsqueeze(1).expand(2, 2, 1, 8, 8),
        atol=1e-5,
    )


def test_training_is_reproducible_and_leaves_global_rng_alone(tmp_path):
    state = torch.get_rng_state()
    train_denoiser(_cfg(), tmp_path / "a.safetensors", progress=False)
    assert torch.equal(state, torch.get_rng_state())
    train_denoiser(_cfg(), tmp_path / "b.safetensors", progress=False)
    a, b = read_checkpoint(tmp_path / "a.safetensors")[0], read_checkpoint(tmp_path / "b.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_exclude_val_trains_without_the_validation_images(tmp_path, monkeypatch):
    import rdc_lib.train as train_mod
    from rdc_lib.cli.recipe import _train_parser
    from rdc_lib.cli.train import train_config_from_args
    from rdc_lib.train import config_dict

    seen = []
    real = train_mod.load_dataset

    def spy(name, split, **kw):
        x, y = real(name, split, **kw)
        seen.append((split, kw.get("exclude_val"), x.shape[0]))
        return x, y

    monkeypatch.setattr(train_mod, "load_dataset", spy)
    out = tmp_path / "d.safetensors"
    train_denoiser(_cfg(exclude_val=True), out, progress=False)
    assert seen == [("train", True, 1437 - 200)]
    assert read_checkpoint(out)[2]["train_config"]["exclude_val"] is True
    # a config without it stores what checkpoints trained before the flag store (so their configs stay equal)
    assert "exclude_val" not in config_dict(_cfg()) and config_dict(_cfg(exclude_val=True))["exclude_val"] is True
    args = _train_parser().parse_args(["--out", "x.safetensors", "--exclude-val"])
    assert train_config_from_args(args).exclude_val is True
    assert train_config_from_args(_train_parser().parse_args(["--out", "x.safetensors"])).exclude_val is False
