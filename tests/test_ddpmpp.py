"""DDPM++ (EDM SongUNet) backbone: official names and shapes, label handling, strict loading,
multi-head widening, pairing, fp16 flag. (Import of EDM pickles and the classifier at T = 126,
K = 10 on an imported checkpoint: tests/test_edm_import.py.)"""

from __future__ import annotations

import pytest
import torch

from rdc_lib.models import build_denoiser
from rdc_lib.models.config import DenoiserConfig
from rdc_lib.models.ddpmpp import (
    ddpmpp_config,
    edm_state_dict,
    load_edm_state_dict,
    set_fp16,
    widen_to_multihead,
)
from rdc_lib.models.ddpmpp_blocks import PositionalEmbedding, ResampleConv2d
from rdc_lib.models.edm_import import PairedDenoiser

# same structure as the CIFAR-10 network, at 8x8 with width 8: fast on one core
TINY = dict(model_channels=8, channel_mult=[2, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(heads="single", conditional=True, seed=0, k=3, **over):
    cfg = ddpmpp_config(k, heads, conditional=conditional, img_resolution=8, **{**TINY, **over})
    with torch.random.fork_rng():  # module initialisation draws from the global RNG; keep it local
        torch.manual_seed(seed)
        net = build_denoiser(cfg).eval()
    # EDM initialises the last conv of each block, attention projections and the output ~1e-5:
    # randomise them (seeded) so that outputs depend on every weight
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("conv1.weight", "proj.weight", "aux_conv.weight", "bias")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def inputs(b=4, c=3, r=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, r, r, generator=g), torch.rand(b, generator=g) * 2 + 0.05


def expected_official_shapes(label_dim=10, c=3, mc=128, mult=(2, 2, 2), blocks=4, attn=(16,), res=32, aug=9):
    """The EDM SongUNet state-dict names and shapes, enumerated from EDM's naming rules."""
    s: dict[str, tuple] = {}
    emb = 4 * mc

    def lin(n, i, o, bias=True):
        s[f"{n}.weight"] = (o, i)
        if bias:
            s[f"{n}.bias"] = (o,)

    def conv(n, i, o, k, resample=False):
        s[f"{n}.weight"], s[f"{n}.bias"] = (o, i, k, k), (o,)
        if resample:
            s[f"{n}.resample_filter"] = (1, 1, 2, 2)

    def gn(n, ch):
        s[f"{n}.weight"] = s[f"{n}.bias"] = (ch,)

    def block(n, i, o, attention=False, resample=False):
        gn(f"{n}.norm0", i), conv(f"{n}.conv0", i, o, 3, resample), lin(f"{n}.affine", emb, o)
        gn(f"{n}.norm1", o), conv(f"{n}.conv1", o, o, 3)
        if i != o or resample:
            conv(f"{n}.skip", i, o, 1, resample)
        if attention:
            gn(f"{n}.norm2", o), conv(f"{n}.qkv", o, 3 * o, 1), conv(f"{n}.proj", o, o, 1)

    if label_dim:
        lin("model.map_label", label_dim, mc)
    if aug:
        lin("model.map_augment", aug, mc, bias=False)
    lin("model.map_layer0", mc, emb), lin("model.map_layer1", emb, emb)
    ch, skips = c, []
    for lvl, m in enumerate(mult):
        r = res >> lvl
        if lvl == 0:
            conv(f"model.enc.{r}x{r}_conv", ch, mc, 3)
            ch = mc
        else:
            block(f"model.enc.{r}x{r}_down", ch, ch, resample=True)
        skips.append(ch)
        for i in range(blocks):
            block(f"model.enc.{r}x{r}_block{i}", ch, mc * m, attention=r in attn)
            ch = mc * m
            skips.append(ch)
    for lvl in reversed(range(len(mult))):
        r = res >> lvl
        if lvl == len(mult) - 1:
            block(f"model.dec.{r}x{r}_in0", ch, ch, attention=True), block(f"model.dec.{r}x{r}_in1", ch, ch)
        else:
            block(f"model.dec.{r}x{r}_up", ch, ch, resample=True)
        for i in range(blocks + 1):
            block(f"model.dec.{r}x{r}_block{i}", ch + skips.pop(), mc * mult[lvl], attention=i == blocks and r in attn)
            ch = mc * mult[lvl]
    gn(f"model.dec.{res}x{res}_aux_norm", ch), conv(f"model.dec.{res}x{res}_aux_conv", ch, c, 3)
    return s


@pytest.mark.parametrize("conditional", [True, False])
def test_full_size_matches_official_names_shapes_and_size(conditional):
    net = build_denoiser(ddpmpp_config(10, conditional=conditional)).eval()
    shapes = {k: tuple(v.shape) for k, v in edm_state_dict(net).items()}
    assert shapes == expected_official_shapes(label_dim=10 if conditional else 0)
    for key, shape in {
        "model.map_label.weight": (128, 10),
        "model.map_augment.weight": (128, 9),
        "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
        "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
        "model.dec.8x8_in0.proj.weight": (256, 256, 1, 1),
        "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3),
    }.items():
        if conditional or "map_label" not in key:
            assert shapes[key] == shape
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 55.7e6) < 0.05e6  # EDM reports 55.7M for the CIFAR-10 DDPM++
    assert n == sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith("resample_filter"))
    if not conditional:
        return
    # the full-size network loads official-named weights and runs one pass
    other = build_denoiser(ddpmpp_config(10)).eval()
    load_edm_state_dict(other, edm_state_dict(net))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y1, y2 = net(x, torch.tensor([0.5]), torch.tensor([3])), other(x, torch.tensor([0.5]), torch.tensor([3]))
    assert y1.shape == (1, 3, 32, 32) and torch.equal(y1, y2)


def test_resampling_and_embedding_semantics():
    x = torch.randn(2, 4, 8, 8)
    down, up = ResampleConv2d(4, 4, 1, "down"), ResampleConv2d(4, 4, 1, "up")
    for conv in (down, up):
        with torch.no_grad():
            conv.weight.copy_(torch.eye(4)[:, :, None, None]), conv.bias.zero_()
    assert torch.allclose(down(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-6)
    emb = PositionalEmbedding(8)(torch.tensor([0.0, 2.0]))
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = 1e-4 ** (torch.arange(4) / 3.0)  # endpoint: the last frequency is 1 / max_positions
    assert torch.allclose(emb[1], torch.cat([(2 * freqs).sin(), (2 * freqs).cos()]))


def test_labels_null_is_zero_one_hot_and_invalid_labels_raise():
    net = tiny()
    x, s = inputs()
    null = torch.full((4,), 3)
    with torch.no_grad():
        by_null, by_none = net(x, s, null), net(x, s, None)
        c_in = (1 / (0.25 + s**2).sqrt()).reshape(-1, 1, 1, 1)
        zero = net.backbone.forward_edm(c_in * x, s.log() / 4, torch.zeros(4, 3))
        per_class = net(x, s, torch.tensor([0, 1, 2, 0]))
    assert torch.equal(by_null, by_none)
    c_skip = 0.25 / (s**2 + 0.25)
    c_out = s * 0.5 / (s**2 + 0.25).sqrt()
    assert torch.allclose(by_null, c_skip.reshape(-1, 1, 1, 1) * x + c_out.reshape(-1, 1, 1, 1) * zero, atol=1e-5)
    assert not torch.allclose(per_class, by_null)
    with pytest.raises(ValueError, match=r"labels must be 4 ints in \[0, 3\]"):
        net(x, s, torch.tensor([0, 1, 4, 0]))
    uncond = tiny(conditional=False)
    with torch.no_grad():
        assert torch.equal(uncond(x, s, torch.tensor([0, 1, 2, 3])), uncond(x, s, None))


def test_builder_validates_backbone_keys():
    with pytest.raises(ValueError, match="unknown ddpmpp backbone keys"):
        build_denoiser(
            DenoiserConfig(
                arch="ddpmpp", num_classes=3, img_channels=3, img_resolution=8, backbone={**TINY, "widht": 3}
            )
        )
    with pytest.raises(ValueError, match="label_dim must be num_classes"):
        build_denoiser(ddpmpp_config(3, img_resolution=8, label_dim=5, **TINY))
    with pytest.raises(ValueError, match="no label input"):
        build_denoiser(ddpmpp_config(3, "multi", img_resolution=8, label_dim=3, **TINY))


def test_strict_official_loading_names_the_problem():
    src, dst = tiny(seed=0), tiny(seed=5)
    official = edm_state_dict(src)
    assert all(k.startswith("model.") for k in official)
    load_edm_state_dict(dst, official)
    x, s = inputs()
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        assert torch.equal(src(x, s, y), dst(x, s, y))
    key = "model.enc.8x8_block0.conv0.weight"
    with pytest.raises(ValueError, match=r"1 missing keys: model\.enc\.8x8_block0\.conv0\.weight"):
        load_edm_state_dict(dst, {k: v for k, v in official.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected keys: model\.extra\.weight"):
        load_edm_state_dict(dst, {**official, "model.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"wrong shapes: model\.map_label\.weight \(file \(8, 4\)"):
        load_edm_state_dict(dst, {**official, "model.map_label.weight": torch.zeros(8, 4)})
    with pytest.raises(ValueError, match=r"unexpected keys: backbone\.map_layer0\.bias"):
        load_edm_state_dict(dst, {**official, "backbone.map_layer0.bias": official["model.map_layer0.bias"]})
    filt = "model.enc.4x4_down.conv0.resample_filter"
    with pytest.raises(ValueError, match="resample filters that differ"):
        load_edm_state_dict(dst, {**official, filt: official[filt] * 2})


@pytest.mark.parametrize("conditional", [True, False])
def test_multihead_widened_from_single_starts_as_the_unconditional_output(conditional):
    single = tiny(conditional=conditional)
    multi = build_denoiser(ddpmpp_config(3, "multi", img_resolution=8, **TINY)).eval()
    dropped = widen_to_multihead(multi, single.state_dict())
    assert dropped == (["backbone.map_label.bias", "backbone.map_label.weight"] if conditional else [])
    assert multi.backbone.dec["8x8_aux_conv"].weight.shape[0] == 4 * 3
    x, s = inputs()
    with torch.no_grad():
        every = multi.denoise_all(x, s, torch.arange(4))
        ref = single(x, s, None)
    assert every.shape == (4, 4, 3, 8, 8)
    for head in range(4):
        assert torch.allclose(every[:, head], ref, atol=1e-5)
    with pytest.raises(ValueError, match="cannot widen"):
        widen_to_multihead(multi, {k: v for k, v in single.state_dict().items() if "enc.8x8_conv" not in k})


def test_paired_denoiser_routes_null_to_unconditional():
    cond, uncond = tiny(seed=0), tiny(conditional=False, seed=1)
    pair = PairedDenoiser(cond, uncond)
    x, s = inputs()
    y = torch.tensor([3, 0, 3, 2])
    with torch.no_grad():
        mixed = pair(x, s, y)
        rows = [
            (uncond if int(l) == 3 else cond)(x[i : i + 1], s[i : i + 1], None if int(l) == 3 else y[i : i + 1])
            for i, l in enumerate(y)
        ]
        assert torch.allclose(mixed, torch.cat(rows), atol=1e-6)
        assert torch.equal(pair(x, s, None), uncond(x, s, None))
        both = pair.denoise_all(x, s, torch.tensor([1, 3]))
        assert torch.allclose(both[:, 0], cond(x, s, torch.ones(4, dtype=torch.long)), atol=1e-6)
        assert torch.allclose(both[:, 1], uncond(x, s, None), atol=1e-6)
        assert torch.equal(pair.denoise_all(x, s), cond.denoise_all(x, s))
    assert pair.passes_per_denoise_all(3) == 3
    with pytest.raises(ValueError, match="same images"):
        PairedDenoiser(cond, tiny(img_channels=1))


def test_fp16_flag_is_a_no_op_off_cuda():
    net = tiny()
    x, s = inputs()
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = net(x, s, y)
        set_fp16(net, True)
        assert net.backbone.use_fp16
        assert torch.equal(net(x, s, y), ref)


def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    """benchmarks/timing/gpu_ddpmpp.py with tiny settings: every figure is produced (GPU-only ones say why not)."""
    import json

    from .conftest import load_benchmark

    bench = load_benchmark("gpu_ddpmpp")
    out = tmp_path / "bench.json"
    result = bench.main(
        ["--device", "cpu", "--T", "1", "--batch", "1", "--width", "8", "--repeats", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["params"] == sum(p.numel() for p in build_denoiser(ddpmpp_config(10, model_channels=8)).parameters())
    assert result["dc"]["images_per_s"] > 0 and result["dc"]["passes_per_s"] == pytest.approx(
        10 * result["dc"]["images_per_s"]
    )
    assert result["attack"]["grad_finite"] and result["attack"]["peak_gpu_memory_gib"] is None
    assert "seconds_per_step" in result["lm"] or "skipped" in result["lm"]
    assert "skipped" in result["precision"]
    # the same figures for an imported/saved checkpoint instead of random weights
    from rdc_lib.models import save_denoiser

    cfg = ddpmpp_config(10, model_channels=4, channel_mult=[1, 2, 2], num_blocks=1)
    ckpt = save_denoiser(tmp_path / "net.safetensors", build_denoiser(cfg), cfg)
    loaded = bench.main(["--device", "cpu", "--T", "1", "--batch", "1", "--repeats", "1", "--checkpoint", str(ckpt)])
    assert loaded["checkpoint"] == str(ckpt) and loaded["params"] == sum(
        p.numel() for p in build_denoiser(cfg).parameters()
    )
