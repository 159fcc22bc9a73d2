"""Stochastic defenses counted right, presets that honour or refuse, one EOT target (issue 16 items 2-3)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from rdc_lib.attacks import autoattack_suite, build_attack, run_ensemble
from rdc_lib.cli import main
from rdc_lib.data import load_dataset
from rdc_lib.defenses.presets import eval_settings, preset_conflicts
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.grad import EOT_TARGET, suggest_eot


class Lookup(nn.Module):
    """Logits 5 * one-hot(label of the nearest reference image), constant in x (no attack moves it), so an
    attacked image always survives. Its first ``wrong_calls`` calls misclassify reference image 0, as a
    stochastic defense's unlucky draw would."""

    def __init__(self, x_ref: Tensor, y_ref: Tensor, wrong_calls: int):
        super().__init__()
        self.x_ref, self.y_ref, self.wrong_calls, self.calls = x_ref, y_ref, wrong_calls, 0

    def forward(self, x: Tensor) -> Tensor:
        nearest = torch.cdist(x.flatten(1), self.x_ref.flatten(1)).argmin(1)
        logits = 5 * torch.nn.functional.one_hot(self.y_ref[nearest], 10).float() + 0 * x.flatten(1)[:, :1]
        self.calls += 1
        if self.calls <= self.wrong_calls:
            logits = torch.where((nearest == 0)[:, None], logits.roll(1, dims=1), logits)
        return logits


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits", "test")
    return x[:4], y[:4]


def test_ensemble_clean_check_reads_v_calls(digits):
    x, y = digits
    one = Lookup(x, y, wrong_calls=1)
    res1 = run_ensemble(one, x, y, [("pgd", build_attack("pgd", one, eps=0.1, steps=2))], progress=False)
    assert not res1.clean_correct[0] and not res1.robust[0]  # verify 1: one call decides, never attacked
    model = Lookup(x, y, wrong_calls=1)
    res = run_ensemble(model, x, y, [("pgd", build_attack("pgd", model, eps=0.1, steps=2, verify=3))], progress=False)
    assert bool(res.clean_correct[0]) and bool(res.robust[0])  # re-read: attacked, and it survived
    assert int(res.queries[0]) > int(res.queries[1])  # the re-reads are counted
    always = Lookup(x, y, wrong_calls=10**6)
    res = run_ensemble(always, x, y, [("pgd", build_attack("pgd", always, eps=0.1, steps=2, verify=3))], progress=False)
    assert not res.clean_correct[0] and not res.robust[0]  # wrong in every call: a clean error, not robust


def test_evaluate_attacks_an_image_one_unlucky_call_misclassified():
    x, y = load_dataset("digits", "test")
    cfg = EvalConfig(defense="cnn", attack="pgd", n_images=4, steps=2, verify=3, run_checks=False)
    res = evaluate(cfg, model=Lookup(x, y, wrong_calls=1), progress=False)
    assert res["robust_acc"] == 1.0  # image 0 was attacked (the clean check re-read it) and survived
    res1 = evaluate(
        EvalConfig(defense="cnn", attack="pgd", n_images=4, steps=2, verify=1, run_checks=False),
        model=Lookup(x, y, wrong_calls=1),
        progress=False,
    )
    assert res1["robust_acc"] == 0.75  # one call: image 0 is a clean error, never attacked, never robust


def test_never_attacked_is_never_robust():
    x, y = load_dataset("digits", "test")
    res = evaluate(
        EvalConfig(defense="cnn", attack="pgd", n_images=4, steps=2, verify=3, run_checks=False),
        model=Lookup(x, y, wrong_calls=10**6),
        progress=False,
    )
    assert res["clean_acc"] == 0.75 and res["robust_acc"] == 0.75 and res["robust_acc_worst"] == 0.75


def test_square_stays_in_the_ensemble_under_eot_on_averaged_scores():
    """Issue 36: Square is no longer left out under EOT; it averages the defense's draws (nothing dropped)."""
    suite = autoattack_suite(nn.Linear(1, 1), eps=0.1, eot=2, n_target_classes=1)
    assert [n for n, _ in suite] == ["apgd-ce", "apgd-dlr", "apgd-t", "square"] and suite[-1][1].eot == 2
    cfg = EvalConfig(
        defense="cnn",
        attack="autoattack",
        n_images=2,
        steps=1,
        eot=2,
        n_target_classes=1,
        square_queries=5,
        run_checks=False,
    )
    res = evaluate(cfg, progress=False)
    assert res["attacks_dropped"] == {} and "square" in res["attack_stats"][0]["attacks"]


def test_one_documented_eot_target():
    assert suggest_eot(0.5).target == EOT_TARGET == 0.9
    assert suggest_eot(0.5, target=1.0).capped and suggest_eot(1.0, target=1.0).eot == 1
    for bad in (0, -0.2, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"EOT target must be a cosine in \(0, 1\]"):
            suggest_eot(0.5, target=bad)


# ----------------------------------------------------------------------------- presets honour or refuse


def test_preset_applies_the_values_it_fixes():
    cfg = EvalConfig(defense="dc", preset="digits")
    fixed = eval_settings("digits")
    assert {k: getattr(cfg, k) for k in fixed} == fixed and cfg.noise_mode == "fixed" and cfg.heads == "single"
    paper = EvalConfig(defense="rdc", dataset="cifar10")  # cifar10 implies the paper preset
    assert paper.preset == "cifar10-paper" and paper.timesteps == 1000 and paper.noise_mode == "fixed"


@pytest.mark.parametrize(
    "field, value, fixed",
    [
        ("timesteps", 16, "1000"),
        ("noise_mode", "stochastic", "'fixed'"),
        ("vote", 3, "1"),
        ("heads", "multi", "'single'"),
    ],
)
def test_preset_refuses_a_conflicting_value(field, value, fixed):
    with pytest.raises(ValueError, match=f"preset 'cifar10-paper' fixes {field} = {fixed}, got {field} = "):
        EvalConfig.from_params({"defense": "rdc", "preset": "cifar10-paper", field: value})
    if value != EvalConfig.flat_defaults()[field]:  # set away from the default: refused by the config itself
        with pytest.raises(ValueError, match=f"fixes {field} = {fixed}"):
            EvalConfig(defense="rdc", preset="cifar10-paper", **{field: value})
    assert preset_conflicts("cifar10-paper", {field: value})


def test_cli_refuses_a_flag_the_preset_fixes(capsys):
    # --noise-mode stochastic is the default value, but given explicitly it conflicts with the preset
    assert (
        main(
            [
                "eval",
                "--dataset",
                "cifar10",
                "--preset",
                "cifar10-paper",
                "--defense",
                "rdc",
                "--noise-mode",
                "stochastic",
                "--json",
            ]
        )
        == 2
    )
    assert "preset 'cifar10-paper' fixes noise_mode = 'fixed', got noise_mode = 'stochastic'" in capsys.readouterr().err
    assert main(["eval", "--preset", "cifar10-paper", "--dataset", "digits", "--defense", "dc", "--json"]) == 2
    assert "fixes dataset = 'cifar10'" in capsys.readouterr().err
    assert main(["eval", "--preset", "nope", "--defense", "dc", "--json"]) == 2
    assert "valid choices: cifar10-paper, digits" in capsys.readouterr().err
