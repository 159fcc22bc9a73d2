import json

import pytest
import torch
from torch import nn

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.evaluation import EvalConfig, evaluate, wilson
from rdc_lib.evaluation.checks import run_sanity_checks
from rdc_lib.evaluation.standalone_checks import gradients_check


def test_wilson_interval():
    acc = wilson(45, 50)
    assert acc.value == 0.9 and acc.low < 0.9 < acc.high and 0.78 < acc.low < 0.8
    assert wilson(0, 10).low == pytest.approx(0.0, abs=1e-12) and wilson(10, 10).high == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_records_resume_and_n_eval(tmp_path):
    cfg = EvalConfig(defense="cnn", attack="pgd", n_images=10, steps=5, chunk=5, n_eval=3, run_checks=False)
    first = evaluate(cfg, records_dir=tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith(".jsonl") for f in files) and any(f.endswith(".adv.safetensors") for f in files)
    lines = next(tmp_path.glob("*.jsonl")).read_text().splitlines()
    assert json.loads(lines[0])["config"]["n"] == 10 and len(lines) == 11
    assert all(len(json.loads(l)["adv_preds"]) == 3 for l in lines[1:])
    # a second run finds every chunk done: same numbers, no recomputation of the attack
    second = evaluate(cfg, records_dir=tmp_path, progress=False)
    assert second["robust_acc"] == first["robust_acc"] and second["attack_stats"] == []
    assert first["robust_acc_worst"] <= first["robust_acc_avg"] + 1e-9
    assert first["robust"]["total"] == 10


class _Quantized(nn.Module):
    """A classifier behind a rounding step: zero gradients almost everywhere (masking)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner((x * 4).round() / 4)


def test_masked_gradients_are_flagged():
    x, y = load_dataset("digits", "test")
    cnn = load_classifier(checkpoint_path("digits_cnn"))
    assert gradients_check(cnn, x[:8], y[:8]).passed
    assert not gradients_check(_Quantized(cnn), x[:8], y[:8]).passed


def test_sanity_checks_mark_masked_defense_untrusted():
    x, y = load_dataset("digits", "test")
    x, y = x[:12], y[:12]
    model = _Quantized(load_classifier(checkpoint_path("digits_cnn")))
    cfg = EvalConfig(defense="at-cnn", attack="pgd", n_images=12, steps=5, eps=0.1)
    checks = run_sanity_checks(cfg, model, x, y, x.clone(), device=torch.device("cpu"), n_check=12)
    assert not checks["gradients"]["passed"]
    # with no usable gradient, white-box PGD cannot beat the black-box attack or transfer
    assert not all(c["passed"] for c in checks.values())


def test_eval_config_validation():
    with pytest.raises(ValueError, match="valid choices: digits, cifar10"):
        EvalConfig(dataset="mnist")
    with pytest.raises(ValueError, match="unknown evaluation parameters"):
        EvalConfig.from_params({"defenze": "dc"})
    with pytest.raises(ValueError, match="exceeds"):
        evaluate(EvalConfig(defense="cnn", n_images=300, offset=100), progress=False)
