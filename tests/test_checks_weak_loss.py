"""The checks that see a weak loss (issue 36): ``cross_loss`` and ``eot_convergence`` fail on models built to
fail them, pass on honest ones, and a single-attack result is labelled an upper bound in every table.

The failing models hide their weakness inside the evaluated threat model: they are the AT-CNN, changed only
within l_inf ``RADIUS`` of the check images (where the evaluated attack searches), honest outside (where the
large-budget check's eps 0.5 start lies), so the earlier checks pass and only the new one sees the weakness.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

from rdc_lib.attacks import FULL_ENSEMBLE, autoattack_suite, is_full_ensemble, protocol_label
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.checks import skipped_checks
from rdc_lib.evaluation.standalone_checks import cross_loss_attacks

from .test_checks_fail import N, _assert_fails, _Backward, _cnn, _printed, _run

RADIUS = 0.2  # l_inf distance to the nearest check image within which the models below misbehave


class NearCheckImages(nn.Module):
    """The AT-CNN; ``near(x)`` (B,) bool: within l_inf RADIUS of one of the first N test images."""

    def __init__(self):
        super().__init__()
        self.inner = load_classifier(checkpoint_path("digits_at_cnn"))
        self.register_buffer("ref", load_dataset("digits", "test")[0][:N].flatten(1))  # .double() converts it too
        self.gen = torch.Generator().manual_seed(0)

    def near(self, x: Tensor) -> Tensor:
        return (
            torch.cdist(x.detach().flatten(1).to(self.ref.dtype), self.ref, p=float("inf")).min(dim=1).values <= RADIUS
        )


class SaturatedCE(NearCheckImages):
    """Logits x 1000 near the check images: the softmax saturates, so the cross-entropy's input gradient is
    exactly zero there (APGD-CE cannot move), while the margin and DLR losses, scale-free, still point the way."""

    def forward(self, x: Tensor) -> Tensor:
        z = self.inner(x)
        return torch.where(self.near(x)[:, None], 1000 * z, z)


class NoisyGradient(NearCheckImages):
    """A stochastic defense (tiny logit noise) whose gradient near the check images is unbiased but has a
    random sign per pixel and call, g (1 + 3 r), r = +-1: one draw says nothing about the direction (EOT 1 is
    a random walk, however many steps), the mean of two draws has the right sign on 3/4 of the pixels."""

    def transform(self, g: Tensor) -> Tensor:
        r = torch.where(torch.rand(g.shape, generator=self.gen) < 0.5, -1.0, 1.0)
        return torch.where(self._near[:, None, None, None], g * (1 + 3 * r), g)

    def forward(self, x: Tensor) -> Tensor:
        self._near = self.near(x)
        out = self.inner(_Backward.apply(x, self))
        return out + 1e-3 * torch.randn(out.shape, generator=self.gen)


class Stochastic(NearCheckImages):
    """The control: the AT-CNN with tiny logit noise (stochastic) and honest gradients."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x)
        return out + 1e-3 * torch.randn(out.shape, generator=self.gen)


def test_a_saturated_cross_entropy_fails_cross_loss(tmp_path):
    res = _run(SaturatedCE(), attack="apgd-ce", steps=10, eps=0.15, square_queries=10)
    c = res["checks"]["cross_loss"]
    assert c["attacks"] == ["apgd-dlr", "apgd-t"] and c["broken_only_by_check"] > c["tolerance_images"]
    # the weakness is invisible to every earlier check: only cross_loss sees that APGD-CE's loss was flat
    assert [k for k, v in res["checks"].items() if not v["passed"]] == ["cross_loss"]
    _assert_fails(res, "cross_loss", tmp_path)


def test_cross_loss_passes_on_an_honest_model_and_is_skipped_for_the_full_ensemble():
    res = _run(_cnn(), attack="apgd-ce", steps=10, square_queries=10)
    assert res["checks"]["cross_loss"]["passed"], res["checks"]["cross_loss"]
    assert cross_loss_attacks("apgd-ce") == ("apgd-dlr", "apgd-t")
    assert cross_loss_attacks("pgd") == ("apgd-ce", "apgd-dlr", "apgd-t") and cross_loss_attacks(FULL_ENSEMBLE) == ()
    reason = skipped_checks(EvalConfig(defense="cnn", attack=FULL_ENSEMBLE, n_images=N))["cross_loss"]
    assert reason.startswith("the evaluated attack is the full ensemble")
    assert "cross_loss" not in skipped_checks(EvalConfig(defense="cnn", attack="apgd-ce", n_images=N))


def test_too_few_eot_draws_fail_eot_convergence(tmp_path):
    res = _run(NoisyGradient(), attack="apgd-ce", steps=40, eps=0.18, eot=1, n_eval=3, square_queries=10)
    c = res["checks"]["eot_convergence"]
    assert c["eot"] == 2 and c["reads"] == 3 and c["broken_only_by_check"] > c["tolerance_images"]
    # twice the steps at EOT 1 do not help (a random walk), nor do the other losses: only more draws do
    assert [k for k, v in res["checks"].items() if not v["passed"]] == ["eot_convergence"]
    _assert_fails(res, "eot_convergence", tmp_path)


def test_eot_convergence_passes_on_an_honest_stochastic_model_and_is_skipped_when_deterministic():
    res = _run(Stochastic(), attack="apgd-ce", steps=40, eps=0.18, eot=1, n_eval=3, square_queries=10)
    assert res["checks"]["eot_convergence"]["passed"], res["checks"]["eot_convergence"]
    det = _run(_cnn(), attack="apgd-ce", steps=5, square_queries=10)
    assert "eot_convergence" not in det["checks"]
    assert det["checks_skipped"]["eot_convergence"].startswith("the defense is deterministic")


# ----------------------------------------------------------------------------- labels: an upper bound, said so


def test_one_label_for_every_attack():
    assert is_full_ensemble(FULL_ENSEMBLE) and protocol_label(FULL_ENSEMBLE) == "full ensemble"
    assert not is_full_ensemble("apgd-ce") and protocol_label("apgd-ce") == "APGD-CE only: an upper bound"
    assert protocol_label(FULL_ENSEMBLE, {"square": "left out"}) == "ensemble without square: an upper bound"
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        protocol_label("cw")


def test_a_single_attack_result_is_labelled_an_upper_bound_in_every_table(tmp_path):
    res = _run(_cnn(), attack="apgd-ce", steps=3, run_checks=False, n=8, chunk=8)
    printed = _printed(res, tmp_path)
    assert "APGD-CE only: an upper bound" in printed["results_table"]
    assert "APGD-CE only: an upper bound" in printed["evaluation_report"]
    from rdc_lib.sweep.report import cell_rows
    from rdc_lib.sweep.store import CellRecord

    rec = CellRecord(
        key="k",
        sweep="s",
        target="eval",
        params={"defense": "cnn", "attack": "apgd-ce"},
        status="done",
        code_version="c",
        checkpoints={},
        finished="now",
        result=res,
    )
    assert cell_rows([rec])[0]["protocol"] == "APGD-CE only: an upper bound"


# ----------------------------------------------------------------------------- the ensemble against stochastic defenses


def test_the_ensemble_keeps_square_under_eot_on_averaged_scores():
    model = Stochastic()
    suite = dict(autoattack_suite(model, eps=0.1, steps=2, eot=3, verify=2, n_target_classes=3, square_queries=5))
    assert list(suite) == ["apgd-ce", "apgd-dlr", "apgd-t", "square"]
    assert all(a.eot == 3 and a.verify == 2 for a in suite.values())
    x, y = load_dataset("digits", "test")
    res = suite["square"].run(x[:4], y[:4])
    # every Square score averages 3 draws: 3 queries per iteration (clean check aside), as max_queries says
    assert suite["square"].max_queries == 1 + (5 + 1) * 3 and int(res.queries.max()) <= suite["square"].max_queries


@pytest.mark.parametrize("field, value", [("eot", 0), ("verify", 0), ("eot", -2)])
def test_an_ensemble_with_fewer_than_one_draw_is_refused(field, value):
    with pytest.raises(ValueError, match=f"ensemble needs {field} >= 1 .*got {field} = {value}"):
        autoattack_suite(nn.Linear(1, 1), eps=0.1, **{field: value})


@pytest.mark.parametrize("field", ["eot", "n_eval", "verify"])
def test_fewer_than_one_draw_or_reading_is_refused_by_the_evaluation(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1 \\(.*\\), got {field} = 0"):
        EvalConfig(defense="dc", attack=FULL_ENSEMBLE, noise_mode="stochastic", **{field: 0})


@pytest.mark.parametrize(
    "over, words",
    [
        (
            dict(attack="apgd-ce"),
            "attack 'apgd-ce' (APGD-CE only: an upper bound; expected the full ensemble 'autoattack'",
        ),
        (
            dict(attacks_dropped={"square": "left out"}),
            "attack 'autoattack' without square (ensemble without square: an upper bound; expected the full ensemble",
        ),
    ],
)
def test_a_headline_import_of_an_upper_bound_is_refused(tmp_path, over, words):
    from .test_results_headline import _result, _row

    with pytest.raises(SystemExit, match=re.escape(words)):
        _row(tmp_path, _result(**over))
    assert _row(tmp_path, _result(attacks_dropped={}))["attack"] == FULL_ENSEMBLE


# ----------------------------------------------------------------------------- EOT from the gradient-variance rule


def test_eot_auto_takes_the_rules_size_and_records_it(capsys):
    import json

    from rdc_lib.cli import main
    from rdc_lib.evaluation.eot_rule import eot_by_rule

    assert (
        main(
            [
                "eval",
                "--defense",
                "cnn",
                "--attack",
                "pgd",
                "--eot",
                "auto",
                "--n",
                "4",
                "--steps",
                "2",
                "--run-checks",
                "false",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["eot"] == 1 and res["eot_rule"]["eot"] == 1 and res["eot_rule"]["mean_cosine"] > 0.999  # deterministic
    x, y = load_dataset("digits", "test")
    noisy = eot_by_rule(NoisyGradient(), x[:4], y[:4])  # a random sign per pixel and draw: the rule asks for many
    assert noisy["eot"] > 8 and noisy["cosine_used"] < 0.5 and noisy["target"] == 0.9


def test_eot_flag_refuses_anything_but_an_int_or_auto(capsys):
    from rdc_lib.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--defense", "cnn", "--eot", "many", "--json"])
    assert "--eot takes an int >= 1 or 'auto', got 'many'" in capsys.readouterr().err
