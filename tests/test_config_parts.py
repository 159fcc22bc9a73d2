"""EvalConfig holds parts (issue 38): a defense spec, a threat, attack settings and an image slice.

Flat names keep working for writers (``EvalConfig(eps=...)``, ``from_params``, ``replace``) and readers
(``cfg.eps``); a field added to the defense part is a flat setting that reaches the builder with no other edit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import rdc_lib.defenses.registry as defense_registry
from rdc_lib.defenses import DefenseSpec, register_defense
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.config import AttackSettings, ImageSlice, Threat
from rdc_lib.evaluation.runner import defense_spec


def test_parts_and_flat_reads():
    cfg = EvalConfig(defense="rdc", heads="single", attack="pgd", eps=0.05, n_images=12, offset=3, lm_steps=4)
    assert len(dataclasses.fields(EvalConfig)) <= 12
    assert isinstance(cfg.spec, DefenseSpec) and cfg.spec.name == "rdc" and cfg.spec.lm_steps == 4
    assert cfg.threat == Threat(norm="linf", eps=0.05)
    assert cfg.attack_settings == AttackSettings(name="pgd")
    assert cfg.images == ImageSlice(n_images=12, offset=3)
    assert (cfg.defense, cfg.attack, cfg.eps, cfg.heads, cfg.n_images, cfg.timesteps) == (
        "rdc",
        "pgd",
        0.05,
        "single",
        12,
        cfg.spec.timesteps,
    )
    with pytest.raises(AttributeError, match="n_images"):
        cfg.n  # noqa: B018 - one name per concept: the number of images is n_images
    with pytest.raises(AttributeError):
        cfg.no_such_setting  # noqa: B018


def test_built_from_parts_equals_built_from_flat_names():
    parts = EvalConfig(spec=DefenseSpec(name="cnn"), threat=Threat(eps=0.2), images=ImageSlice(n_images=5))
    assert (
        parts
        == EvalConfig(defense="cnn", eps=0.2, n=5)
        == EvalConfig.from_params({"defense": "cnn", "eps": 0.2, "n_images": 5})
    )
    assert parts.key() == EvalConfig(defense="cnn", eps=0.2, n=5).key()
    with pytest.raises(TypeError, match="threat must be a Threat"):
        EvalConfig(threat=DefenseSpec())


def test_replace_changes_flat_settings_and_checks_again():
    cfg = EvalConfig(defense="cnn", attack="pgd", eps=0.1)
    other = cfg.replace(eps=0.3, n_images=7, chunk=3)
    assert (other.eps, other.n_images, other.chunk, other.attack) == (0.3, 7, 3, "pgd")
    assert cfg.eps == 0.1  # frozen: a copy
    assert dataclasses.replace(cfg, threat=Threat(eps=0.3)).eps == 0.3
    with pytest.raises(ValueError, match="eps must be >= 0"):
        cfg.replace(eps=-1.0)


def test_flat_names_errors():
    with pytest.raises(ValueError, match="unknown evaluation parameters"):
        EvalConfig.from_params({"epsilon": 0.1})
    with pytest.raises(TypeError, match="unknown evaluation parameters"):
        EvalConfig(epsilon=0.1)
    with pytest.raises(TypeError, match="not both"):
        EvalConfig(n=3, n_images=4)
    names = [f.name for f in EvalConfig.flat_fields()]
    assert names[:5] == ["defense", "attack", "norm", "eps", "n"] and "n_images" not in names
    assert EvalConfig.flat_defaults()["ckpt_dir"] == "data/checkpoints"


def test_a_defense_setting_added_to_the_spec_reaches_the_builder(monkeypatch):
    """Adding a defense setting is one field in one place: the spec class. from_params routes it, flat reads
    see it, the builder gets it, and it joins the key only when set away from its default."""
    Spec = dataclasses.make_dataclass(
        "SpecWithTemperature",
        [("temperature", float, dataclasses.field(default=1.0))],
        bases=(DefenseSpec,),
        frozen=True,
    )
    monkeypatch.setattr(EvalConfig, "defense_part", Spec)
    monkeypatch.setattr(defense_registry, "_REGISTRY", dict(defense_registry._REGISTRY))
    seen = []

    @register_defense("toy-temperature", extra_args=("temperature",))
    def _build(spec, device):
        seen.append(spec.temperature)
        return nn.Flatten()

    cfg = EvalConfig.from_params({"defense": "toy-temperature", "temperature": 2.5})
    assert cfg.temperature == 2.5 and isinstance(cfg.spec, Spec)
    assert defense_registry.build_defense(defense_spec(cfg), torch.device("cpu")) is not None
    assert seen == [2.5]
    assert cfg.flat()["temperature"] == 2.5 and cfg.identity()["temperature"] == 2.5
    plain = EvalConfig.from_params({"defense": "toy-temperature"})
    assert "temperature" not in plain.flat() and "temperature" not in plain.identity()  # stored keys stay as they were
    assert "temperature" in [f.name for f in EvalConfig.flat_fields()]  # the CLI and sweeps see the new setting


def test_copies_pickles_and_hashes_like_a_frozen_dataclass():
    import copy
    import pickle

    cfg = EvalConfig(defense="dc", attack="pgd", eps=0.05, heads="single")
    for other in (copy.copy(cfg), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert other == cfg and other.key() == cfg.key() and other.eps == 0.05
    assert len({cfg, EvalConfig(defense="dc", attack="pgd", eps=0.05, heads="single")}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.chunk = 3
