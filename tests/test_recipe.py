"""Training recipes (rdc_lib.cli.recipe): the shipped recipes match data/README.md and the shipped files; a tiny
recipe replays, resumes stage by stage and refuses bad input."""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from rdc_lib.cli import main
from rdc_lib.cli.recipe import (
    RecipeError,
    _train_parser,
    load_recipe,
    parse_recipe,
    plan_recipe,
    replay_recipe,
    stage_arg_names,
    stage_train_config,
    stored_hash,
)
from rdc_lib.cli.train import train_config_from_args
from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.models.checkpoints import checkpoint_extra
from rdc_lib.train import TrainConfig, config_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "data" / "recipes"
CKPT = "data/checkpoints/{}.safetensors"


def _readme_command(shipped: str) -> str:
    """The `rdc train ...` command of ``shipped``'s row in data/README.md."""
    for line in (ROOT / "data" / "README.md").read_text().splitlines():
        if line.startswith(f"| `checkpoints/{shipped}.safetensors`"):
            cmds = [c for c in re.findall(r"`([^`]*)`", line) if c.startswith("rdc train ")]
            assert len(cmds) == 1, line
            return cmds[0]
    raise AssertionError(f"data/README.md has no row for checkpoints/{shipped}.safetensors")


def _readme_config(shipped: str) -> TrainConfig:
    argv = shlex.split(_readme_command(shipped))[2:]
    return train_config_from_args(_train_parser().parse_args(argv))


def test_a_recipe_per_shipped_default():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(DEFAULT_DENOISERS.values())
    for name in DEFAULT_DENOISERS.values():
        recipe = load_recipe(RECIPES / f"{name}.yaml")
        assert recipe.name == name and recipe.stages[-1].shipped == name


def test_multi_head_recipe_is_the_nine_stage_chain():
    recipe = load_recipe(RECIPES / f"{DEFAULT_DENOISERS['multi']}.yaml")
    chain = ["film_multi", "distill", "distill9", "hi", "hi2", "adv", "h16", "h16_long", "h16_long_adv"]
    assert [s.name for s in recipe.stages] == ["film_single", *chain]
    for prev, stage in zip(chain, recipe.stages[2:]):
        assert stage.parent == prev and stage.teacher == "film_single"


@pytest.mark.parametrize("name", sorted(DEFAULT_DENOISERS.values()))
def test_recipe_stages_match_readme_commands_and_shipped_files(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    shipped = {s.name: s.shipped for s in recipe.stages}
    for stage in recipe.stages:
        assert stage.shipped, f"stage {stage.name} names no shipped checkpoint"
        parent = CKPT.format(shipped[stage.parent]) if stage.parent else None
        teacher = CKPT.format(shipped[stage.teacher]) if stage.teacher else None
        cfg = stage_train_config(stage, parent, teacher)
        assert cfg == _readme_config(stage.shipped), f"stage {stage.name} differs from data/README.md's command"
        stored = checkpoint_extra(ROOT / CKPT.format(stage.shipped))["train_config"]
        mine = config_dict(cfg)
        # fields added after a file was trained were at their defaults then
        defaults = config_dict(TrainConfig())
        for key in ("init_from", "distill_from"):  # the file trained from, wherever it lay then
            mine[key], stored[key] = (None if d.get(key) is None else Path(d[key]).name for d in (mine, stored))
        for key in mine:
            want = stored.get(key, defaults[key])
            assert mine[key] == want, f"stage {stage.name}: {key} = {mine[key]!r}, the shipped file has {want!r}"


def test_readme_check_can_fail():
    """The comparison above catches a stage whose argument differs from the README command."""
    recipe = load_recipe(RECIPES / "digits_film_single.yaml")
    stage = recipe.stages[0]
    bad = type(stage)(**{**asdict(stage), "args": {**stage.args, "seed": 1}})
    assert stage_train_config(bad, None, None) != _readme_config("digits_film_single")


TINY_ARGS = {"arch": "film", "model-channels": 8, "steps": 2, "batch-size": 8, "warmup": 1}


def _tiny(tmp_path: Path, seed_c: int = 0, seed_a: int = 0) -> dict:
    return {
        "name": "tiny",
        "stages": [
            {"name": "a", "args": {**TINY_ARGS, "heads": "single", "seed": seed_a}},
            {"name": "b", "teacher": "a", "args": {**TINY_ARGS, "heads": "multi", "distill-classes": 2}},
            {
                "name": "c",
                "parent": "b",
                "teacher": "a",
                "args": {**TINY_ARGS, "heads": "multi", "distill-classes": 9, "seed": seed_c},
            },
        ],
    }


def test_tiny_recipe_replays_resumes_and_skips(tmp_path):
    out = tmp_path / "out"
    seen: list[tuple[str, str]] = []

    class Stop(Exception):
        pass

    def interrupt(plan, status):
        seen.append((plan.stage.name, status))
        if plan.stage.name == "c":
            raise Stop  # killed before the last stage

    recipe = parse_recipe(_tiny(tmp_path))
    with pytest.raises(Stop):
        replay_recipe(recipe, out, exclude_val=True, progress=False, on_stage=interrupt)
    assert seen == [("a", "train"), ("b", "train"), ("c", "train")]
    assert (out / "a.safetensors").is_file() and not (out / "c.safetensors").exists()
    mtime = (out / "a.safetensors").stat().st_mtime_ns
    seen.clear()
    res = replay_recipe(
        recipe, out, exclude_val=True, progress=False, on_stage=lambda p, s: seen.append((p.stage.name, s))
    )
    assert seen == [("a", "skip"), ("b", "skip"), ("c", "train")]
    assert [r["status"] for r in res] == ["skipped", "skipped", "trained"]
    assert (out / "a.safetensors").stat().st_mtime_ns == mtime
    plans = {p.stage.name: p for p in plan_recipe(recipe, out, exclude_val=True)}
    for name, plan in plans.items():
        assert stored_hash(out / f"{name}.safetensors") == plan.hash
        extra = checkpoint_extra(out / f"{name}.safetensors")
        assert extra["train_config"]["exclude_val"] is True and extra["recipe"]["stage"] == name
    tc = checkpoint_extra(out / "c.safetensors")["train_config"]
    assert tc["init_from"] == str(out / "b.safetensors") and tc["distill_from"] == str(out / "a.safetensors")
    # a third run trains nothing
    assert [r["status"] for r in replay_recipe(recipe, out, exclude_val=True, progress=False)] == ["skipped"] * 3


def test_hash_follows_the_chain_and_a_changed_stage_is_refused(tmp_path):
    out = tmp_path / "out"
    base = {p.stage.name: p.hash for p in plan_recipe(parse_recipe(_tiny(tmp_path)), out)}
    other_a = {p.stage.name: p.hash for p in plan_recipe(parse_recipe(_tiny(tmp_path, seed_a=1)), out)}
    assert all(base[k] != other_a[k] for k in "abc")  # an upstream change reaches every downstream stage
    other_c = {p.stage.name: p.hash for p in plan_recipe(parse_recipe(_tiny(tmp_path, seed_c=1)), out)}
    assert base["a"] == other_c["a"] and base["b"] == other_c["b"] and base["c"] != other_c["c"]
    assert (
        base["a"]
        != {p.stage.name: p.hash for p in plan_recipe(parse_recipe(_tiny(tmp_path)), out, exclude_val=True)}["a"]
    )
    replay_recipe(parse_recipe(_tiny(tmp_path)), out, progress=False)
    with pytest.raises(RecipeError, match=r"c\.safetensors exists with recipe hash .* stage 'c'"):
        replay_recipe(parse_recipe(_tiny(tmp_path, seed_c=1)), out, progress=False)
    res = replay_recipe(parse_recipe(_tiny(tmp_path, seed_c=1)), out, progress=False, restart=True)
    assert [r["status"] for r in res] == ["skipped", "skipped", "trained"]
    assert stored_hash(out / "c.safetensors") == other_c["c"]


def test_bad_recipes_are_named(tmp_path):
    good = _tiny(tmp_path)
    bad_key = {**good, "stages": [{**good["stages"][0], "parnet": "x"}]}
    with pytest.raises(RecipeError, match=r"stage 'a': unknown stage key\(s\) \['parnet'\]; valid stage keys: name"):
        parse_recipe(bad_key, "r.yaml")
    bad_arg = {**good, "stages": [{**good["stages"][0], "args": {"stpes": 3}}]}
    with pytest.raises(RecipeError, match=r"stage 'a': unknown key\(s\) \['stpes'\] in 'args'"):
        parse_recipe(bad_arg, "r.yaml")
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['out'\]"):
        parse_recipe({**good, "stages": [{**good["stages"][0], "args": {"out": "x.safetensors"}}]}, "r.yaml")
    missing = {
        **good,
        "stages": [good["stages"][0], {**good["stages"][2], "parent": "data/checkpoints/nope.safetensors"}],
    }
    with pytest.raises(
        RecipeError, match=r"stage 'c': parent checkpoint 'data/checkpoints/nope.safetensors' is missing"
    ):
        parse_recipe(missing, "r.yaml")
    later = {**good, "stages": [good["stages"][2], good["stages"][0]]}  # parent named before it is trained
    with pytest.raises(RecipeError, match=r"stage 'c': parent checkpoint 'b' is missing"):
        parse_recipe(later, "r.yaml")
    with pytest.raises(RecipeError, match=r"unknown recipe key\(s\) \['stage'\]"):
        parse_recipe({"name": "x", "stage": []}, "r.yaml")
    with pytest.raises(RecipeError, match="used twice"):
        parse_recipe({**good, "stages": [good["stages"][0], good["stages"][0]]}, "r.yaml")
    with pytest.raises(RecipeError, match="stage 'a': its args are not valid rdc train flags"):
        plan_recipe(parse_recipe({**good, "stages": [{**good["stages"][0], "args": {"steps": "many"}}]}), tmp_path)
    assert "steps" in stage_arg_names() and "init-from" not in stage_arg_names()


def test_cli_recipe(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    recipe = _tiny(tmp_path)
    recipe["stages"] = recipe["stages"][:1]
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "o"
    assert main(["train", "--recipe", str(path), "--out-dir", str(out), "--exclude-val"]) == 0
    assert (out / "a.safetensors").is_file()
    assert main(["train", "--recipe", str(path), "--out-dir", str(out), "--exclude-val"]) == 0
    assert "stage a: done, skipped" in capsys.readouterr().out
    assert main(["train", "--recipe", str(path), "--steps", "5"]) == 2
    assert "drop --steps" in capsys.readouterr().err
    assert main(["train", "--recipe", str(tmp_path / "none.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    assert main(["train", "--heads", "single"]) == 2
    assert "needs --out" in capsys.readouterr().err
