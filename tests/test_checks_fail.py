"""Every sanity check can fail: a model (or an attack) built to fail it makes ``evaluate()`` report
``trusted: false``, and every table printer shows UNTRUSTED; no check run is ``trusted: null``, "not checked".

The models wrap the shipped digits CNN (cheap) and break one property of an honest evaluation each:
zero gradients, a backward pass that is not the forward's derivative, gradients that point away from
the adversarial direction, gradients that reveal the adversarial direction a few pixels at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.checks import MIN_CHECK_IMAGES, trust_label

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
N = MIN_CHECK_IMAGES


def _cnn() -> nn.Module:
    return load_classifier(checkpoint_path("digits_cnn"))


class _Backward(torch.autograd.Function):
    """Identity forward; the backward pass is the owning module's ``transform`` of the true gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, owner: "Tampered") -> Tensor:
        ctx.owner = owner
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.owner.transform(grad), None


class Tampered(nn.Module):
    """The CNN behind a tampered backward pass; ``noise`` > 0 adds tiny logit noise (a stochastic defense)."""

    def __init__(self, kind: str, noise: float = 0.0, pixels: int = 16):
        super().__init__()
        self.inner, self.kind, self.noise, self.pixels = _cnn(), kind, noise, pixels
        self.gen = torch.Generator().manual_seed(0)

    def transform(self, g: Tensor) -> Tensor:
        if self.kind == "reversed":  # points away from the adversarial direction
            return -g
        # "sparse": the true gradient on `pixels` random pixels per call, zero elsewhere (slow progress)
        score = torch.rand(g.shape, generator=self.gen)
        kth = score.flatten(1).topk(self.pixels, dim=1).values[:, -1].reshape(-1, 1, 1, 1)
        return g * (score >= kth)

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(_Backward.apply(x, self))
        return out + self.noise * torch.randn(out.shape, generator=self.gen) if self.noise else out


class Quantized(nn.Module):
    """The CNN behind a rounding step: zero input gradients almost everywhere (masking)."""

    def __init__(self):
        super().__init__()
        self.inner = _cnn()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner((x * 4).round() / 4)


class StraightThrough(Quantized):
    """Rounding in the forward pass, identity in the backward: finite non-zero gradients that are wrong."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + ((x * 4).round() / 4 - x).detach())


_load = load_benchmark  # a benchmark script as a module


def _printed(result: dict, tmp_path: Path) -> dict[str, str]:
    """The result through every table printer: results table, evaluation report, sweep report."""
    from rdc_lib.sweep.report import cell_rows
    from rdc_lib.sweep.store import CellRecord

    out: dict[str, str] = {}
    (tmp_path / "results.jsonl").write_text(json.dumps({**result, "command": "rdc eval ..."}) + "\n")
    rt = _load("results_table")
    rt.doc(type("A", (), {"records": str(tmp_path), "out": str(tmp_path / "results.md"), "notes": ""})())
    out["results_table"] = (tmp_path / "results.md").read_text()
    row = {**result, "variant": "v", "protocol": "p", "command": "rdc eval ..."}
    (tmp_path / "evaluation.jsonl").write_text(json.dumps(row) + "\n")
    er = _load("evaluation_report")
    er.doc(
        type("A", (), {"records": str(tmp_path), "out": str(tmp_path / "evaluation.md"), "notes": "", "n_eval": 1})()
    )
    out["evaluation_report"] = (tmp_path / "evaluation.md").read_text()
    rec = CellRecord(
        key="k",
        sweep="s",
        target="eval",
        params={"defense": result["defense"], "eps": result["eps"]},
        status="done",
        code_version="c",
        checkpoints={},
        finished="now",
        result=result,
    )
    out["sweep_report"] = cell_rows([rec])[0]["trusted"]
    return out


def _assert_fails(result: dict, check: str, tmp_path: Path) -> None:
    assert check in result["checks"], (check, result["checks_skipped"])
    entry = result["checks"][check]
    assert entry["passed"] is False, entry
    assert result["trusted"] is False
    if "tolerance_images" in entry:  # paired comparison: the tolerance is stated with the numbers
        assert 0 < entry["tolerance"] < 1 and entry["n"] >= MIN_CHECK_IMAGES
    printed = _printed(result, tmp_path)
    assert "**UNTRUSTED**" in printed["results_table"] and "all passed" not in printed["results_table"]
    assert "**UNTRUSTED**" in printed["evaluation_report"] and check in printed["evaluation_report"]
    assert printed["sweep_report"] == "UNTRUSTED" == trust_label(False)


def _run(model: nn.Module, **cfg) -> dict:
    base = dict(defense="at-cnn", attack="pgd", n=N, steps=5, eps=0.1, square_queries=50, chunk=N)
    return evaluate(EvalConfig(**{**base, **cfg}), model=model, progress=False)


def test_honest_cnn_passes_every_check(tmp_path):
    """The control: the same settings on the plain CNN pass (so the failures below are the models')."""
    res = _run(_cnn())
    assert res["trusted"] is True, {k: v for k, v in res["checks"].items() if not v["passed"]}
    assert set(res["checks"]) == {
        "gradients",
        "finite_difference",
        "large_budget",
        "convergence",
        "black_box",
        "transfer",
        "cross_loss",
    }  # eot_convergence: deterministic, skipped
    assert "passed" in _printed(res, tmp_path)["evaluation_report"]


def test_zero_gradients_fail_the_gradient_check(tmp_path):
    _assert_fails(_run(Quantized()), "gradients", tmp_path)


def test_a_wrong_backward_pass_fails_finite_differences(tmp_path):
    res = _run(StraightThrough())
    assert res["checks"]["gradients"]["passed"]  # finite and non-zero: only finite differences catch it
    _assert_fails(res, "finite_difference", tmp_path)


def test_gradients_pointing_away_fail_the_large_budget(tmp_path):
    # stochastic (finite differences do not apply), eps so small that Square and transfer find nothing either
    res = _run(Tampered("reversed", noise=1e-3), eps=0.02)
    assert [k for k, c in res["checks"].items() if not c["passed"]] == ["large_budget"]
    assert "finite_difference" in res["checks_skipped"]
    _assert_fails(res, "large_budget", tmp_path)


def test_an_unconverged_attack_fails_convergence(tmp_path):
    # 2 steps reveal 32 pixels of the gradient, 4 steps 64: doubling the steps breaks many more images
    res = _run(Tampered("sparse", noise=1e-3), eps=0.3, steps=2)
    c = res["checks"]["convergence"]
    assert c["steps"] == 4 and c["broken_only_by_check"] > c["tolerance_images"]
    _assert_fails(res, "convergence", tmp_path)


def test_square_beating_the_gradient_attacks_fails_black_box(tmp_path):
    res = _run(Tampered("reversed", noise=1e-3), eps=0.2)
    _assert_fails(res, "black_box", tmp_path)


def test_black_box_compares_against_the_gradient_attacks_only(tmp_path):
    """In an AutoAttack-style cell the ensemble's own Square cannot pass the black-box check for it."""
    res = _run(Tampered("reversed", noise=1e-3), attack="autoattack", n_target_classes=1, steps=3, eps=0.2)
    # the ensemble's Square breaks images, but the white-box baseline is the gradient attacks' alone
    assert res["checks"]["black_box"]["baseline"] >= res["robust_acc"] + 0.25
    _assert_fails(res, "black_box", tmp_path)


def test_transfer_beating_the_white_box_fails_transfer(tmp_path):
    # Square too weak to notice (10 queries); examples made on the plain CNN break the tampered one
    res = _run(Tampered("reversed", noise=1e-3), square_queries=10)
    assert res["checks"]["black_box"]["passed"]
    _assert_fails(res, "transfer", tmp_path)


def test_no_checks_is_not_checked_never_passed(tmp_path):
    res = _run(_cnn(), run_checks=False, n=8, chunk=8)
    assert res["trusted"] is None and res["checks"] == {} and res["checks_skipped"] == {"all": "run_checks=False"}
    printed = _printed(res, tmp_path)
    assert "not checked" in printed["results_table"] and "all passed" not in printed["results_table"]
    assert "not checked" in printed["evaluation_report"] and "| passed |" not in printed["evaluation_report"]
    assert printed["sweep_report"] == "not checked"
    clean_only = evaluate(EvalConfig(defense="cnn", attack="none", n_images=4), progress=False)
    assert clean_only["trusted"] is None


def test_checks_with_too_few_images_are_refused():
    with pytest.raises(ValueError, match=f"need at least {MIN_CHECK_IMAGES} images, got n = 8.*run_checks=False"):
        evaluate(EvalConfig(defense="cnn", attack="pgd", n_images=8, steps=2), progress=False)
