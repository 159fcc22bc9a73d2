"""Verified early stopping against stochastic models (``verify=V``): an attack must not stop on a lucky draw.

The model under attack is the shipped digits CNN behind a coin: each call, each example independently
gets a large bonus on one random class with probability ``p``. A tiny eps cannot fool the CNN itself, so
every "success" is luck; with V = 1 the attacks report most examples broken, with V = 4 almost none.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdc_lib.attacks import APGD, PGD, autoattack_suite, build_attack, run_ensemble
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.evaluation import EvalConfig


class LuckyDraw(nn.Module):
    """CNN logits plus, with probability p per example and call, +50 on a uniformly drawn class."""

    def __init__(self, model: nn.Module, p: float, seed: int = 0):
        super().__init__()
        self.model, self.p = model, p
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        logits = self.model(x)
        b, k = logits.shape
        hit = torch.rand(b, generator=self.gen) < self.p
        cls = torch.randint(0, k, (b,), generator=self.gen)
        bonus = torch.zeros(b, k).scatter(1, cls[:, None], 50.0) * hit[:, None]
        return logits + bonus


@pytest.fixture(scope="module")
def setup(one_thread):
    cnn = load_classifier(checkpoint_path("digits_cnn"))
    x, y = load_dataset("digits", "test")
    x, y = x[:48], y[:48]
    with torch.no_grad():
        ok = cnn(x).argmax(1) == y
    return cnn, x[ok], y[ok]


def _fresh_accuracy(model: nn.Module, x, y, calls: int = 5) -> float:
    with torch.no_grad():
        return float(torch.stack([model(x).argmax(1) == y for _ in range(calls)]).float().mean())


def test_one_call_success_is_mostly_luck_and_verification_refuses_it(setup):
    cnn, x, y = setup
    lucky = LuckyDraw(cnn, p=0.3)
    naive = PGD(lucky, eps=1e-4, steps=10, seed=0).run(x, y)
    verified = PGD(lucky, eps=1e-4, steps=10, verify=4, seed=0).run(x, y)
    assert naive.success.float().mean() > 0.8  # "broken" by luck
    assert verified.success.float().mean() < 0.25  # needs 4 fooled calls in a row: p ~ 0.27 ** 4
    # the naive "adversarial" images are classified right by fresh calls: the success was not real
    assert _fresh_accuracy(lucky, naive.x_adv[naive.success], y[naive.success]) > 0.6
    # verification forwards are counted
    assert (verified.queries > naive.queries).float().mean() > 0.5


def test_verification_changes_nothing_on_a_deterministic_model(setup):
    cnn, x, y = setup
    for cls in (PGD, APGD):
        a = cls(cnn, eps=0.1, steps=8, seed=0).run(x, y)
        b = cls(cnn, eps=0.1, steps=8, verify=3, seed=0).run(x, y)
        assert torch.equal(a.success, b.success) and torch.allclose(a.x_adv, b.x_adv)
        assert torch.allclose(a.margin, b.margin, atol=1e-5)


def test_ensemble_verifies_with_the_attacks_draws(setup):
    cnn, x, y = setup
    lucky = LuckyDraw(cnn, p=0.3, seed=1)
    suite = [("pgd", build_attack("pgd", lucky, eps=1e-4, steps=5, verify=4, seed=0))]
    res = run_ensemble(lucky, x, y, suite, chunk=16, progress=False)
    kept = lambda r: float(r.robust[r.clean_correct].float().mean())  # clean check: verify calls (one for verify 1)
    assert kept(res) > 0.75
    # a one-call check (verify=1) lets luck through; the same draws as above, from a fresh generator
    lucky = LuckyDraw(cnn, p=0.3, seed=1)
    suite1 = [("pgd", build_attack("pgd", lucky, eps=1e-4, steps=5, seed=0))]
    res1 = run_ensemble(lucky, x, y, suite1, chunk=16, progress=False)
    assert kept(res1) < kept(res) - 0.3
    assert all(a.verify == 4 for _, a in autoattack_suite(cnn, eps=0.1, steps=2, verify=4, square_queries=5))


def test_bad_verify_is_refused(setup):
    cnn, _, _ = setup
    with pytest.raises(ValueError, match="verify must be an int >= 1"):
        PGD(cnn, eps=0.1, verify=0)
    with pytest.raises(ValueError, match="verify must be >= 1"):
        EvalConfig(verify=0)


def test_eval_keys_of_stored_results_stay_valid():
    # docs/raw/results.jsonl was written before ``verify`` existed: the default must not change its keys
    cfg = EvalConfig(
        defense="cnn",
        attack="autoattack",
        norm="linf",
        eps=0.1,
        n_images=64,
        steps=25,
        restarts=1,
        square_queries=500,
        n_target_classes=3,
        timesteps=16,
        heads="multi",
        noise_mode="fixed",
        grad_mode="exact",
        chunk=32,
        seed=0,
    )
    assert cfg.key() == "41e5ad902dde88d9"

    assert cfg.replace(verify=4).key() != cfg.key()


class NoGradient(nn.Module):
    """A defense whose logits are computed without a graph (a non-differentiable pipeline)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            return self.model(x)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd-ce", "apgd-t", "pgd-seot"])
def test_gradient_attack_on_a_gradient_free_defense_names_the_choices(name, setup):
    cnn, x, y = setup
    model = NoGradient(cnn)
    kw = {"n_target_classes": 2} if name == "apgd-t" else {}
    if name == "pgd-seot":
        kw["eot"] = 2
    with pytest.raises(ValueError, match="needs input gradients.*valid choices.*'square'.*BPDA"):
        build_attack(name, model, eps=0.1, steps=2, **kw).run(x[:4], y[:4])
    # the score-based attack runs
    assert build_attack("square", model, eps=0.1, steps=5).run(x[:4], y[:4]).x_adv.shape == x[:4].shape


def test_records_written_before_verify_still_resume(tmp_path):
    from rdc_lib.data import load_dataset
    from rdc_lib.evaluation.records import load_records, records_paths, save_records

    cfg = EvalConfig(defense="cnn", attack="pgd", n_images=2, chunk=2)
    assert "verify" not in cfg.identity() and "verify" in EvalConfig(verify=2).identity()
    x, y = load_dataset("digits", "test")
    x, y = x[:2], y[:2]
    recs = {
        i: {
            "index": i,
            "label": int(y[i]),
            "clean_pred": int(y[i]),
            "adv_preds": [int(y[i])],
            "robust_first": True,
            "robust_all": True,
            "robust_frac": 1.0,
            "linf": 0.0,
            "l2": 0.0,
        }
        for i in range(2)
    }
    save_records(tmp_path, cfg, recs, x.clone())
    records, _ = load_records(tmp_path, cfg, x, y)
    assert sorted(records) == [0, 1]
    # a header without the field (as written by older versions) is the same configuration
    jsonl = records_paths(tmp_path, cfg)[0]
    assert '"verify"' not in jsonl.read_text().splitlines()[0]
