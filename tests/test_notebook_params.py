"""Validation of notebook parameters: every bad value fails with a message naming the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rdc_lib.jobs.params import (
    PARAM_SPECS,
    MissingFilesError,
    NotebookParameterError,
    validate_params,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
GOOD = dict(
    dataset="digits",
    checkpoint="../data/checkpoints/digits_multi.safetensors",
    n_images=4,
    timesteps=8,
    lm_steps=5,
    lm_eta=8 / 255,
    lm_step_size=0.1,
    lm_norm="linf",
    attack="pgd",
    norm="linf",
    eps=0.1,
    attack_steps=3,
    seed=0,
    device="cpu",
    interactive=False,
    result_dir="",
)


def test_good_parameters_pass_and_are_normalised():
    out = validate_params(base_dir=NOTEBOOKS, **{**GOOD, "eps": 1, "eps_list": [0, 0.1]})
    assert out["eps"] == 1.0 and isinstance(out["eps"], float)
    assert out["eps_list"] == [0.0, 0.1] and all(isinstance(v, float) for v in out["eps_list"])
    assert out["n_images"] == 4 and out["interactive"] is False


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("eps", -1, "eps = -1"),
        ("eps", 2.0, "l_inf budget"),
        ("eps", "0.1", "expected a number"),
        ("eps", float("nan"), "expected a number"),
        ("n_images", 2.5, "expected an int"),
        ("n_images", True, "expected an int"),
        ("n_images", 0, ">= 1"),
        ("n_images", 361, "at most 360"),
        ("norm", "l3", "one of: linf, l2"),
        ("lm_norm", "l1", "one of: linf, l2"),
        ("attack", "cw", "one of: fgsm, pgd"),
        ("interactive", 1, "True or False"),
        ("lm_step_size", 0, ">= 1e-12"),
        ("lm_optimizer", "rmsprop", "one of: sgd, sign, adam"),
        ("square_queries", 0, ">= 1"),
        ("lm_steps", -1, ">= 0"),
        ("seed", -3, ">= 0"),
        ("dataset", "mnist", "one of: digits, cifar10"),
        ("device", "gpu", "'cpu', 'cuda'"),
        ("result_dir", 3, "expected a string"),
    ],
)
def test_bad_value_names_the_parameter(name, value, fragment):
    with pytest.raises(NotebookParameterError) as info:
        validate_params(base_dir=NOTEBOOKS, **{**GOOD, name: value})
    message = str(info.value)
    assert f"notebook parameter {name}" in message
    assert fragment in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("eps_list", "[0.1]", "-y 'eps_list: [...]'"),
        ("eps_list", [], "at least 1"),
        ("eps_list", [0.1, -0.2], "eps_list[1]"),
        ("eps_list", [0.1, 0.1], "without repeated"),
        ("defenses", ["dc", "resnet"], "cnn, at-cnn"),
        ("attacks", ["pgd", "bim"], "autoattack"),
        ("timesteps_list", [4, 0], "timesteps_list[1]"),
    ],
)
def test_bad_lists(name, value, fragment):
    with pytest.raises(NotebookParameterError, match="notebook parameter " + name) as info:
        validate_params(base_dir=NOTEBOOKS, **{name: value})
    assert fragment in str(info.value)


def test_l2_budget_may_exceed_one():
    assert validate_params(norm="l2", eps=2.0)["eps"] == 2.0
    with pytest.raises(NotebookParameterError, match="lm_eta"):
        validate_params(lm_norm="linf", lm_eta=1.5)


def test_unknown_name_suggests_the_close_one():
    expected = r"unknown notebook parameter\(s\) 'lm_step' \(did you mean 'lm_steps'\?\)"
    with pytest.raises(NotebookParameterError, match=expected):
        validate_params(lm_step=3)


def test_shipped_names_and_relative_paths_resolve_from_any_folder(tmp_path, monkeypatch):
    """The notebooks' defaults (shipped names, paths relative to notebooks/) work whatever the current folder."""
    from rdc_lib.core.paths import REPO_ROOT, checkpoint_path

    shipped = str(checkpoint_path("digits_multi"))
    for cwd in (REPO_ROOT, NOTEBOOKS, tmp_path):
        monkeypatch.chdir(cwd)
        assert validate_params(checkpoint="digits_multi")["checkpoint"] == shipped
        assert validate_params(checkpoint="../data/checkpoints/digits_multi.safetensors")["checkpoint"] == shipped
    monkeypatch.chdir(REPO_ROOT)
    assert validate_params(checkpoint="data/checkpoints/digits_multi.safetensors")["checkpoint"] == shipped
    (tmp_path / "mine.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # the current folder comes first
    assert validate_params(checkpoint="mine.safetensors")["checkpoint"] == str(tmp_path / "mine.safetensors")


def test_empty_denoiser_is_the_shipped_default_of_its_heads(tmp_path, monkeypatch):
    """'' resolves through rdc_lib.core.choices.DEFAULT_DENOISERS (the one mapping), from any folder."""
    from rdc_lib.core.choices import DEFAULT_DENOISERS
    from rdc_lib.core.paths import checkpoint_path

    monkeypatch.chdir(tmp_path)
    out = validate_params(checkpoint="", checkpoint_single="")
    assert out["checkpoint"] == str(checkpoint_path(DEFAULT_DENOISERS["multi"]))
    assert out["checkpoint_single"] == str(checkpoint_path(DEFAULT_DENOISERS["single"]))
    assert validate_params(checkpoint="", heads="single")["checkpoint"] == str(
        checkpoint_path(DEFAULT_DENOISERS["single"])
    )
    monkeypatch.setattr("rdc_lib.jobs.params.default_denoiser", lambda heads: "digits_multi")  # read, not copied
    assert validate_params(checkpoint="")["checkpoint"] == str(checkpoint_path("digits_multi"))
    with pytest.raises(NotebookParameterError, match="notebook parameter contrast_checkpoint = ''"):
        validate_params(contrast_checkpoint="")  # a contrast must be named
    with pytest.raises(NotebookParameterError, match="notebook parameter checkpoint_single = ''.*dataset 'cifar10'"):
        validate_params(dataset="cifar10", checkpoint_single="")


def test_denoiser_note_says_which_denoiser_and_where_the_choice_is_explained():
    from rdc_lib.core.choices import DEFAULT_DENOISERS, LEGACY_DENOISERS
    from rdc_lib.core.paths import checkpoint_path, denoiser_note

    for heads, name in DEFAULT_DENOISERS.items():
        note = denoiser_note(checkpoint_path(name))
        assert note.startswith(f"{name}: the shipped {heads}-head default") and "docs/denoisers.md" in note
    for heads, name in LEGACY_DENOISERS.items():
        note = denoiser_note(name)
        assert f"the retired {heads}-head default" in note and DEFAULT_DENOISERS[heads] in note
    assert "default" not in denoiser_note("digits_film_multi_distill9").split("(")[0]
    assert denoiser_note("/elsewhere/mine.safetensors").startswith("mine: a denoiser file")


def test_empty_checkpoint_with_cifar10_is_the_presets_classifier(cifar_files, monkeypatch):
    root, classifier = cifar_files
    from rdc_lib.defenses.presets import get_preset

    monkeypatch.setenv("RDC_DATA_DIR", str(root))
    (root / "checkpoints").mkdir()
    for name in (classifier, get_preset("cifar10-paper").checkpoints.lm):
        (root / "checkpoints" / name).write_bytes(b"")
    out = validate_params(base_dir=root, dataset="cifar10", data_root="cifar", checkpoint="")
    assert out["checkpoint"] == str(root / "checkpoints" / classifier)


def test_diffusers_model_resolves_and_bad_folders_name_the_parameter(tmp_path, monkeypatch):
    from rdc_lib.core.paths import REPO_ROOT

    shipped = str(REPO_ROOT / "data" / "diffusers_digits")
    for cwd in (REPO_ROOT, NOTEBOOKS):
        monkeypatch.chdir(cwd)
        assert validate_params(diffusers_model="../data/diffusers_digits")["diffusers_model"] == shipped
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        MissingFilesError, match="notebook parameter diffusers_model = 'nope': diffusers model folder not found"
    ):
        validate_params(diffusers_model="nope")
    with pytest.raises(
        NotebookParameterError, match="notebook parameter diffusers_model = .*not a diffusers model folder"
    ):
        validate_params(diffusers_model=str(REPO_ROOT / "data" / "checkpoints"))
    (tmp_path / "m").mkdir()
    for sub in ("unet", "scheduler"):
        (tmp_path / "m" / sub).mkdir()
    cfg = json.loads((REPO_ROOT / "data/diffusers_digits/unet/config.json").read_text())
    (tmp_path / "m/unet/config.json").write_text(json.dumps({**cfg, "sample_size": 32}))
    (tmp_path / "m/scheduler/scheduler_config.json").write_text(
        (REPO_ROOT / "data/diffusers_digits/scheduler/scheduler_config.json").read_text()
    )
    with pytest.raises(NotebookParameterError, match="diffusers_model = 'm': unsupported model sample_size 32"):
        validate_params(diffusers_model="m")


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(MissingFilesError, match="notebook parameter cnn_checkpoint = 'digits_cnm'") as info:
        validate_params(cnn_checkpoint="digits_cnm")
    assert "digits_cnn" in str(info.value) and "digits_multi" in str(info.value)


def test_missing_checkpoint_names_parameter_and_path(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        validate_params(base_dir=tmp_path, dataset="digits", checkpoint="nope.safetensors")
    assert "notebook parameter checkpoint" in str(info.value)
    assert str((tmp_path / "nope.safetensors").resolve()) in str(info.value)
    assert str(NOTEBOOKS / "nope.safetensors") in str(info.value)  # every place looked in
    assert "no such file" in str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_cifar10_without_files_lists_what_to_put_where(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        validate_params(base_dir=tmp_path, dataset="cifar10", data_root="cifar", checkpoint="ckpt/x.safetensors")
    message = str(info.value)
    assert "notebook parameter dataset = 'cifar10'" in message
    assert "data_batch_1" in message and "test_batch" in message
    assert str((tmp_path / "cifar").resolve()) in message
    assert "edm-cifar10-32x32-cond-vp" in message and "rdc import-edm" in message


@pytest.fixture
def cifar_files(tmp_path):
    """Empty stand-ins for every file of the cifar10-paper preset: cifar/<batches>, ckpt/<EDM checkpoints>."""
    from rdc_lib.data import CIFAR10_FILES
    from rdc_lib.defenses.presets import get_preset

    (tmp_path / "cifar").mkdir()
    (tmp_path / "ckpt").mkdir()
    for name in CIFAR10_FILES:
        (tmp_path / "cifar" / name).write_bytes(b"")
    ck = get_preset("cifar10-paper").checkpoints
    for name in (ck.classifier, ck.lm):
        (tmp_path / "ckpt" / name).write_bytes(b"")
    return tmp_path, ck.classifier


def test_cifar10_with_files_passes(cifar_files):
    root, classifier = cifar_files
    out = validate_params(base_dir=root, dataset="cifar10", data_root="cifar", checkpoint=f"ckpt/{classifier}")
    assert out["dataset"] == "cifar10"
    assert validate_params(base_dir=root, dataset="cifar10", data_root="cifar", ckpt_dir="ckpt")["ckpt_dir"] == str(
        root / "ckpt"
    )


def test_cifar10_defenses_are_the_diffusion_ones(cifar_files):
    root, _ = cifar_files
    common = dict(base_dir=root, dataset="cifar10", data_root="cifar", ckpt_dir="ckpt")
    assert validate_params(**common, defenses=["dc", "rdc"])["defenses"] == ["dc", "rdc"]
    with pytest.raises(NotebookParameterError, match="only 'dc' and 'rdc' with dataset 'cifar10'"):
        validate_params(**common, defenses=["dc", "cnn"])


def test_choices_match_the_library():
    from rdc_lib.attacks import NORMS as ATTACK_NORMS
    from rdc_lib.defenses.rdc import GRAD_MODES as RDC_GRAD_MODES
    from rdc_lib.diffusion.lm import LM_NORMS, LM_OPTIMIZERS
    from rdc_lib.jobs.param_specs import GRAD_MODES, NORMS
    from rdc_lib.jobs.param_specs import LM_OPTIMIZERS as NB_OPTIMIZERS

    assert set(NB_OPTIMIZERS) == set(LM_OPTIMIZERS) and set(NORMS) == set(LM_NORMS) == set(ATTACK_NORMS)
    assert set(GRAD_MODES) == set(RDC_GRAD_MODES)


def test_every_spec_has_help_and_a_known_kind():
    kinds = {"int", "float", "bool", "str", "path", "denoiser", "list[float]", "list[int]", "list[str]"}
    for name, spec in PARAM_SPECS.items():
        assert spec.kind in kinds, name
        assert spec.help, name
