"""Adding an attack or a defense touches one file: a module that registers itself (here written to tmp_path).

Once imported, the toy attack and the toy defense are valid in ``rdc eval --help``, in ``EvalConfig``, in a
sweep's validation, in the notebooks' parameter validation and in the sanity checks (which read the
registry's facts), and ``evaluate()`` runs them end to end.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdc_lib.attacks import registry as attack_registry
from rdc_lib.defenses import registry as defense_registry

ROOT = Path(__file__).resolve().parents[1]

TOY_ATTACK = "toy-one-step"
TOY_DEFENSE = "toy-shrunk-cnn"

# The whole of a new attack: one module, one register_attack call.
ATTACK_MODULE = f"""
from rdc_lib.attacks.fgsm import FGSM
from rdc_lib.attacks.registry import register_attack


@register_attack({TOY_ATTACK!r}, iterative=False, description="FGSM under another name (a one-step attack)")
def build(model, *, norm, eps, steps, restarts, eot, verify, seed, generator, **kw):
    return FGSM(model, norm=norm, eps=eps, eot=eot, verify=verify, seed=seed, generator=generator, **kw)
"""

# The whole of a new defense: one module, one register_defense call.
DEFENSE_MODULE = f'''
import torch
from torch import nn

from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.defenses.registry import register_defense
from rdc_lib.core.paths import checkpoint_path


class Shrunk(nn.Module):
    """The standard CNN on images pulled towards mid-grey (x -> 0.9 x + 0.05), deterministic."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(0.9 * x + 0.05)


@register_defense({TOY_DEFENSE!r}, checkpoints=lambda spec: [checkpoint_path("digits_cnn")],
                  description="a toy defense for the registry test")
def build(spec, device):
    return Shrunk(load_classifier(checkpoint_path("digits_cnn"), device=device))
'''


def _import_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """Write the two modules, import them (they register themselves), unregister afterwards."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "toy_attack.py").write_text(ATTACK_MODULE)
    (folder / "toy_defense.py").write_text(DEFENSE_MODULE)
    _import_module(folder / "toy_attack.py", "toy_attack")
    _import_module(folder / "toy_defense.py", "toy_defense")
    yield folder
    attack_registry._REGISTRY.pop(TOY_ATTACK, None)
    defense_registry._REGISTRY.pop(TOY_DEFENSE, None)


def test_unknown_before_registration(monkeypatch):
    """Without the modules the names are refused (so the tests below show the registration did it); entries an
    earlier test of the session left behind are taken out for this test."""
    from rdc_lib.evaluation import EvalConfig

    monkeypatch.delitem(attack_registry._REGISTRY, TOY_ATTACK, raising=False)
    monkeypatch.delitem(defense_registry._REGISTRY, TOY_DEFENSE, raising=False)
    with pytest.raises(ValueError, match=f"unknown attack '{TOY_ATTACK}'"):
        EvalConfig(attack=TOY_ATTACK)
    with pytest.raises(ValueError, match=f"unknown defense '{TOY_DEFENSE}'"):
        EvalConfig(defense=TOY_DEFENSE)


def test_found_in_eval_help(toys, capsys, monkeypatch):
    from rdc_lib.cli import main

    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at hyphens otherwise
    with pytest.raises(SystemExit) as info:
        main(["eval", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert TOY_ATTACK in text and TOY_DEFENSE in text


def test_found_in_sweep_validation(toys, tmp_path):
    from rdc_lib.sweep import SweepSpecError, parse_sweep

    spec = parse_sweep(
        f"name: toys\nfunction: eval\nparams: {{n: 32}}\ngrid:\n  defense: [{TOY_DEFENSE}, cnn]\n"
        f"  attack: [{TOY_ATTACK}, pgd]\n",
        source="toys.yaml",
        base_dir=tmp_path,
    )
    assert set(spec.grid["defense"]) == {TOY_DEFENSE, "cnn"} and set(spec.grid["attack"]) == {TOY_ATTACK, "pgd"}
    with pytest.raises(SweepSpecError, match="unknown attack 'toy-two-step'"):
        parse_sweep(
            "name: toys\nfunction: eval\ngrid:\n  attack: [toy-two-step]\n", source="bad.yaml", base_dir=tmp_path
        )


def test_found_in_notebook_parameters(toys):
    from rdc_lib.jobs.params import NotebookParameterError, validate_params

    assert validate_params(defenses=[TOY_DEFENSE, "dc"], attacks=[TOY_ATTACK])["defenses"] == [TOY_DEFENSE, "dc"]
    with pytest.raises(NotebookParameterError):
        validate_params(defenses=["toy-unregistered"])


def test_found_in_the_checks_metadata(toys):
    """The checks read the toy attack's facts: a one-step attack has no iterations to double."""
    from rdc_lib.evaluation import EvalConfig
    from rdc_lib.evaluation.attacking import AttackFactory
    from rdc_lib.evaluation.checks import skipped_checks

    cfg = EvalConfig(defense=TOY_DEFENSE, attack=TOY_ATTACK, n_images=32)
    assert AttackFactory(cfg).info().iterative is False
    assert (
        skipped_checks(cfg)["convergence"] == f"{TOY_ATTACK.upper()} is a single step; it has no iterations to double"
    )
    assert "convergence" not in skipped_checks(EvalConfig(defense=TOY_DEFENSE, attack="pgd", n_images=32))


def test_evaluate_runs_the_new_modules(toys):
    """The two modules are all it takes: evaluate() builds both by name and runs the checks."""
    from rdc_lib.evaluation import EvalConfig, evaluate

    torch.set_num_threads(1)
    res = evaluate(
        EvalConfig(defense=TOY_DEFENSE, attack=TOY_ATTACK, eps=0.2, n_images=32, steps=5, square_queries=50),
        progress=False,
    )
    assert res["defense"] == TOY_DEFENSE and res["attack"] == TOY_ATTACK
    assert res["robust_acc"] <= res["clean_acc"] and res["max_linf"] <= 0.2 + 1e-6
    assert {"gradients", "finite_difference", "large_budget", "black_box", "transfer"} <= set(res["checks"])
    assert "convergence" in res["checks_skipped"] and res["trusted"] in (True, False)


def test_registering_a_name_twice_is_refused(toys):
    with pytest.raises(ValueError, match="already registered"):
        attack_registry.register_attack(TOY_ATTACK)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="already registered"):
        defense_registry.register_defense(TOY_DEFENSE)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="unknown extra_args"):
        attack_registry.register_attack("toy-bad", extra_args=("wand",))


def test_new_modules_need_no_other_file():
    """A fresh interpreter importing only a new module and rdc_lib finds the names everywhere: nothing else
    (no list, no branch, no CLI table) had to change."""
    code = (
        f"import runpy, sys; runpy.run_path(sys.argv[1]); runpy.run_path(sys.argv[2]); "
        f"from rdc_lib.evaluation import EvalConfig; from rdc_lib.evaluation.attacking import eval_attack_names; "
        f"from rdc_lib.defenses import defense_names; "
        f"assert {TOY_ATTACK!r} in eval_attack_names() and {TOY_DEFENSE!r} in defense_names(); "
        f"EvalConfig(defense={TOY_DEFENSE!r}, attack={TOY_ATTACK!r})"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a.py", Path(d) / "b.py"
        a.write_text(ATTACK_MODULE)
        b.write_text(DEFENSE_MODULE)
        subprocess.run([sys.executable, "-c", code, str(a), str(b)], check=True, cwd=ROOT)


def test_presets_name_registered_attacks_and_defenses():
    """Every preset's attack is registered, and its dataset has defenses that take its checkpoints."""
    from rdc_lib.defenses import defense_names
    from rdc_lib.defenses.presets import PRESETS, attack_settings

    for p in PRESETS.values():
        info = attack_registry.get_attack(p.attack.attack)
        assert set(info.norms) >= {"linf", "l2"}
        assert {"dc", "rdc"} <= set(defense_names(datasets=p.data.dataset))
        assert attack_settings(p, "linf", "stadv")["eps"] == p.attack.stadv_bound  # a flow attack by its facts
