"""Fixed against fresh noise (rdc_lib.evaluation.fresh_noise, notebook 03 part 4) and its figure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdc_lib.evaluation.fresh_noise import draws_misclassifying, fixed_vs_fresh
from rdc_lib.viz.fresh_noise import fixed_vs_fresh_figure

pytestmark = pytest.mark.usefixtures("one_thread")


class Coin(nn.Module):
    """K = 3 classes; the true class is 1 for every image. Each call, row by row, is wrong (predicts 0) with the
    probability given by the image's first pixel (a fresh draw from its own generator per row): a stochastic defense
    whose error rate per image is known."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        wrong = torch.rand(x.shape[0], generator=self.gen) < x[:, 0, 0, 0]
        logits = torch.zeros(x.shape[0], 3)
        logits[torch.arange(x.shape[0]), torch.where(wrong, 0, 1)] = 1.0
        return logits


def _images(p_wrong):
    x = torch.zeros(len(p_wrong), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(p_wrong)
    return x, torch.ones(len(p_wrong), dtype=torch.long)


def test_draws_misclassifying_counts_each_images_wrong_draws():
    x, y = _images([0.0, 1.0, 0.5])
    wrong = draws_misclassifying(Coin(), x, y, n_draws=400)
    assert wrong[0] == 0 and wrong[1] == 400
    assert 150 < int(wrong[2]) < 250  # Binomial(400, 0.5): far outside 5 standard deviations
    assert wrong.dtype == torch.int64 and wrong.shape == (3,)
    with pytest.raises(ValueError, match="n_draws must be an int >= 1"):
        draws_misclassifying(Coin(), x, y, n_draws=0)
    with pytest.raises(ValueError, match="3 images but y has 2"):
        draws_misclassifying(Coin(), x, y[:2], n_draws=2)


def test_fixed_vs_fresh_reads_both_attacks_and_counts_the_readings():
    x, y = _images([0.0, 0.0, 0.0, 0.0])
    right = nn.Module()
    right.forward = lambda t: torch.nn.functional.one_hot(torch.ones(t.shape[0], dtype=torch.long), 3).float()
    seen = []

    def fixed_attack(model):
        seen.append(("fixed", model))
        return lambda xx, yy: xx + torch.tensor([0.0, 0.3, 1.0, 0.0]).reshape(-1, 1, 1, 1)  # p_wrong per image

    def eot_attack(model):
        seen.append(("eot", model))
        return lambda xx, yy: xx + torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(-1, 1, 1, 1)

    coin = Coin(1)
    r = fixed_vs_fresh(right, coin, x, y, fixed_attack, eot_attack, n_draws=50, eot=3)
    assert [k for k, _ in seen] == ["fixed", "eot"] and seen[0][1] is right and seen[1][1] is coin
    assert r.fixed_robust.tolist() == [True] * 4  # the fixed-noise defense is right on every example
    assert r.wrong_clean.tolist() == [0, 0, 0, 0]
    assert r.wrong_fixed_adv[0] == 0 and r.wrong_fixed_adv[2] == 50 and 0 < r.wrong_fixed_adv[1] < 50
    assert r.wrong_eot_adv.tolist() == [50, 50, 50, 0]
    c = r.counts()
    assert c["fixed_attack"]["fixed_noise"] == 4
    assert c["fixed_attack"]["worst_of_50"] == 2  # images 0 and 3: no wrong draw
    expected = 4 - float(r.wrong_fixed_adv.sum()) / 50
    assert c["fixed_attack"]["one_call_expected"] == pytest.approx(expected)
    assert c["fixed_attack"]["worst_of_50"] < c["fixed_attack"]["one_call_expected"] < 4
    assert c["eot_attack"]["worst_of_50"] == 1 and c["clean"]["worst_of_50"] == 4
    d = r.to_dict()
    assert d["wrong_draws"]["eot_attack"] == [50, 50, 50, 0] and d["robust_counts"] == c
    fig = fixed_vs_fresh_figure(r)
    assert len(fig.data) == 5 and list(fig.data[1].y) == r.wrong_fixed_adv.tolist()
    assert list(fig.data[3].y) == [4, pytest.approx(expected), 2]


def test_fixed_vs_fresh_reuses_given_examples_and_checks_them():
    x, y = _images([0.0, 0.0])
    never = lambda model: pytest.fail("the fixed-noise attack must not run when its examples are given")  # noqa: E731
    r = fixed_vs_fresh(Coin(), Coin(2), x, y, never, lambda m: lambda a, b: a, n_draws=3, eot=1, x_fixed_adv=x + 1.0)
    assert r.wrong_fixed_adv.tolist() == [3, 3] and not r.fixed_robust.any()
    with pytest.raises(ValueError, match="must have the shape of x"):
        fixed_vs_fresh(Coin(), Coin(), x, y, never, never, n_draws=3, eot=1, x_fixed_adv=x[:1])
