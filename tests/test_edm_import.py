"""Safe import of EDM network pickles, on pickles written here in the official layout.

The writer mimics NVlabs EDM: every persistent module reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with meta = {type, version, module_src,
class_name, state = the module's __dict__ with _init_kwargs}; ModuleDicts and tensors are pickled by
torch's standard reductions; the top level is {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}.
A fake ``torch_utils.persistence`` module exists in sys.modules only while writing.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rdc_lib.core.safe_pickle import RefusedGlobalError
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.models import build_denoiser, load_denoiser, read_checkpoint
from rdc_lib.models.ddpmpp import DDPMpp, ddpmpp_config
from rdc_lib.models.ddpmpp_blocks import PositionalEmbedding, ResampleConv2d, UNetBlock
from rdc_lib.models.edm_import import import_edm_pickle, read_edm_pickle

SMALL = dict(model_channels=8, channel_mult=[2, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
CLASS_NAMES = {
    UNetBlock: "UNetBlock",
    ResampleConv2d: "Conv2d",
    nn.Linear: "Linear",
    nn.GroupNorm: "GroupNorm",
    PositionalEmbedding: "PositionalEmbedding",
    DDPMpp: "SongUNet",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_net(conditional=True, res=16, seed=0, **over):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_denoiser(ddpmpp_config(10, conditional=conditional, img_resolution=res, **{**SMALL, **over})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # un-zero EDM's ~1e-5 initialisations so every weight matters
        for name, p in net.named_parameters():
            if name.endswith(("conv1.weight", "proj.weight", "aux_conv.weight", "bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def edm_kwargs(net, res):
    """(EDMPrecond init kwargs, SongUNet init kwargs) as EDM's train.py records them."""
    bb = net.backbone
    model = dict(
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
        model_channels=SMALL["model_channels"],
        channel_mult=SMALL["channel_mult"],
        num_blocks=SMALL["num_blocks"],
        attn_resolutions=SMALL["attn_resolutions"],
        augment_dim=9,
        dropout=np.float64(0.13),
    )
    precond = dict(
        img_resolution=res, img_channels=3, label_dim=bb.label_dim, use_fp16=True, model_type="SongUNet", **model
    )
    unet = dict(img_resolution=res, in_channels=3, out_channels=3, label_dim=bb.label_dim, **model)
    return precond, unet


class _EDMLikePickler(pickle.Pickler):
    def __init__(self, f, root, reconstruct, module_src, precond_kwargs, unet_kwargs, precond_name="EDMPrecond"):
        super().__init__(f, protocol=4)
        self.root, self.reconstruct, self.src = root, reconstruct, module_src
        self.precond, self.unet, self.precond_name = precond_kwargs, unet_kwargs, precond_name

    def reducer_override(self, obj):
        if obj is self.root:
            state = {k: v for k, v in obj.__dict__.items() if k != "_modules"}
            state.update(_modules={"model": obj.backbone}, _init_args=(), _init_kwargs=self.precond)
            name = self.precond_name
        elif type(obj) in CLASS_NAMES:
            state = dict(obj.__dict__, _init_args=(), _init_kwargs=self.unet if isinstance(obj, DDPMpp) else {})
            name = CLASS_NAMES[type(obj)]
        else:
            return NotImplemented  # ModuleDict, tensors, containers: torch's / Python's own reductions
        meta = dict(type="class", version=6, module_src=self.src, class_name=name, state=state)
        return self.reconstruct, (meta,)


def write_edm_pickle(
    path: Path, net, res, marker: Path, monkeypatch, *, extra=None, precond_name="EDMPrecond", unet_over=None
) -> Path:
    """Write ``net`` as EDM would; the embedded module source would create ``marker`` if executed."""

    def _reconstruct_persistent_obj(meta):  # never called: loading must not use it
        raise AssertionError("the fake persistence reconstructor was called")

    fake = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    precond, unet = edm_kwargs(net, res)
    unet.update(unet_over or {})
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
    data = {
        "ema": net,
        "loss_fn": None,
        "augment_pipe": None,
        "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "cifar10.zip"},
    }
    data.update(extra or {})
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
        m.setitem(sys.modules, "torch_utils.persistence", fake)
        with open(path, "wb") as f:
            _EDMLikePickler(f, net, _reconstruct_persistent_obj, src, precond, unet, precond_name).dump(data)
    assert "torch_utils.persistence" not in sys.modules
    return path


@pytest.fixture()
def marker(tmp_path):
    path = tmp_path / "side_effect.txt"
    yield path
    assert not path.exists(), "importing the pickle executed code"


def probe(res=16, b=4):
    g = torch.Generator().manual_seed(3)
    return torch.randn(b, 3, res, res, generator=g), torch.rand(b, generator=g) * 2 + 0.05


def test_pickle_has_the_official_layout(tmp_path, marker, monkeypatch):
    path = write_edm_pickle(tmp_path / "net.pkl", make_net(), 16, marker, monkeypatch)
    text = path.read_bytes()
    for needle in (
        b"torch_utils.persistence",
        b"_reconstruct_persistent_obj",
        b"torch.nn.modules.container",
        b"ModuleDict",
        b"_rebuild_parameter",
        b"_load_from_bytes",
        b"SongUNet",
        b"module_src",
    ):
        assert needle in text


@pytest.mark.parametrize("conditional", [True, False])
def test_import_reproduces_the_network(tmp_path, marker, monkeypatch, conditional):
    net = make_net(conditional)
    src = write_edm_pickle(tmp_path / "net.pkl", net, 16, marker, monkeypatch)
    info = read_edm_pickle(src)
    assert info.unet_kwargs["num_blocks"] == 1 and info.unet_kwargs["channel_mult_emb"] == 4  # default filled in
    assert set(info.state) == {"model." + k[len("backbone.") :] for k in net.state_dict()}
    out = import_edm_pickle(src, tmp_path / "net.safetensors", expected=None)
    _, config, extra = read_checkpoint(out, "denoiser")
    assert config["arch"] == "ddpmpp" and config["backbone"]["label_dim"] == (10 if conditional else 0)
    assert extra["edm_use_fp16"] and extra["null_label_trained"] == (not conditional)
    loaded = load_denoiser(out)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x, s = probe()
    labels = torch.tensor([0, 9, 10, 4])
    with torch.no_grad():
        assert torch.equal(loaded(x, s, labels), net(x, s, labels))


def test_import_multihead_starts_from_the_null_output(tmp_path, marker, monkeypatch):
    net = make_net(True)
    src = write_edm_pickle(tmp_path / "net.pkl", net, 16, marker, monkeypatch)
    multi = load_denoiser(import_edm_pickle(src, tmp_path / "multi.safetensors", heads="multi", expected=None))
    assert multi.heads == "multi" and multi.backbone.label_dim == 0
    x, s = probe()
    with torch.no_grad():
        every, null = multi.denoise_all(x, s), net(x, s, None)
    assert every.shape == (4, 10, 3, 16, 16)
    assert torch.allclose(every, null.unsqueeze(1).expand_as(every), atol=1e-5)


def test_wrong_checkpoints_are_refused_with_what_was_expected(tmp_path, marker, monkeypatch):
    src = write_edm_pickle(tmp_path / "net.pkl", make_net(), 16, marker, monkeypatch)
    with pytest.raises(
        ValueError, match=r"wrong checkpoint: expected an EDM DDPM\+\+ network with .*model_channels=128"
    ):
        import_edm_pickle(src, tmp_path / "out.safetensors")  # default: the CIFAR-10 sizes
    with pytest.raises(ValueError, match="label_dim=10 but num_classes=5"):
        import_edm_pickle(src, tmp_path / "out.safetensors", expected=None, num_classes=5)
    vp = write_edm_pickle(tmp_path / "vp.pkl", make_net(), 16, marker, monkeypatch, precond_name="VPPrecond")
    with pytest.raises(ValueError, match="wrong checkpoint: expected 'ema' to be EDMPrecond.*got VPPrecond"):
        import_edm_pickle(vp, tmp_path / "out.safetensors", expected=None)
    ncsn = write_edm_pickle(
        tmp_path / "ncsn.pkl",
        make_net(),
        16,
        marker,
        monkeypatch,
        unet_over=dict(embedding_type="fourier", encoder_type="residual"),
    )
    with pytest.raises(ValueError, match="embedding_type=positional.*the file has embedding_type=fourier"):
        import_edm_pickle(ncsn, tmp_path / "out.safetensors", expected=None)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        import_edm_pickle(tmp_path / "missing.pkl", tmp_path / "out.safetensors")
    (tmp_path / "junk.pkl").write_bytes(pickle.dumps({"net": 3}))
    with pytest.raises(ValueError, match="with key 'ema'"):
        import_edm_pickle(tmp_path / "junk.pkl", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


class _System:
    def __init__(self, marker):
        self.cmd = f"echo pwned > {marker}"

    def __reduce__(self):
        return os.system, (self.cmd,)


class _Exec:
    def __init__(self, marker):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return exec, (self.code,)


class _EvilStorage:
    """Reduces like a torch storage, but its nested blob is a pickle that calls os.system."""

    def __init__(self, marker):
        self.blob = pickle.dumps(_System(marker))

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.blob,)


@pytest.mark.parametrize(
    "payload, where, name",
    [
        (_System, "top", "system"),
        (_Exec, "top", "builtins.exec"),
        (_System, "meta", "system"),
        (_Exec, "meta", "builtins.exec"),
        (_EvilStorage, "meta", "weights_only"),
    ],
)
def test_malicious_pickles_are_refused_without_running_anything(tmp_path, marker, monkeypatch, payload, where, name):
    net = make_net()
    if where == "meta":  # inside a persistent module's state (the meta dict of the reconstructor)
        net.backbone.map_layer0.evil = payload(marker)
        src = write_edm_pickle(tmp_path / "evil.pkl", net, 16, marker, monkeypatch)
    else:
        src = write_edm_pickle(tmp_path / "evil.pkl", net, 16, marker, monkeypatch, extra={"x": payload(marker)})
    with pytest.raises(RefusedGlobalError, match=name):
        import_edm_pickle(src, tmp_path / "out.safetensors", expected=None)
    assert not (tmp_path / "out.safetensors").exists()


def test_plain_malicious_file_is_refused(tmp_path, marker):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_System(marker)))
    with pytest.raises(RefusedGlobalError, match="refused to load global 'posix.system'"):
        read_edm_pickle(tmp_path / "evil.pkl")


@pytest.mark.slow
def test_imported_checkpoint_runs_the_classifier_at_T126_K10(tmp_path, marker, monkeypatch):
    """Import a 32x32 DDPM++ of the CIFAR-10 structure (width 8 instead of 128), then one DC forward
    at T = 126, K = 10 (1260 network passes) on CPU. Full width costs ~0.8 s per pass on the shared
    dev CPU (~17 min here); width 8 ~22 ms per pass (~30-50 s)."""
    net = make_net(res=32, model_channels=8, channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16])
    src = write_edm_pickle(
        tmp_path / "net.pkl",
        net,
        32,
        marker,
        monkeypatch,
        unet_over=dict(channel_mult=[2, 2, 2], num_blocks=4, attn_resolutions=[16]),
    )
    expected = dict(
        img_resolution=32,
        in_channels=3,
        out_channels=3,
        model_channels=8,
        channel_mult=[2, 2, 2],
        num_blocks=4,
        attn_resolutions=[16],
        augment_dim=9,
        resample_filter=[1, 1],
    )
    denoiser = load_denoiser(import_edm_pickle(src, tmp_path / "net.safetensors", expected=expected))
    x, s = probe(32)
    labels = torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        assert torch.equal(denoiser(x, s, labels), net(x, s, labels))
    dc = DiffusionClassifier(denoiser, make_grid(126), noise_mode="fixed", chunk_size=1260)
    start = time.perf_counter()
    with torch.no_grad():
        logits = dc(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    elapsed = time.perf_counter() - start
    assert logits.shape == (1, 10) and torch.isfinite(logits).all() and logits.std() > 0
    assert dc.network_passes(1) == 1260
    assert elapsed < 300, f"DC forward took {elapsed:.1f}s"  # ~30 s idle, ~80 s on the loaded dev CPU
