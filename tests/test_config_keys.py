"""Stored keys do not change: ``EvalConfig.key()`` (the hash of ``identity()``) and the flat fields a result row
carries, for varied configurations, pinned to the values the code gave before EvalConfig was split into parts
(issue 38). A change here would orphan every stored record and raw row: do not update the pins, fix the code."""

from __future__ import annotations

import hashlib
import json

import pytest

from rdc_lib.evaluation import EvalConfig

CASES = {
    "default": {},
    "dc_pgd": dict(defense="dc", attack="pgd", eps=0.05, n=10, offset=5, seed=3, steps=7),
    "rdc_single_lm": dict(defense="rdc", heads="single", lm_steps=5, lm_eta=0.2, lm_step_size=0.05, attack="apgd-ce"),
    "diffpure_bpda": dict(defense="diffpure", grad_mode="bpda", attack="pgd", eot=4, verify=2),
    "cnn_autoattack": dict(defense="cnn", attack="autoattack", square_queries=200, n_target_classes=3),
    "dc_fixed_T16": dict(defense="dc", noise_mode="fixed", timesteps=16, attack="apgd-dlr"),
    "dc_karras": dict(defense="dc", grid="karras", grid_sigma_min=0.01, timesteps=32),
    "dc_sigma_min": dict(defense="dc", grid_sigma_min=0.45, timesteps=8),
    "val_split": dict(defense="dc", split="val", n=50, offset=100),
    "denoiser_legacy": dict(defense="dc", denoiser="digits_multi"),
    "denoiser_single": dict(defense="rdc", heads="single", denoiser="digits_single", vote=3),
    "cifar_dataset": dict(dataset="cifar10", defense="dc"),
    "cifar_preset": dict(dataset="cifar10", preset="cifar10-paper", defense="rdc", attack="apgd-ce"),
    "stochastic_eval": dict(defense="dc", attack="autoattack", eot=2, verify=3, n_eval=5, chunk=10, run_checks=False),
    "l2_apgd": dict(defense="cnn", norm="l2", eps=1.0, attack="apgd-ce", restarts=2),
    "at_cnn_fgsm": dict(defense="at-cnn", attack="fgsm", ckpt_dir="other/ckpts", data_root="x"),
    "optimal_dc": dict(defense="optimal-dc", timesteps=20, grid="lognormal"),
}
STORED = {  # from_stored on old headers: denoiser "" of a defense with a denoiser
    "stored_dc_empty": dict(defense="dc", attack="pgd", n=4, heads="single", denoiser="", extra_key=1),
    "stored_rdc_nodenoiser": dict(defense="rdc", heads="multi", n=8),
}

# name -> (key(), hash of the flat dict in order), computed on the code before the split (commit a5bf3cb)
PINNED = {
    "default": ("2178a90f7db37156", "5d01cd240d5d3334"),
    "dc_pgd": ("b3fe7e25c964433b", "4197b19e56bfd16a"),
    "rdc_single_lm": ("1d9575f2c22edf4e", "19e519184851839a"),
    "diffpure_bpda": ("0e8da0fba2b371b7", "5b8577b0b6093787"),
    "cnn_autoattack": ("79faa18b16672a71", "79d11b5f2f2aed7e"),
    "dc_fixed_T16": ("45df754768c5373b", "3ad59294ae1785c9"),
    "dc_karras": ("40691df69be764e1", "d08fdbd2b5b167b6"),
    "dc_sigma_min": ("3688e2c373894d16", "398963a3e409a300"),
    "val_split": ("b802ad9ea26820e3", "331df447fda95d15"),
    "denoiser_legacy": ("51a0918b9f0b32c7", "355d9ce4fd199504"),
    "denoiser_single": ("7820daf8121e80a0", "36783d0a34d1a4f3"),
    "cifar_dataset": ("d64df990f208d85a", "14b5be180ead53e7"),
    "cifar_preset": ("fc8a3c644877450d", "ff589fc6d9d2fd2e"),
    "stochastic_eval": ("4fa5dc721a0aca9b", "d5ec2967763d432b"),
    "l2_apgd": ("b4f781ed03c563e9", "1a2bbbfd6537278b"),
    "at_cnn_fgsm": ("2523e2bd8519396f", "0c3ee3385fcd811b"),
    "optimal_dc": ("ad988a26fb612bf5", "332e751a54aa4e18"),
    "stored_dc_empty": ("b62e66a12c90e340", "b58b7629b5f5fe91"),
    "stored_rdc_nodenoiser": ("e306dde9ae020aba", "50ff558111ea39dd"),
}

# the flat fields of a result row, in order (``{**flat, ...}`` of ``evaluate``)
FLAT_ORDER = [
    "defense",
    "attack",
    "norm",
    "eps",
    "n",
    "offset",
    "seed",
    "eot",
    "verify",
    "steps",
    "restarts",
    "square_queries",
    "n_target_classes",
    "timesteps",
    "heads",
    "dataset",
    "noise_mode",
    "grad_mode",
    "n_eval",
    "vote",
    "chunk",
    "run_checks",
    "preset",
    "data_root",
    "ckpt_dir",
    "denoiser",
    "grid",
    "grid_sigma_min",
    "lm_steps",
    "lm_eta",
    "lm_step_size",
    "split",
]


def _flat_hash(cfg: EvalConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.flat()).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(CASES))
def test_key_and_flat_fields_unchanged(name):
    cfg = EvalConfig(**CASES[name])
    assert (cfg.key(), _flat_hash(cfg)) == PINNED[name]
    assert EvalConfig.from_params(CASES[name]).key() == PINNED[name][0]


@pytest.mark.parametrize("name", sorted(STORED))
def test_from_stored_key_unchanged(name):
    cfg = EvalConfig.from_stored(STORED[name])
    assert (cfg.key(), _flat_hash(cfg)) == PINNED[name]


def test_flat_order_and_identity_rule():
    assert list(EvalConfig().flat()) == FLAT_ORDER
    ident = EvalConfig().identity()  # fields added after the first stored results count only when set
    assert "grid" not in ident and "split" not in ident and "n" in ident and "n_images" not in ident
    assert EvalConfig(n=7).key() == EvalConfig(n_images=7).key() == EvalConfig.from_params({"n_images": 7}).key()
