"""The speed-ups of the strongest protocol (issue 19) give the same gradients and the same attack results.

- the DC keeps its forward graph when one chunk holds every level (no recomputation, same gradient);
- exact LM gradients keep the unrolled graph for small inputs (same gradient as the per-step recomputation);
- the N-evaluation classifies all n_eval copies in batched calls (same predictions for deterministic and
  fixed-randomness defenses, independent draws per copy for stochastic ones);
- an APGD attack on the RDC with every fast path on gives the same adversarial images and successes as
  with the memory-bounded paths (fixed randomness, float64).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rdc_lib.attacks import build_attack
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.defenses.rdc import RobustDiffusionClassifier
from rdc_lib.diffusion.lm import LMConfig, draw_lm_noise
from rdc_lib.diffusion.lm_grad import LM_UNROLL_MAX_ELEMENTS, lm_exact, lm_unrolls
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.evaluation.prediction import n_evaluate, predict

from .conftest import tiny_denoiser

torch.set_num_threads(1)


def images(b: int, seed: int = 0, dtype=torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, 8, 8, generator=g, dtype=dtype) * 0.8 + 0.1


class CountCalls:
    """Counts the network's passes: calls of its first convolution (every pass, single- or multi-head, runs it)."""

    def __init__(self, module: nn.Module):
        self.calls = 0
        first_conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
        self.handle = first_conv.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def __enter__(self) -> "CountCalls":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def dc_grad(dc: DiffusionClassifier, x: Tensor, w: Tensor) -> tuple[Tensor, int]:
    xg = x.clone().requires_grad_(True)
    with CountCalls(dc.denoiser) as count:
        (g,) = torch.autograd.grad((dc(xg) * w).sum(), xg)
    return g, count.calls


def test_dc_keeps_graph_when_one_chunk_fits(heads):
    net = tiny_denoiser(heads, dtype=torch.float64)
    x = images(3)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    one = DiffusionClassifier(net, make_grid(6), noise_mode="fixed")  # 4096 triples: one chunk
    many = DiffusionClassifier(net, make_grid(6), noise_mode="fixed", chunk_size=5)  # recomputes per chunk
    ref = DiffusionClassifier(net, make_grid(6), noise_mode="fixed", backward_mode="autograd")
    xg = x.clone().requires_grad_(True)
    noise = one.draw_noise(x)
    assert not one.recomputes_in_backward(xg, noise)
    assert many.recomputes_in_backward(xg, noise)
    assert not many.recomputes_in_backward(x, noise)  # no gradient needed: never the chunked path
    g_one, calls_one = dc_grad(one, x, w)
    g_many, calls_many = dc_grad(many, x, w)
    g_ref, calls_ref = dc_grad(ref, x, w)
    assert g_ref.norm() > 0
    assert (g_one - g_ref).norm() <= 1e-10 * g_ref.norm()
    assert (g_many - g_ref).norm() <= 1e-10 * g_ref.norm()
    # the one-chunk path runs the network as often as plain autograd; the chunked path runs it twice
    assert calls_one == calls_ref
    assert calls_many > calls_one


def test_lm_unroll_equals_recompute_and_saves_passes():
    net = tiny_denoiser("single", dtype=torch.float64)
    x = images(3, seed=2)
    cfg = LMConfig(steps=4, eta=0.1)
    g = torch.Generator().manual_seed(3)
    noise = draw_lm_noise(4, tuple(x.shape), generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    out, grads, calls = {}, {}, {}
    for mode in ("recompute", "unroll", "auto"):
        xg = x.clone().requires_grad_(True)
        with CountCalls(net) as count:
            y = lm_exact(net, xg, noise, cfg, lm_graph=mode)
            (grads[mode],) = torch.autograd.grad((y * v).sum(), xg)
        out[mode], calls[mode] = y.detach(), count.calls
    assert grads["recompute"].norm() > 0
    for mode in ("unroll", "auto"):
        assert torch.allclose(out[mode], out["recompute"], rtol=0, atol=1e-12)
        assert (grads[mode] - grads["recompute"]).norm() <= 1e-10 * grads["recompute"].norm()
    assert calls["unroll"] == cfg.steps  # each step's network pass once
    assert calls["recompute"] == 2 * cfg.steps  # forward, then again in the backward
    assert calls["auto"] == calls["unroll"]  # a small input unrolls


def test_lm_unrolls_rule_and_bad_mode():
    cfg = LMConfig(steps=5)
    small = torch.zeros(2, 1, 8, 8)
    big = torch.zeros(LM_UNROLL_MAX_ELEMENTS // (5 * 64) + 1, 1, 8, 8)
    assert lm_unrolls(small, cfg) and not lm_unrolls(big, cfg)
    assert lm_unrolls(big, cfg, "unroll") and not lm_unrolls(small, cfg, "recompute")
    with pytest.raises(ValueError, match="lm_graph"):
        lm_unrolls(small, cfg, "fast")
    with pytest.raises(ValueError, match="lm_graph"):
        RobustDiffusionClassifier(tiny_denoiser(), lm_graph="fast")


def rdc_pair(heads: str = "multi"):
    """(fast, memory-bounded) RDCs with the same network and fixed randomness, float64."""
    net = tiny_denoiser(heads, dtype=torch.float64)
    lm = LMConfig(steps=2, eta=0.1)
    fast = RobustDiffusionClassifier(
        net, DiffusionClassifier(net, make_grid(4), noise_mode="fixed"), lm=lm, noise_mode="fixed"
    )
    slow = RobustDiffusionClassifier(
        net,
        DiffusionClassifier(net, make_grid(4), noise_mode="fixed", chunk_size=3),
        lm=lm,
        noise_mode="fixed",
        lm_graph="recompute",
    )
    return fast, slow


def test_rdc_gradient_unchanged_by_fast_paths():
    fast, slow = rdc_pair()
    x = images(3, seed=4)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads, calls = [], []
    for model in (fast, slow):
        xg = x.clone().requires_grad_(True)
        with CountCalls(model.denoiser) as count:
            (g,) = torch.autograd.grad((model(xg) * w).sum(), xg)
        grads.append(g)
        calls.append(count.calls)
    assert grads[1].norm() > 0
    assert (grads[0] - grads[1]).norm() <= 1e-10 * grads[1].norm()
    assert calls[0] < calls[1]


def test_apgd_on_rdc_unchanged_by_fast_paths():
    """The same attack (same seed) against both code paths: identical successes and adversarial images."""
    fast, slow = rdc_pair()
    x = images(6, seed=6)
    with torch.no_grad():
        y = slow(x).argmax(1)  # clean-correct by construction; the attack then has work to do
    results = []
    for model in (fast, slow):
        attack = build_attack("apgd-ce", model, norm="linf", eps=0.15, steps=6, eot=2, verify=2, seed=0)
        results.append(attack.run(x, y))
    a, b = results
    assert b.success.any()  # the comparison is not vacuous: some images were broken
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.queries, b.queries)
    assert torch.allclose(a.x_adv, b.x_adv, rtol=0, atol=1e-9)


class NoisyLinear(nn.Module):
    """A stochastic toy defense: linear logits plus noise from its own generator (fresh per row and call)."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
        self.scale = scale
        self.gen = torch.Generator().manual_seed(1)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.w + self.scale * torch.randn(x.shape[0], 10, generator=self.gen)


def test_n_evaluate_matches_separate_calls():
    x = images(5, seed=7, dtype=torch.float32)
    det = NoisyLinear(0.0)
    loop = torch.stack([predict(det, x) for _ in range(4)])
    assert torch.equal(n_evaluate(det, x, 4), loop)
    assert torch.equal(n_evaluate(det, x, 4, batch_size=3), loop)  # batches that split copies
    fixed, _ = rdc_pair()
    x64 = x.double()
    loop = torch.stack([predict(fixed, x64) for _ in range(3)])
    assert torch.equal(n_evaluate(fixed, x64, 3), loop)


def test_n_evaluate_draws_fresh_randomness_per_copy():
    x = images(4, seed=8, dtype=torch.float32)
    preds = n_evaluate(NoisyLinear(50.0), x, 6)
    assert preds.shape == (6, 4)
    # with noise this large the copies of one image disagree: no copy reuses another's draw
    assert any(len(set(preds[:, j].tolist())) > 1 for j in range(4))
    assert not all(torch.equal(preds[0], preds[r]) for r in range(1, 6))
