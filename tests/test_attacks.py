"""Attack suite: one contract over every attack and both norms, loss/projection maths, cross-checks against
torchattacks, EOT/BPDA wrappers and the resumable ensemble. Runs on the shipped digits CNN (64 images)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rdc_lib.attacks import (
    APGD,
    ATTACK_NAMES,
    BPDA,
    EOT,
    FGSM,
    NORMS,
    PGD,
    AttackBudget,
    AttackResult,
    Square,
    apgd_checkpoints,
    autoattack_suite,
    build_attack,
    get_loss,
    per_example_norm,
    project,
    run_ensemble,
)
from rdc_lib.attacks.base import AttackContext
from rdc_lib.attacks.losses import dlr_loss, margin, margin_loss, targeted_dlr_loss
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier

EPS = {"linf": 0.15, "l2": 1.0}  # contract budgets: large enough that every attack hurts the plain CNN


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return load_classifier(checkpoint_path("digits_cnn"))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", "test")
    return x[:64], y[:64]


class Counting(nn.Module):
    """Wraps a model; records every batch size it is called with and the train flag it sees."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows: list[int] = []
        self.modes: list[bool] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        self.modes.append(self.training)
        return self.model(x)


def make(name: str, model, norm: str, *, seed: int = 0, eps: float | None = None, **kw):
    eps = EPS[norm] if eps is None else eps
    steps = 60 if name == "square" else 10
    if name == "apgd-t":
        kw.setdefault("n_target_classes", 3)
    return build_attack(name, model, norm=norm, eps=eps, steps=steps, seed=seed, **kw)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------- the contract, every attack x norm


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_contract(name, norm, cnn, digits):
    x, y = digits
    model = Counting(cnn).train()  # the attack must switch to eval and restore train
    res = make(name, model, norm).run(x, y)
    assert isinstance(res, AttackResult)
    xa = res.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert xa.min() >= 0 and xa.max() <= 1
    assert (per_example_norm(xa - x, norm).flatten() <= EPS[norm] * (1 + 1e-5) + 1e-6).all()
    assert model.training and not any(model.modes)
    # honest bookkeeping: every row the model saw is counted once, success matches the model's verdict
    assert sum(model.rows) == int(res.queries.sum())
    assert (res.queries <= res.max_queries).all() and res.queries.min() >= 1
    model.eval()
    clean, robust = accuracy(model, x, y), accuracy(model, xa, y)
    assert torch.equal(res.success, cnn(xa).argmax(1) != y)
    assert robust <= clean
    assert robust <= clean - (0.15 if name == "fgsm" else 0.3), f"{name} barely hurts an undefended CNN"
    # early stopping saves queries as soon as examples are broken
    if name != "fgsm":
        assert res.query_ratio < 0.9


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_misclassified_untouched_small_batches_and_determinism(name, norm, cnn, digits):
    x, y = digits[0][:7], digits[1][:7].clone()
    y[:3] = (cnn(x[:3]).argmax(1) + 1) % 10  # three examples the model gets wrong
    model = Counting(cnn)
    res = make(name, model, norm).run(x, y)
    assert torch.equal(res.x_adv[:3], x[:3]) and res.queries[:3].tolist() == [1, 1, 1]
    assert res.success[:3].all() and not res.clean_correct[:3].any()
    assert sum(model.rows) == int(res.queries.sum())
    again = make(name, cnn, norm).run(x, y)
    assert torch.equal(res.x_adv, again.x_adv) and torch.equal(res.queries, again.queries)
    one = make(name, cnn, norm)(x[3:4], y[3:4])
    assert one.shape == (1, 1, 8, 8)
    assert per_example_norm(one - x[3:4], norm).item() <= EPS[norm] * (1 + 1e-5) + 1e-6


def test_seed_and_generator_randomness(cnn, digits):
    x, y = digits[0][:16], digits[1][:16]
    a = PGD(cnn, eps=0.05, steps=3, seed=1)(x, y)
    b = PGD(cnn, eps=0.05, steps=3, seed=2)(x, y)
    assert not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(PGD(cnn, eps=0.05, steps=3, generator=g1)(x, y), PGD(cnn, eps=0.05, steps=3, generator=g2)(x, y))
    state = torch.random.get_rng_state()
    Square(cnn, eps=0.1, steps=5, seed=0)(x, y)
    assert torch.equal(state, torch.random.get_rng_state()), "attacks must not touch the global RNG"


def test_eps_zero_returns_inputs(cnn, digits):
    x, y = digits
    res = APGD(cnn, eps=0.0, steps=5).run(x, y)
    assert torch.equal(res.x_adv, x) and (res.queries == 1).all()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(norm="l1", eps=0.1), "valid choices: linf, l2"),
        (dict(norm="linf", eps=-0.1), "eps"),
        (dict(norm="linf", eps=1.5), "<= 1"),
        (dict(norm="l2", eps=float("nan")), "eps"),
        (dict(norm="linf", eps=0.1, steps=0), "steps"),
        (dict(norm="linf", eps=0.1, restarts=0), "restarts"),
        (dict(norm="linf", eps=0.1, eot=0), "eot"),
        (dict(norm="linf", eps=0.1, seed=1, generator=torch.Generator()), "either seed or generator"),
    ],
)
def test_bad_budget_raises(kwargs, match, cnn):
    with pytest.raises(ValueError, match=match):
        PGD(cnn, **kwargs)


def test_one_budget_for_every_attack_and_step_size_is_named_step_size(cnn):
    # the budget is validated in one place (AttackBudget) whichever attack takes it
    for cls in (PGD, APGD, Square, FGSM):
        with pytest.raises(ValueError, match="eot must be an int >= 1, got 0"):
            cls(cnn, eps=0.1, eot=0)
        with pytest.raises(TypeError, match="unexpected keyword arguments \\['epsilon'\\]; budget keywords: eps"):
            cls(cnn, epsilon=0.1)
    assert AttackBudget(eps=0.1, steps=7) == PGD(cnn, eps=0.1, steps=7).budget
    assert (PGD(cnn, eps=0.1).steps, APGD(cnn, eps=0.1).steps, Square(cnn, eps=0.1).steps) == (10, 100, 5000)
    # alpha is the certification failure probability: the attacks' step size is step_size, alpha= is refused
    assert PGD(cnn, eps=0.1, steps=4, step_size=0.03).step_size == 0.03
    assert PGD(cnn, eps=0.1, steps=4).step_size == pytest.approx(2.5 * 0.1 / 4)
    for build in (lambda **kw: PGD(cnn, eps=0.1, **kw), lambda **kw: build_attack("pgd", cnn, eps=0.1, **kw)):
        with pytest.raises(TypeError, match="alpha=: the step size is step_size="):
            build(alpha=0.01)
    with pytest.raises(ValueError, match="step_size must be a number > 0"):
        PGD(cnn, eps=0.1, step_size=0.0)


def test_bad_names_and_targeted_rules(cnn):
    with pytest.raises(ValueError, match="valid choices: fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, square"):
        build_attack("cw", cnn, eps=0.1)
    with pytest.raises(ValueError, match="valid choices: ce, dlr, margin"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="valid choices: ce, dlr"):
        APGD(cnn, eps=0.1, loss="margin")
    with pytest.raises(ValueError, match="target_rule; valid choices: top-k"):
        APGD(cnn, eps=0.1, loss="dlr", targeted=True)
    with pytest.raises(ValueError, match="valid choices: top-k"):
        APGD(cnn, eps=0.1, targeted=True, target_rule="random")
    with pytest.raises(ValueError, match="needs a target"):
        PGD(cnn, eps=0.1, loss="dlr-targeted")
    with pytest.raises(ValueError, match="only 9 wrong classes"):
        APGD(cnn, eps=0.1, targeted=True, target_rule="top-k", n_target_classes=10, steps=2)(
            *load_dataset("digits")[:2]
        )
    x, y = load_dataset("digits", "test")
    with pytest.raises(ValueError, match="expected images in"):
        PGD(cnn, eps=0.1)(x * 2, y[:360])
    with pytest.raises(ValueError, match="labels in"):
        PGD(cnn, eps=0.1)(x[:4], torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="logits of shape"):
        PGD(lambda t: t.flatten(1)[:, :5].sum(1), eps=0.1)(x[:4], y[:4])


# ---------------------------------------------------------------- maths of the building blocks


def test_l2_projection_is_per_example_for_any_batch():
    gen = torch.Generator().manual_seed(0)
    for b in (1, 4, 7):
        delta = torch.randn(b, 3, 5, 5, generator=gen) * torch.linspace(0.1, 3, b).reshape(b, 1, 1, 1)
        out = project(delta, "l2", 1.0)
        for i in range(b):
            expected = delta[i] * min(1.0, 1.0 / float(delta[i].norm()))
            torch.testing.assert_close(out[i], expected)
    assert per_example_norm(torch.ones(2, 1, 2, 2), "l2").shape == (2, 1, 1, 1)
    torch.testing.assert_close(project(torch.tensor([[[[2.0, -0.5]]]]), "linf", 1.0), torch.tensor([[[[1.0, -0.5]]]]))


def test_losses_against_hand_computation():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, -2.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(margin(z, y), torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(margin_loss(z, y), torch.tensor([-2.0, 2.0]))
    # DLR: -(z_y - max_other) / (z_pi1 - z_pi3)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 2.5, 2.0 / 2.0]))
    t = torch.tensor([2, 1])
    # targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(targeted_dlr_loss(z, y, t), torch.tensor([-2.5 / 3.25, 2.0 / 3.0]))
    assert torch.allclose(dlr_loss(z * 7 + 3, y), dlr_loss(z, y)), "DLR is shift and scale invariant"
    with pytest.raises(ValueError, match="target"):
        targeted_dlr_loss(z, y)
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(z[:, :2], y)


def test_apgd_checkpoints_follow_the_paper():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    w = [0] + apgd_checkpoints(1000)
    gaps = [b - a for a, b in zip(w, w[1:])]
    assert gaps[0] == 220 and all(g >= 60 for g in gaps) and gaps == sorted(gaps, reverse=True)


def test_eot_repeats_the_batch_and_averages_gradients():
    calls: list[int] = []
    signs: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=gen)

    def noisy(x):  # a stochastic linear model: every row gets its own random sign flip
        calls.append(x.shape[0])
        sign = torch.where(torch.rand(x.shape[0], 1, generator=gen) < 0.5, -1.0, 1.0)
        signs.append(sign)
        return sign * (x.flatten(1) @ weight.t())

    x = torch.rand(5, 1, 2, 2)
    y = torch.zeros(5, dtype=torch.int64)
    ctx = AttackContext(noisy, x, y, eot=8, generator=torch.Generator())
    loss, grad = ctx.loss_grad(torch.arange(5), x, get_loss("margin"))
    assert calls == [40] and (ctx.queries == 8).all()  # one batched forward of 8 copies
    drawn = signs[0].reshape(8, 5, 1)
    assert (drawn != drawn[:1]).any(), "copies must draw independent randomness"
    # replay the drawn signs: the EOT gradient is the per-example mean of the 8 copies' gradients
    expected_grad, expected_loss = torch.zeros_like(x), torch.zeros(5)
    for c in range(8):
        xc = x.clone().requires_grad_(True)
        lc = margin_loss(drawn[c] * (xc.flatten(1) @ weight.t()), y)
        (gc,) = torch.autograd.grad(lc.sum(), xc)
        expected_grad += gc / 8
        expected_loss += lc.detach() / 8
    torch.testing.assert_close(grad, expected_grad)
    torch.testing.assert_close(loss, expected_loss)
    calls.clear()
    avg = EOT(noisy, draws=6)(x)
    assert calls == [30] and avg.shape == (5, 3)
    torch.testing.assert_close(avg, (signs[-1].reshape(6, 5, 1) * (x.flatten(1) @ weight.t())).mean(0))


def test_pgd_with_eot_matches_plain_pgd_on_a_deterministic_model(cnn, digits):
    x, y = digits[0][:16], digits[1][:16]
    plain = PGD(cnn, eps=0.1, steps=4, seed=3)(x, y)
    eot = PGD(cnn, eps=0.1, steps=4, eot=3, seed=3)(x, y)
    torch.testing.assert_close(plain, eot)


def test_bpda_identity_and_approximate_backward():
    quantise = lambda t: torch.round(t * 4) / 4  # noqa: E731  (zero gradient almost everywhere)
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    w = torch.randn(3, 1, 4, 4)
    out = BPDA(quantise)(x)
    assert torch.equal(out, quantise(x.detach()))
    (g,) = torch.autograd.grad((out * w).sum(), x)
    torch.testing.assert_close(g, w)  # identity backward
    out2 = BPDA(quantise, backward_fn=lambda t: t**2)(x)
    (g2,) = torch.autograd.grad((out2 * w).sum(), x)
    torch.testing.assert_close(g2, 2 * x.detach() * w)  # backward through the approximation
    with pytest.raises(ValueError, match="keep the shape"):
        BPDA(lambda t: t.sum(dim=1))(x)


def test_bpda_lets_pgd_attack_a_quantised_classifier(cnn, digits):
    x, y = digits
    quantised = nn.Sequential(BPDA(lambda t: torch.round(t * 8) / 8), cnn)
    naive = lambda t: cnn(torch.round(t * 8) / 8)  # noqa: E731  gradient is zero: PGD is blind
    blind = PGD(naive, eps=0.15, steps=10, seed=0, random_start=False).run(x, y)
    bpda = PGD(quantised, eps=0.15, steps=10, seed=0, random_start=False).run(x, y)
    assert blind.robust_accuracy == blind.clean_accuracy
    assert bpda.robust_accuracy < blind.robust_accuracy - 0.2


# ---------------------------------------------------------------- independent implementation


@pytest.mark.parametrize("norm", NORMS)
def test_at_least_as_strong_as_torchattacks(norm, cnn, digits):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits
    eps = {"linf": 0.1, "l2": 0.5}[norm]
    steps, restarts = 10, 3
    step_size = 2.5 * eps / steps  # torchattacks calls it alpha
    slack = max(1, x.shape[0] // 100) / x.shape[0]
    reference_pgd = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    # deterministic start: the same algorithm, so ours must break a superset of theirs
    theirs = cnn(reference_pgd(cnn, eps=eps, alpha=step_size, steps=steps, random_start=False)(x, y)).argmax(1) != y
    ours = PGD(cnn, norm=norm, eps=eps, step_size=step_size, steps=steps, random_start=False).run(x, y).success
    assert (ours | ~theirs).all()
    # random starts: our restarts against the per-example worst case over as many torchattacks runs
    torch.manual_seed(0)
    robust = torch.ones_like(y, dtype=torch.bool)
    for _ in range(restarts):
        robust &= cnn(reference_pgd(cnn, eps=eps, alpha=step_size, steps=steps)(x, y)).argmax(1) == y
    ours = PGD(cnn, norm=norm, eps=eps, step_size=step_size, steps=steps, restarts=restarts, seed=0).run(x, y)
    assert ours.robust_accuracy <= robust.float().mean().item() + slack
    ref = torchattacks.APGD(
        cnn, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps, n_restarts=restarts, seed=0, loss="ce"
    )
    theirs = accuracy(cnn, ref(x, y), y)
    ours = APGD(cnn, norm=norm, eps=eps, steps=steps, restarts=restarts, seed=0).run(x, y)
    assert ours.robust_accuracy <= theirs + slack


# ---------------------------------------------------------------- ensemble


def test_ensemble_is_the_worst_case_per_example(cnn, digits):
    x, y = digits
    fgsm = FGSM(cnn, eps=0.1)
    pgd = PGD(cnn, eps=0.1, steps=5, random_start=False)  # deterministic: independent of the chunking
    res = run_ensemble(cnn, x, y, [("fgsm", fgsm), ("pgd", pgd)], chunk=24, progress=False)
    alone = [~a.run(x, y).success for a in (fgsm, pgd)]
    assert torch.equal(res.robust, alone[0] & alone[1])
    assert torch.equal(res.clean_correct, cnn(x).argmax(1) == y)
    broken = ~res.robust & res.clean_correct
    assert (cnn(res.x_adv).argmax(1)[broken] != y[broken]).all()
    assert set(res.broken_by[broken].tolist()) <= {0, 1} and (res.broken_by[~res.clean_correct] == -2).all()
    assert (res.broken_by[res.robust] == -1).all()
    assert (per_example_norm(res.x_adv - x, "linf") <= 0.1 + 1e-6).all()
    assert res.robust_accuracy == pytest.approx(accuracy(cnn, res.x_adv, y))
    assert 0 < res.early_stop_saving < 1 and res.queries_spent == int(res.queries.sum())
    summary = res.summary()
    assert summary["attacks"]["fgsm"]["broken"] + summary["attacks"]["pgd"]["broken"] == int(broken.sum())


def test_ensemble_resumes_after_an_interruption(cnn, digits, tmp_path):
    x, y = digits
    suite = autoattack_suite(cnn, norm="linf", eps=0.1, steps=5, square_queries=20, n_target_classes=2)
    assert [name for name, _ in suite] == ["apgd-ce", "apgd-dlr", "apgd-t", "square"]
    full = run_ensemble(cnn, x, y, suite, chunk=16, progress=False)

    class Interrupted(Exception):
        pass

    def stop_after_two(report):
        if report.chunk == 1:
            raise Interrupted

    state = tmp_path / "ens.state.pt"
    with pytest.raises(Interrupted):
        run_ensemble(cnn, x, y, suite, chunk=16, state_path=state, progress=False, callback=stop_after_two)
    seen = []
    resumed = run_ensemble(
        cnn, x, y, suite, chunk=16, state_path=state, progress=False, callback=lambda r: seen.append(r.chunk)
    )
    assert seen == [2, 3]  # finished chunks are not redone
    for key in ("x_adv", "robust", "clean_correct", "broken_by", "margin", "queries"):
        assert torch.equal(getattr(full, key), getattr(resumed, key)), key
    assert full.queries_per_attack == resumed.queries_per_attack
    with pytest.raises(ValueError, match="other attacks"):
        run_ensemble(cnn, x, y, suite[:2], chunk=16, state_path=state, progress=False)
    with pytest.raises(ValueError, match=r"other inputs"):
        run_ensemble(cnn, x.flip(0), y.flip(0), suite, chunk=16, state_path=state, progress=False)


def test_ensemble_validates_its_arguments(cnn, digits):
    x, y = digits
    with pytest.raises(ValueError, match="chunk must be"):
        run_ensemble(cnn, x, y, [("fgsm", FGSM(cnn, eps=0.1))], chunk=0)
    with pytest.raises(ValueError, match="empty"):
        run_ensemble(cnn, x, y, [], chunk=8)
    with pytest.raises(ValueError, match=r"\(name, Attack\)"):
        run_ensemble(cnn, x, y, [FGSM(cnn, eps=0.1)], chunk=8)
    with pytest.raises(ValueError, match="eot must be an int >= 1, got 0"):
        build_attack("square", cnn, eps=0.1, eot=0)
    assert build_attack("square", cnn, eps=0.1, eot=4).eot == 4  # Square averages its scores over the draws
    assert [n for n, _ in autoattack_suite(cnn, eps=0.1, eot=4, include_dlr=False)] == ["apgd-ce", "apgd-t", "square"]
    assert math.isfinite(APGD(cnn, eps=0.1).max_queries)
