import pytest
import torch

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.models import DenoiserConfig, EDMDenoiser, build_denoiser, load_denoiser, save_denoiser
from rdc_lib.models.checkpoints import save_checkpoint

from .conftest import TINY_BACKBONE, tiny_denoiser


def test_preconditioning_identities():
    """Zero-initialised output: D(x; sigma) = c_skip x exactly; c_skip -> 1 as sigma -> 0."""
    net = build_denoiser(DenoiserConfig(backbone=dict(TINY_BACKBONE))).eval()
    x = torch.randn(4, 1, 8, 8)
    for sigma in (1e-3, 0.5, 3.0):
        out = net(x, torch.full((4,), sigma), torch.tensor([0, 1, 2, 10]))
        assert torch.allclose(out, x * 0.25 / (sigma**2 + 0.25), atol=1e-6)


def test_shapes_and_null_label(heads):
    net = tiny_denoiser(heads)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 2.0])
    assert net(x, sigma, torch.tensor([0, 4, 9])).shape == (3, 1, 8, 8)
    assert torch.allclose(net(x, sigma, None), net(x, sigma, torch.full((3,), 10)))
    assert net.denoise_all(x, sigma).shape == (3, 10, 1, 8, 8)
    assert net.denoise_all(x, sigma, torch.tensor([2, 10])).shape == (3, 2, 1, 8, 8)
    assert net(x, 0.5, torch.tensor([1, 1, 1])).shape == (3, 1, 8, 8)  # scalar sigma


def test_denoise_all_equals_per_class_loop(heads):
    net = tiny_denoiser(heads)
    x, sigma = torch.randn(5, 1, 8, 8), torch.rand(5) + 0.1
    every = net.denoise_all(x, sigma)
    for k in range(10):
        assert torch.allclose(every[:, k], net(x, sigma, torch.full((5,), k)), atol=1e-5)


def test_batched_equals_per_image(heads):
    net = tiny_denoiser(heads)
    x, sigma, y = torch.randn(4, 1, 8, 8), torch.rand(4) + 0.1, torch.tensor([3, 1, 0, 10])
    together = net(x, sigma, y)
    alone = torch.cat([net(x[i : i + 1], sigma[i : i + 1], y[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_multi_head_is_one_pass():
    assert tiny_denoiser("multi").passes_per_denoise_all(10) == 1
    assert tiny_denoiser("single").passes_per_denoise_all(10) == 10


def test_config_validation():
    with pytest.raises(ValueError, match="valid choices: single, multi"):
        DenoiserConfig(heads="triple")
    with pytest.raises(ValueError, match="valid choices"):
        DenoiserConfig(arch="resnet")
    with pytest.raises(ValueError, match="unknown config keys"):
        DenoiserConfig.from_dict({"arch": "unet_small", "colour": 3})


def test_checkpoint_roundtrip(tmp_path, heads):
    net = tiny_denoiser(heads)
    cfg = DenoiserConfig(heads=heads, backbone=dict(TINY_BACKBONE))
    path = save_denoiser(tmp_path / "d.safetensors", net, cfg, {"note": "test"})
    back = load_denoiser(path)
    x, s, y = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 1.0]), torch.tensor([1, 10])
    assert torch.equal(net(x, s, y), back(x, s, y))
    assert not back.training


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_denoiser(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_denoiser(tmp_path / "junk.safetensors")
    # a classifier checkpoint is not a denoiser
    save_checkpoint(tmp_path / "clf.safetensors", torch.nn.Linear(2, 2), "classifier", {})
    with pytest.raises(ValueError, match="expected a 'denoiser'"):
        load_denoiser(tmp_path / "clf.safetensors")
    # wrong architecture: weights of a wider net under a narrower config
    net = build_denoiser(DenoiserConfig(backbone=dict(TINY_BACKBONE, model_channels=16)))
    path = save_checkpoint(
        tmp_path / "bad.safetensors", net, "denoiser", {**DenoiserConfig(backbone=dict(TINY_BACKBONE)).__dict__}
    )
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_denoiser(path)


def test_shipped_checkpoints_load_and_are_small():
    for name in ("digits_single", "digits_multi", "digits_multi_h32"):
        path = checkpoint_path(name)
        assert path.stat().st_size < 10 * 2**20
        net = load_denoiser(path)
        assert isinstance(net, EDMDenoiser) and net.heads == name.split("_")[1]
        assert sum(p.numel() for p in net.parameters()) < 2_000_000
    with pytest.raises(FileNotFoundError, match="data/README.md"):
        checkpoint_path("digits_nonexistent")
