"""Adaptive objectives and the unseen threat model (issue 10): the Lagrangian attack on LM, selective EOT
and StAdv. Runs on the shipped digits CNN, a tiny random denoiser and a stochastic toy model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rdc_lib.attacks import (
    ADAPTIVE_ATTACK_NAMES,
    APGD,
    PGD,
    LagrangianAPGD,
    LagrangianPGD,
    SelectiveEOTAPGD,
    SelectiveEOTPGD,
    StAdv,
    aggregate_eot,
    build_attack,
    expected_unconditional_loss,
    flow_warp,
    per_example_norm,
    run_ensemble,
)
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier

from .conftest import tiny_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return load_classifier(checkpoint_path("digits_cnn"))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "test")
    return x[:64], y[:64]


@pytest.fixture(scope="module")
def denoiser() -> nn.Module:
    return tiny_denoiser()


class Counting(nn.Module):
    """Records every batch size and the train flag each call sees."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        self.modes.append(self.training)
        return self.model(x)


class HiddenVulnerability(nn.Module):
    """A 2-class stochastic toy whose randomness hides its vulnerability (true class 0).

    Every row draws its own bit from the model's generator: with probability ``q`` the draw is *weak*,
    margin 2 - 10 s, breakable by moving s = sum(x - 0.5) up; otherwise it is *strong*, margin 100 + 200 s,
    steep but never broken for |s| <= 0.4 (4 pixels, l_inf 0.1). Averaged over draws, the strong draws'
    gradient dominates and points the other way, so mean EOT walks away from the weak draws' failure.
    """

    def __init__(self, q: float = 0.3, seed: int = 0):
        super().__init__()
        self.q = q
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        weak = torch.rand(x.shape[0], generator=self.gen) < self.q
        s = (x - 0.5).flatten(1).sum(1)
        m = torch.where(weak, 2 - 10 * s, 100 + 200 * s)
        return torch.stack([m / 2, -m / 2], dim=1)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def make(name: str, model, *, denoiser=None, seed: int = 0, **kw):
    if name in ("pgd-lagrange", "apgd-lagrange"):
        kw.update(denoiser=denoiser, lam=0.1)
    if name in ("pgd-seot", "apgd-seot"):
        kw.setdefault("eot", 2)
    eps = 0.05 if name == "stadv" else 0.15
    return build_attack(name, model, norm="linf", eps=eps, steps=10, seed=seed, **kw)


# ---------------------------------------------------------------- the contract over the new attacks


@pytest.mark.parametrize("name", ADAPTIVE_ATTACK_NAMES)
def test_adaptive_attack_contract(name, cnn, digits, denoiser):
    x, y = digits[0][:32], digits[1][:32]
    model = Counting(cnn).train()
    attack = make(name, model, denoiser=denoiser)
    res = attack.run(x, y)
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype and xa.min() >= 0 and xa.max() <= 1
    if name != "stadv":
        assert (per_example_norm(xa - x, "linf").flatten() <= 0.15 + 1e-6).all()
    assert model.training and not any(model.modes)
    assert sum(model.rows) == int(res.queries.sum()) and (res.queries <= res.max_queries).all()
    assert torch.equal(res.success, cnn(xa).argmax(1) != y)
    assert accuracy(cnn, xa, y) <= res.clean_accuracy - 0.2, f"{name} barely hurts an undefended CNN"
    again = make(name, cnn, denoiser=denoiser).run(x, y)
    assert torch.equal(again.x_adv, xa) and torch.equal(again.queries, res.queries)
    other = make(name, cnn, denoiser=denoiser, seed=1)(x, y)
    assert not torch.equal(other, xa)
    one = make(name, cnn, denoiser=denoiser)(x[:1], y[:1])
    assert one.shape == (1, 1, 8, 8)
    state = torch.random.get_rng_state()
    make(name, cnn, denoiser=denoiser)(x[:4], y[:4])
    assert torch.equal(state, torch.random.get_rng_state()), "attacks must not touch the global RNG"


def test_new_attacks_run_in_the_ensemble(cnn, digits, denoiser):
    x, y = digits
    attacks = [("stadv", make("stadv", cnn)), ("pgd-lagrange", make("pgd-lagrange", cnn, denoiser=denoiser))]
    res = run_ensemble(cnn, x, y, attacks, chunk=32, progress=False)
    assert res.attack_names == ["stadv", "pgd-lagrange"]
    assert res.robust_accuracy < res.clean_accuracy - 0.3
    assert (res.broken_by == 0).any() and (res.broken_by == 1).any()


# ---------------------------------------------------------------- Lagrangian attack


def test_lagrangian_with_lam_zero_is_plain_pgd_and_apgd(cnn, digits, denoiser):
    x, y = digits
    for restarts in (1, 2):
        a = PGD(cnn, eps=0.1, steps=5, restarts=restarts, seed=3).run(x, y)
        b = LagrangianPGD(cnn, denoiser=denoiser, lam=0.0, eps=0.1, steps=5, restarts=restarts, seed=3).run(x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries)
        assert a.loss_history == b.loss_history
    a = APGD(cnn, eps=0.1, steps=8, loss="dlr", seed=3).run(x, y)
    b = LagrangianAPGD(cnn, denoiser=denoiser, lam=0.0, eps=0.1, steps=8, loss="dlr", seed=3).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv)


def test_lagrangian_breaks_the_cnn_and_keeps_images_likely(cnn, digits, denoiser):
    x, y = digits
    clean = accuracy(cnn, x, y)
    pgd = PGD(cnn, eps=0.1, steps=10, seed=0).run(x, y)
    lag = LagrangianPGD(cnn, denoiser=denoiser, lam=0.1, eps=0.1, steps=10, seed=0).run(x, y)
    assert lag.robust_accuracy <= clean - 0.25
    assert lag.robust_accuracy <= pgd.robust_accuracy + 0.15  # a mild penalty costs little strength
    # a strong penalty: lower diffusion loss than plain PGD, measured with common random numbers
    strong = LagrangianPGD(cnn, denoiser=denoiser, lam=10.0, eps=0.1, steps=10, seed=0).run(x, y)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    l_pgd = expected_unconditional_loss(denoiser, pgd.x_adv, draws=8, generator=gen())
    l_lag = expected_unconditional_loss(denoiser, strong.x_adv, draws=8, generator=gen())
    assert float(l_lag.mean()) < float(l_pgd.mean()) - 0.01
    assert strong.robust_accuracy < clean  # it still attacks
    # the loss history records the objective J = L_cls - lam * L_diff, below the CE of plain PGD
    assert len(strong.loss_history) > 0 and math.isfinite(strong.loss_history[0])


class ModeRecorder(nn.Module):
    """A denoiser wrapper that records the train flag at every call."""

    def __init__(self, den: nn.Module):
        super().__init__()
        self.den = den
        self.img_channels, self.img_resolution = den.img_channels, den.img_resolution
        self.modes: list[bool] = []

    def forward(self, x, sigma, labels=None):
        self.modes.append(self.training)
        return self.den(x, sigma, labels)


def test_lagrangian_puts_the_denoiser_in_eval_mode_and_restores_it(cnn, digits):
    x, y = digits[0][:8], digits[1][:8]
    rec = ModeRecorder(tiny_denoiser()).train()
    LagrangianPGD(cnn, denoiser=rec, lam=1.0, eps=0.1, steps=2, seed=0)(x, y)
    assert rec.modes and not any(rec.modes) and rec.training and rec.den.training


def test_lagrangian_uses_more_diffusion_draws_deterministically(cnn, digits, denoiser):
    x, y = digits[0][:8], digits[1][:8]
    a = LagrangianPGD(cnn, denoiser=denoiser, lam=1.0, eps=0.1, steps=3, diffusion_draws=3, seed=0)(x, y)
    b = LagrangianPGD(cnn, denoiser=denoiser, lam=1.0, eps=0.1, steps=3, diffusion_draws=3, seed=0)(x, y)
    c = LagrangianPGD(cnn, denoiser=denoiser, lam=1.0, eps=0.1, steps=3, diffusion_draws=1, seed=0)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- selective EOT


def test_aggregate_eot_rules():
    gen = torch.Generator().manual_seed(0)
    losses, grads = torch.randn(5, 3, generator=gen), torch.randn(5, 3, 2, 2, generator=gen)
    mean = aggregate_eot(losses, grads, aggregation="mean")
    torch.testing.assert_close(mean.grad, grads.mean(0))
    torch.testing.assert_close(mean.objective, losses.mean(0))
    hot = aggregate_eot(losses, grads, temperature=1e6)  # T -> inf: plain EOT
    torch.testing.assert_close(hot.grad, grads.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hot.objective, losses.mean(0), rtol=1e-4, atol=1e-5)
    inf = aggregate_eot(losses, grads, temperature=math.inf)
    torch.testing.assert_close(inf.grad, grads.mean(0))
    one = aggregate_eot(losses[:1], grads[:1], temperature=0.3)  # M = 1: the draw itself
    assert torch.equal(one.weights, torch.ones(1, 3)) and torch.equal(one.grad, grads[0])
    cold = aggregate_eot(losses, grads, temperature=1e-4)  # T -> 0: the highest-loss draw
    best = losses.argmax(0)
    torch.testing.assert_close(cold.grad, grads[best, torch.arange(3)])
    top = aggregate_eot(losses, grads, temperature=math.inf, top_k=2)
    assert ((top.weights > 0).sum(0) == 2).all()
    torch.testing.assert_close(top.weights.sum(0), torch.ones(3))
    kept = losses.topk(2, dim=0).indices
    torch.testing.assert_close(top.grad, grads[kept, torch.arange(3)].mean(0))
    sel = aggregate_eot(losses, grads, temperature=0.7)
    torch.testing.assert_close(sel.weights, (losses / 0.7).softmax(0))
    torch.testing.assert_close(sel.weights.sum(0), torch.ones(3))


def test_selective_gradient_is_the_gradient_of_the_soft_maximum():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 6, generator=gen)  # 4 draws of a loss of x in R^6
    x = torch.randn(2, 6, generator=gen, requires_grad=True)
    losses = torch.tanh(x @ w.T).T * 3  # (M=4, n=2)
    temperature = 0.5
    soft_max = temperature * ((losses / temperature).logsumexp(0) - math.log(4))
    (expected,) = torch.autograd.grad(soft_max.sum(), x, retain_graph=True)
    grads = torch.stack([torch.autograd.grad(losses[d].sum(), x, retain_graph=True)[0] for d in range(4)])
    agg = aggregate_eot(losses.detach(), grads, temperature=temperature)
    torch.testing.assert_close(agg.grad, expected)
    torch.testing.assert_close(agg.objective, soft_max.detach())


def test_selective_eot_reduces_to_pgd(cnn, digits):
    x, y = digits[0][:16], digits[1][:16]
    toy_x = torch.full((12, 1, 2, 2), 0.5)
    toy_y = torch.zeros(12, dtype=torch.int64)
    # M = 1, aggregation 'mean' and T = inf reproduce PGD bit for bit (on a stochastic model too)
    for kw, model, xs, ys in [
        (dict(eot=1), cnn, x, y),
        (dict(eot=4, aggregation="mean"), None, toy_x, toy_y),
        (dict(eot=4, temperature=math.inf), None, toy_x, toy_y),
    ]:
        m1, m2 = (model, model) if model is not None else (HiddenVulnerability(seed=5), HiddenVulnerability(seed=5))
        a = PGD(m1, eps=0.1, steps=5, loss="margin", eot=kw["eot"], seed=2).run(xs, ys)
        b = SelectiveEOTPGD(m2, eps=0.1, steps=5, loss="margin", seed=2, **kw).run(xs, ys)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries), kw
    a = APGD(cnn, eps=0.1, steps=6, seed=2).run(x, y)
    b = SelectiveEOTAPGD(cnn, eps=0.1, steps=6, seed=2, temperature=0.5).run(x, y)  # eot = 1
    assert torch.equal(a.x_adv, b.x_adv)


def _broken_in_some_draw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 40) -> torch.Tensor:
    with torch.no_grad():
        preds = torch.stack([model(x).argmax(1) for _ in range(draws)])
    return (preds != y).any(0)


def test_selective_eot_finds_the_hidden_vulnerability():
    x = torch.full((16, 1, 2, 2), 0.5)
    y = torch.zeros(16, dtype=torch.int64)
    judge = HiddenVulnerability(seed=99)
    mean = PGD(HiddenVulnerability(seed=1), eps=0.1, steps=20, loss="margin", eot=8, seed=0).run(x, y)
    sel = SelectiveEOTPGD(
        HiddenVulnerability(seed=1), eps=0.1, steps=20, loss="margin", eot=8, temperature=1.0, seed=0
    ).run(x, y)
    broken_mean = _broken_in_some_draw(judge, mean.x_adv, y)
    broken_sel = _broken_in_some_draw(judge, sel.x_adv, y)
    assert broken_sel.float().mean() >= 0.9, "selective EOT should break the weak draws of almost every example"
    assert broken_mean.float().mean() <= 0.1, "mean EOT follows the strong draws and misses the weak ones"
    # the selective points move along the weak draws' direction, the mean-EOT points away from it
    assert ((sel.x_adv - 0.5).flatten(1).sum(1) > 0.2).float().mean() >= 0.9
    assert ((mean.x_adv - 0.5).flatten(1).sum(1) < 0.2).all()
    topk = SelectiveEOTPGD(
        HiddenVulnerability(seed=1), eps=0.1, steps=20, loss="margin", eot=8, temperature=math.inf, top_k=1, seed=0
    ).run(x, y)
    assert _broken_in_some_draw(judge, topk.x_adv, y).float().mean() >= 0.9


# ---------------------------------------------------------------- StAdv


def test_flow_warp_identity_and_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 8, 8, generator=gen)
    assert torch.equal(flow_warp(x, torch.zeros(3, 2, 8, 8)), x)  # exact for power-of-two sizes
    odd = torch.rand(2, 1, 5, 7, generator=gen)
    torch.testing.assert_close(flow_warp(odd, torch.zeros(2, 2, 5, 7)), odd, atol=1e-6, rtol=0)
    # a uniform flow of one pixel (2 / W normalised units) along x reads the right neighbour
    shift = torch.zeros(3, 2, 8, 8)
    shift[:, 0] = 2 / 8
    torch.testing.assert_close(flow_warp(x, shift)[..., :-1], x[..., 1:])
    torch.testing.assert_close(flow_warp(x, shift)[..., -1], x[..., -1])  # 'border' padding repeats the edge
    # half a pixel along y: the average of vertical neighbours
    half = torch.zeros(3, 2, 8, 8)
    half[:, 1] = 1 / 8
    torch.testing.assert_close(flow_warp(x, half)[..., :-1, :], (x[..., :-1, :] + x[..., 1:, :]) / 2)


def test_stadv_stays_in_the_flow_bound_and_breaks_the_cnn(cnn, digits):
    x, y = digits
    attack = StAdv(cnn, bound=0.05, steps=100, seed=0)
    out = attack.run_with_flow(x, y)
    res, flow = out.result, out.flow
    assert flow.shape == (64, 2, 8, 8) and flow.abs().max() <= 0.05 + 1e-7
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    torch.testing.assert_close(flow_warp(x, flow).clamp(0, 1), res.x_adv, atol=0, rtol=0)
    assert (flow[~res.clean_correct] == 0).all()
    assert res.robust_accuracy <= res.clean_accuracy - 0.25, "StAdv at bound 0.05 should hurt the plain CNN"
    # 0.05 normalised units = 0.2 pixels on 8x8: the images change, but by less than a pixel shift
    assert (per_example_norm(res.x_adv - x, "linf").flatten() <= 0.5).all()
    zero = StAdv(cnn, bound=0.0, steps=5, seed=0).run_with_flow(x, y)
    assert torch.equal(zero.result.x_adv, x) and (zero.flow == 0).all()
    smaller = StAdv(cnn, bound=0.01, steps=100, seed=0).run(x, y)
    assert smaller.robust_accuracy >= res.robust_accuracy


def test_stadv_counts_queries_and_stops_early(cnn, digits):
    x, y = digits
    model = Counting(cnn)
    res = StAdv(model, bound=0.05, steps=20, eot=2, seed=0).run(x, y)
    assert sum(model.rows) == int(res.queries.sum())
    assert res.max_queries == 1 + 20 * 2 + 1 and (res.queries <= res.max_queries).all()
    assert res.query_ratio < 0.9
    assert build_attack("stadv", cnn, norm="l2", eps=0.05, steps=20, eot=2, seed=0).norm == "flow"


# ---------------------------------------------------------------- validation


def test_bad_arguments_raise_clear_errors(cnn, digits, denoiser):
    x, y = digits
    with pytest.raises(ValueError, match="needs denoiser="):
        build_attack("pgd-lagrange", cnn, eps=0.1)
    with pytest.raises(ValueError, match="needs denoiser="):
        LagrangianPGD(cnn, denoiser=None, eps=0.1)
    with pytest.raises(ValueError, match="lam .* >= 0"):
        LagrangianPGD(cnn, denoiser=denoiser, lam=-1.0, eps=0.1)
    with pytest.raises(ValueError, match="lam"):
        build_attack("apgd-lagrange", cnn, eps=0.1, denoiser=denoiser, lam=float("nan"))
    with pytest.raises(ValueError, match="sigma_range"):
        LagrangianPGD(cnn, denoiser=denoiser, eps=0.1, sigma_range=(0.0, 0.5))
    with pytest.raises(ValueError, match="diffusion_draws"):
        LagrangianPGD(cnn, denoiser=denoiser, eps=0.1, diffusion_draws=0)
    with pytest.raises(ValueError, match="expected 16x16"):
        big = tiny_denoiser()
        big.img_resolution = 16
        LagrangianPGD(cnn, denoiser=big, eps=0.1, steps=1)(x[:2], y[:2])
    with pytest.raises(ValueError, match="bound .* \\[0, 2\\]"):
        StAdv(cnn, bound=-0.05)
    with pytest.raises(ValueError, match="bound"):
        build_attack("stadv", cnn, eps=3.0)
    with pytest.raises(ValueError, match="valid choices: border, zeros, reflection"):
        StAdv(cnn, padding_mode="wrap")
    with pytest.raises(ValueError, match="steps"):
        StAdv(cnn, steps=0)
    with pytest.raises(ValueError, match="flow must have shape"):
        flow_warp(x[:2], torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="valid choices: mean, selective"):
        SelectiveEOTPGD(cnn, eps=0.1, aggregation="max")
    with pytest.raises(ValueError, match="temperature"):
        build_attack("pgd-seot", cnn, eps=0.1, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SelectiveEOTAPGD(cnn, eps=0.1, top_k=0)
    with pytest.raises(ValueError, match="valid choices: .*square, pgd-lagrange, apgd-lagrange, pgd-seot"):
        build_attack("diffhammer", cnn, eps=0.1)
