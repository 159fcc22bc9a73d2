"""One source of truth for settings: EvalConfig derives the defense spec, keys of stored configurations do not
change, ``rdc eval`` sets the LM settings and the grid, presets hold the library's own settings classes and
``--preset`` applies its attack budget."""

from __future__ import annotations

import pytest

from rdc_lib.cli import build_parser, eval_config, main
from rdc_lib.defenses import DefenseSpec, build_defense
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.runner import defense_spec

# Keys recorded with the code before issue 17 (commit b21ce70): adding fields must not change them. These
# configurations name their denoiser or use none (CNNs, CIFAR-10 presets): their meaning never changed.
RECORDED_KEYS = [
    ({"defense": "cnn", "attack": "pgd", "eps": 0.05, "steps": 10, "n": 64}, "d2492710149153f8"),
    (
        {
            "defense": "dc",
            "attack": "autoattack",
            "noise_mode": "fixed",
            "timesteps": 16,
            "denoiser": "digits_multi_h32_distill",
        },
        "d9f67ac2ef70c739",
    ),
    ({"defense": "cnn", "attack": "stadv", "norm": "flow", "eps": 0.05}, "190ab2230ea3f726"),
    (
        {"defense": "rdc", "dataset": "cifar10", "preset": "cifar10-paper", "attack": "apgd-dlr", "eps": 8 / 255},
        "d660da03e6f07c92",
    ),
]
# Keys recorded (same commit) for configurations that left the denoiser to `heads`: they meant digits_multi,
# the default until the FiLM denoisers became the defaults (rdc_lib.core.choices.DEFAULT_DENOISERS). The same
# parameters now mean another network, so they must get another key (their stored records must not be resumed).
LEGACY_DEFAULT_KEYS = [
    ({}, "8aaf50c12f38610a"),
    ({"defense": "rdc", "attack": "apgd-ce", "eot": 2, "verify": 4, "n_eval": 10, "n": 360}, "897b544b015535f6"),
    ({"defense": "diffpure", "attack": "pgd", "grad_mode": "bpda"}, "a7006d81f932acda"),
]


@pytest.mark.parametrize("params, key", RECORDED_KEYS)
def test_stored_keys_unchanged(params, key):
    assert EvalConfig(**params).key() == key


def _legacy(params: dict) -> EvalConfig:
    """A configuration as the code before the new defaults made it: denoiser left "" (meaning digits_<heads>)."""
    cfg = EvalConfig(**params)
    object.__setattr__(cfg, "denoiser", "")
    return cfg


@pytest.mark.parametrize("params, key", LEGACY_DEFAULT_KEYS)
def test_keys_of_the_old_default_denoiser_changed(params, key):
    assert _legacy(params).key() == key  # the simulated old configuration is the one that was recorded
    cfg = EvalConfig(**params)
    assert cfg.denoiser == "digits_film_multi_distill9_h16_long_adv" and cfg.key() != key
    assert EvalConfig(**params, denoiser="digits_multi").key() != key  # no new configuration has the old key
    assert EvalConfig.from_stored(_legacy(params).identity()).denoiser == "digits_multi"  # stored: the old meaning


def test_default_run_has_the_key_of_its_named_denoiser():
    """`rdc eval --defense dc --heads single` is the same configuration as `... --denoiser digits_film_single`
    (the committed headline records are reused), and the committed headline row keeps its key."""
    import json
    from pathlib import Path

    args = [
        "eval",
        "--defense",
        "dc",
        "--heads",
        "single",
        "--attack",
        "autoattack",
        "--noise-mode",
        "fixed",
        "--T",
        "16",
        "--n",
        "200",
        "--steps",
        "50",
        "--n-target-classes",
        "3",
        "--square-queries",
        "500",
        "--chunk",
        "10",
    ]
    default = eval_config(build_parser().parse_args(args))
    named = eval_config(build_parser().parse_args(args + ["--denoiser", "digits_film_single"]))
    assert default == named and default.key() == named.key() and default.denoiser == "digits_film_single"
    rows = [json.loads(l) for l in Path("docs/raw/headline.jsonl").read_text().splitlines() if l.strip()]
    dc = next(r for r in rows if r["defense"] == "dc" and r["denoiser"] == "digits_film_single")
    assert dc["key"] == default.key()
    multi = eval_config(build_parser().parse_args(["eval", "--defense", "dc", "--heads", "multi"]))
    assert multi.denoiser == "digits_film_multi_distill9_h16_long_adv"


def test_a_stored_legacy_record_is_not_resumed_by_a_default_run(tmp_path):
    import torch

    from rdc_lib.data import load_dataset
    from rdc_lib.evaluation import evaluate
    from rdc_lib.evaluation.records import load_records, records_paths

    params = {"defense": "dc", "attack": "none", "n": 2, "timesteps": 2}
    old, new = _legacy(params), EvalConfig(**params)
    x, y = load_dataset("digits", "test")
    x, y = x[:2], y[:2]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # stands in for the defense
    evaluate(old, model=model, records_dir=tmp_path, progress=False)  # records as the old code stored them
    assert len(load_records(tmp_path, old, x, y)[0]) == 2  # the old configuration would resume them
    assert records_paths(tmp_path, new) != records_paths(tmp_path, old)
    assert load_records(tmp_path, new, x, y)[0] == {}  # the default run starts afresh


def test_new_settings_enter_the_key_only_away_from_their_default():
    base = EvalConfig(defense="rdc")
    assert EvalConfig(defense="rdc", lm_eta=base.lm_eta, grid=base.grid).key() == base.key()
    changed = EvalConfig(defense="rdc", lm_eta=0.1)
    assert changed.key() != base.key() and changed.identity()["lm_eta"] == 0.1 and "lm_eta" not in base.identity()


def test_defense_spec_is_derived_not_copied():
    """Every DefenseSpec field EvalConfig has by name reaches the spec."""
    cfg = EvalConfig(
        defense="rdc",
        heads="single",
        timesteps=8,
        grid="karras",
        noise_mode="fixed",
        grad_mode="bpda",
        seed=3,
        vote=2,
        lm_steps=2,
        lm_eta=0.1,
        lm_step_size=0.05,
    )
    spec = defense_spec(cfg)
    for name in (
        "heads",
        "timesteps",
        "grid",
        "noise_mode",
        "grad_mode",
        "seed",
        "vote",
        "lm_steps",
        "lm_eta",
        "lm_step_size",
    ):
        assert getattr(spec, name) == getattr(cfg, name), name
    assert spec.name == "rdc" and spec.ckpt_dir == ""


def test_rdc_eval_sets_lm_and_grid_flags():
    args = build_parser().parse_args(
        [
            "eval",
            "--defense",
            "rdc",
            "--lm-eta",
            "0.1",
            "--eps",
            "0.1",
            "--lm-steps",
            "3",
            "--lm-step-size",
            "0.05",
            "--grid",
            "karras",
            "--T",
            "4",
        ]
    )
    cfg = eval_config(args)
    model = build_defense(defense_spec(cfg))
    assert (model.lm_config.eta, model.lm_config.steps, model.lm_config.step_size) == (0.1, 3, 0.05)  # eta = eps
    assert model.classifier.grid.kind == "karras" and len(model.classifier.grid) == 4


def test_settings_a_defense_does_not_read_are_refused(capsys):
    assert main(["eval", "--defense", "cnn", "--lm-eta", "0.1", "--json"]) == 2
    assert "does not read lm_eta" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid choices: paper, lognormal, karras"):
        EvalConfig(grid="cosine")
    with pytest.raises(ValueError, match="fixes the grid and the LM settings"):
        EvalConfig(defense="rdc", dataset="cifar10", lm_eta=0.1)


def test_presets_hold_the_library_settings_classes():
    from rdc_lib.defenses.presets import PRESETS
    from rdc_lib.diffusion.lm import LMConfig
    from rdc_lib.diffusion.schedules import GridConfig, make_grid

    for p in PRESETS.values():
        assert isinstance(p.lm, LMConfig) and isinstance(p.grid, GridConfig)
        assert len(make_grid(**p.grid.kwargs())) == p.grid.timesteps


def test_preset_applies_its_attack_budget():
    from rdc_lib.defenses.presets import get_preset

    a = get_preset("cifar10-paper").attack
    args = build_parser().parse_args(["eval", "--preset", "cifar10-paper", "--defense", "rdc", "--attack", "apgd-dlr"])
    cfg = eval_config(args)
    assert (cfg.steps, cfg.restarts, cfg.eot, cfg.eps) == (a.iterations, a.restarts, a.eot, a.eps_linf)
    l2 = eval_config(
        build_parser().parse_args(
            ["eval", "--preset", "cifar10-paper", "--defense", "dc", "--norm", "l2", "--attack", "pgd", "--steps", "7"]
        )
    )
    assert l2.eps == a.eps_l2 and l2.steps == 7  # a flag given on the command line wins
    plain = eval_config(build_parser().parse_args(["eval", "--defense", "dc", "--attack", "pgd"]))
    assert (plain.steps, plain.eps) == (
        EvalConfig.flat_defaults()["steps"],
        EvalConfig.flat_defaults()["eps"],
    )  # no preset: the defaults


def test_preset_applies_its_image_count():
    from rdc_lib.defenses.presets import get_preset

    args = ["eval", "--preset", "cifar10-paper", "--defense", "dc", "--attack", "pgd"]
    assert eval_config(build_parser().parse_args(args)).n_images == get_preset("cifar10-paper").data.num_test
    assert eval_config(build_parser().parse_args(args + ["--n", "16"])).n_images == 16  # a flag given wins
    assert (
        eval_config(build_parser().parse_args(["eval", "--defense", "dc"])).n_images == EvalConfig.flat_defaults()["n"]
    )


def test_spec_validates_the_grid_and_grad_mode():
    with pytest.raises(ValueError, match="valid choices"):
        DefenseSpec(name="dc", grid="cosine")
    with pytest.raises(ValueError, match="valid choices with bpda: rdc, diffpure"):
        DefenseSpec(name="dc", grad_mode="bpda")


def test_grid_sigma_min_truncates_the_dc_grid_and_is_checked(capsys):
    from rdc_lib.core.choices import GRID_SIGMA_MIN

    cfg = eval_config(build_parser().parse_args(["eval", "--defense", "dc", "--grid-sigma-min", "0.45", "--T", "4"]))
    grid = build_defense(defense_spec(cfg)).grid
    assert len(grid) == 4 and grid.sigmas.min().item() == pytest.approx(0.45)
    rdc = build_defense(defense_spec(EvalConfig(defense="rdc", heads="single", timesteps=4, grid_sigma_min=0.45)))
    assert rdc.classifier.grid.sigmas.min().item() == pytest.approx(0.45)
    # the default is the paper's level and leaves the stored configurations' keys as they were
    assert (
        EvalConfig.flat_defaults()["grid_sigma_min"] == GRID_SIGMA_MIN
        and "grid_sigma_min" not in EvalConfig().identity()
    )
    assert EvalConfig(grid_sigma_min=0.45).key() != EvalConfig().key()
    for bad in (0.0, -0.1, 3.0, float("nan")):
        with pytest.raises(ValueError, match=r"grid_sigma_min \(the noise grid's smallest level\) must be in \(0, 3"):
            EvalConfig(grid_sigma_min=bad)
    with pytest.raises(ValueError, match="lognormal grid's levels are quantiles"):
        EvalConfig(grid="lognormal", grid_sigma_min=0.45)
    with pytest.raises(ValueError, match="lognormal grid's levels are quantiles"):
        DefenseSpec(name="dc", grid="lognormal", grid_sigma_min=0.45)
    assert main(["eval", "--defense", "diffpure", "--grid-sigma-min", "0.45", "--json"]) == 2
    assert "does not read grid_sigma_min" in capsys.readouterr().err
