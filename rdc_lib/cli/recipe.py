"""Training recipes: the ``rdc train`` stages of a model in one YAML file, replayed by one command.

    rdc train --recipe data/recipes/digits_film_multi_distill9_h16_long_adv.yaml --exclude-val

A recipe (data/recipes/*.yaml) is ``name``, an optional ``note`` and ``stages``, a list in training order. A
stage is ``name``, ``args`` (``rdc train`` flags without the dashes, e.g. ``batch-size: 256``), optionally
``parent`` (``--init-from``) and ``teacher`` (``--distill-from``): an earlier stage's name or a checkpoint (a
shipped name or a path), and ``shipped``: the shipped checkpoint the stage's command produced (data/README.md).

``replay`` trains every stage into ``out_dir/<stage>.safetensors``. Each output stores the stage's recipe hash
(its full training config, with parents and teachers replaced by their own hashes or file digests), so a rerun
skips a stage whose output exists with the same hash and resumes an interrupted stage from its training state.
An output with another hash (the recipe or an upstream stage changed) is refused unless ``restart``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ..evaluation.runner import resolve_denoiser
from ..models.checkpoints import checkpoint_extra
from ..train import TrainConfig, config_dict, train_denoiser
from .train import add_train_parser, train_config_from_args

__all__ = [
    "RECIPE_KEYS",
    "STAGE_KEYS",
    "Recipe",
    "RecipeError",
    "RecipeStage",
    "StagePlan",
    "load_recipe",
    "parse_recipe",
    "plan_recipe",
    "recipe_command",
    "replay_recipe",
    "stage_train_config",
]

RECIPE_KEYS = ("name", "note", "stages")
STAGE_KEYS = ("name", "note", "shipped", "parent", "teacher", "args")
# rdc train flags a stage may not set: the replay sets them (output, parents, validation, device, resuming).
_REPLAY_FLAGS = (
    "out",
    "recipe",
    "out-dir",
    "init-from",
    "distill-from",
    "exclude-val",
    "device",
    "threads",
    "no-resume",
    "restart",
    "help",
)
RECIPE_FORMAT = 1  # enters every stage hash: a change of the hashing rule invalidates stored outputs


class RecipeError(ValueError):
    """A recipe is invalid; the message names the file, the stage and what was expected."""


@dataclass(frozen=True)
class RecipeStage:
    name: str
    args: dict  # rdc train flag (no dashes) -> value
    parent: str | None = None  # --init-from: an earlier stage's name or a checkpoint
    teacher: str | None = None  # --distill-from: the same
    shipped: str | None = None  # the shipped checkpoint this stage's command produced
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    stages: tuple[RecipeStage, ...]
    source: str = "<recipe>"
    note: str = ""


@dataclass(frozen=True)
class StagePlan:
    stage: RecipeStage
    config: TrainConfig
    out: Path
    hash: str


def _train_parser() -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser(prog="rdc").add_subparsers(dest="command")
    add_train_parser(sub)
    return sub.choices["train"]


def stage_arg_names() -> tuple[str, ...]:
    """The ``rdc train`` flags (without dashes) a stage's ``args`` may set."""
    names = [o[2:] for a in _train_parser()._actions for o in a.option_strings if o.startswith("--")]
    return tuple(n for n in names if n not in _REPLAY_FLAGS)


def parse_recipe(data: object, source: str = "<recipe>") -> Recipe:
    """A validated ``Recipe`` from parsed YAML; ``RecipeError`` names an unknown key, a duplicate or unknown
    stage reference, or a missing parent / teacher checkpoint."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with keys {', '.join(RECIPE_KEYS)}")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise RecipeError(f"{source}: unknown recipe key(s) {unknown}; valid keys: {', '.join(RECIPE_KEYS)}")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise RecipeError(f"{source}: 'name' must be a non-empty string")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{source}: 'stages' must be a non-empty list of stages (keys {', '.join(STAGE_KEYS)})")
    valid_args = stage_arg_names()
    stages: list[RecipeStage] = []
    for i, s in enumerate(raw):
        where = f"{source}, stage {i + 1}"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            raise RecipeError(f"{where}: a stage is a mapping with a non-empty 'name' (keys {', '.join(STAGE_KEYS)})")
        where = f"{source}, stage {s['name']!r}"
        bad = sorted(set(s) - set(STAGE_KEYS))
        if bad:
            raise RecipeError(f"{where}: unknown stage key(s) {bad}; valid stage keys: {', '.join(STAGE_KEYS)}")
        args = s.get("args") or {}
        if not isinstance(args, dict):
            raise RecipeError(f"{where}: 'args' must be a mapping of rdc train flags (without dashes) to values")
        bad = sorted(set(args) - set(valid_args))
        if bad:
            raise RecipeError(
                f"{where}: unknown key(s) {bad} in 'args'; valid: {', '.join(valid_args)} (parent, "
                "teacher and the replay's own flags are set outside 'args')"
            )
        if any(isinstance(v, (bool, list, dict)) or v is None for v in args.values()):
            raise RecipeError(f"{where}: every value in 'args' must be a number or a string")
        if s["name"] in {st.name for st in stages}:
            raise RecipeError(f"{where}: the stage name is used twice")
        refs = {k: s.get(k) for k in ("parent", "teacher", "shipped")}
        for k, v in refs.items():
            if v is not None and not (isinstance(v, str) and v):
                raise RecipeError(f"{where}: {k!r} must be a stage name or a checkpoint, got {v!r}")
        for k in ("parent", "teacher"):
            if refs[k] is not None and refs[k] not in {st.name for st in stages}:
                _check_checkpoint(refs[k], f"{where}: {k} checkpoint")
        stages.append(
            RecipeStage(
                name=s["name"],
                args=dict(args),
                parent=refs["parent"],
                teacher=refs["teacher"],
                shipped=refs["shipped"],
                note=str(s.get("note") or ""),
            )
        )
    return Recipe(name=data["name"], stages=tuple(stages), source=source, note=str(data.get("note") or ""))


def _check_checkpoint(ref: str, what: str) -> Path:
    try:
        return resolve_denoiser(ref)
    except FileNotFoundError as err:
        raise RecipeError(
            f"{what} {ref!r} is missing: neither an earlier stage of the recipe nor an existing checkpoint ({err})"
        ) from err


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file (``RecipeError`` on bad content, ``FileNotFoundError`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path} (the shipped recipes are in data/recipes/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    return parse_recipe(data, str(path))


def stage_train_config(
    stage: RecipeStage, parent: str | None, teacher: str | None, *, exclude_val: bool = False, where: str = ""
) -> TrainConfig:
    """The ``TrainConfig`` of ``stage`` read by the ``rdc train`` parser, with ``parent`` / ``teacher`` (checkpoint
    paths) as --init-from / --distill-from."""
    argv = ["--out", "unused.safetensors"]
    for k, v in stage.args.items():
        argv += [f"--{k}", str(v)]
    try:
        args = _train_parser().parse_args(argv)
    except SystemExit as err:  # argparse reports the bad value on stderr; name the stage here
        raise RecipeError(
            f"{where or 'recipe'}, stage {stage.name!r}: its args are not valid rdc train flags ({' '.join(argv[2:])})"
        ) from err
    args.init_from, args.distill_from, args.exclude_val = None, None, exclude_val
    # paths as given: a parent stage's output does not exist before the replay reaches it
    return replace(train_config_from_args(args), init_from=parent, distill_from=teacher)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plan_recipe(recipe: Recipe, out_dir: str | Path, *, exclude_val: bool = False) -> list[StagePlan]:
    """Every stage's config, output path and hash (nothing is trained)."""
    out_dir = Path(out_dir)
    plans: dict[str, StagePlan] = {}
    for stage in recipe.stages:
        refs: dict[str, tuple[str | None, str | None]] = {}
        for k in ("parent", "teacher"):
            ref = getattr(stage, k)
            if ref is None:
                refs[k] = (None, None)
            elif ref in plans:
                refs[k] = (str(plans[ref].out), "stage:" + plans[ref].hash)
            else:
                path = _check_checkpoint(ref, f"{recipe.source}, stage {stage.name!r}: {k} checkpoint")
                refs[k] = (str(path), "sha256:" + _sha256(path))
        cfg = stage_train_config(
            stage, refs["parent"][0], refs["teacher"][0], exclude_val=exclude_val, where=recipe.source
        )
        ident = {
            **config_dict(cfg),
            "init_from": refs["parent"][1],
            "distill_from": refs["teacher"][1],
            "recipe_format": RECIPE_FORMAT,
        }
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        plans[stage.name] = StagePlan(stage, cfg, out_dir / f"{stage.name}.safetensors", digest)
    return list(plans.values())


def stored_hash(path: Path) -> str | None:
    """The recipe hash stored in a stage output (None for a checkpoint written outside a recipe)."""
    return (checkpoint_extra(path).get("recipe") or {}).get("hash")


def replay_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    exclude_val: bool = False,
    device: str = "cpu",
    restart: bool = False,
    progress: bool = True,
    on_stage: Callable[[StagePlan, str], None] | None = None,
) -> list[dict]:
    """Train the stages in order; returns one summary per stage (``status`` "skipped" or "trained").

    ``on_stage(plan, status)`` is called before each stage ("skip" / "train"). An existing output of another
    hash raises ``RecipeError`` unless ``restart`` (then that stage trains again from step 0).
    """
    plans = plan_recipe(recipe, out_dir, exclude_val=exclude_val)
    done: list[dict] = []
    for plan in plans:
        meta = {
            "recipe": {"name": recipe.name, "stage": plan.stage.name, "hash": plan.hash, "exclude_val": exclude_val}
        }
        redo = False
        if plan.out.is_file():
            found = stored_hash(plan.out)
            if found == plan.hash:
                if on_stage is not None:
                    on_stage(plan, "skip")
                done.append({"stage": plan.stage.name, "out": str(plan.out), "hash": plan.hash, "status": "skipped"})
                continue
            if not restart:
                raise RecipeError(
                    f"{plan.out} exists with recipe hash {found!r}, but stage {plan.stage.name!r} of "
                    f"{recipe.source} gives {plan.hash!r} (the recipe, an upstream stage or the "
                    "validation setting changed): move it aside or pass --restart to train it again"
                )
            redo = True
        if on_stage is not None:
            on_stage(plan, "train")
        summary = train_denoiser(plan.config, plan.out, device=device, restart=redo, progress=progress, metadata=meta)
        done.append({"stage": plan.stage.name, "hash": plan.hash, "status": "trained", **summary})
    return done


def default_out_dir(recipe: Recipe, exclude_val: bool) -> Path:
    """runs/recipes/<name> (with ``_exclude_val`` appended when the validation images are left out)."""
    return Path("runs/recipes") / (recipe.name + ("_exclude_val" if exclude_val else ""))


def with_steps(recipe: Recipe, steps: int) -> Recipe:
    """The recipe with every stage's ``steps`` set to ``steps`` (tests and timing runs)."""
    return replace(recipe, stages=tuple(replace(s, args={**s.args, "steps": steps}) for s in recipe.stages))


def recipe_command(args: argparse.Namespace, on_stage: Callable[[StagePlan, str], None] | None = None) -> list[dict]:
    """``rdc train --recipe FILE``: replay the recipe into --out-dir (default ``default_out_dir``). A flag that
    sets a training argument is refused: the recipe's stages carry them."""
    defaults = {a.dest: a.default for a in _train_parser()._actions if a.dest != "help"}
    allowed = {"recipe", "out_dir", "exclude_val", "device", "threads", "restart"}
    given = sorted(k for k, v in vars(args).items() if k in defaults and k not in allowed and v != defaults[k])
    if given:
        raise ValueError(
            f"--recipe replays the recipe's own training arguments; drop "
            f"{', '.join('--' + k.replace('_', '-') for k in given)} (or edit the recipe)"
        )
    recipe = load_recipe(args.recipe)
    out_dir = args.out_dir or default_out_dir(recipe, args.exclude_val)
    return replay_recipe(
        recipe, out_dir, exclude_val=args.exclude_val, device=args.device, restart=args.restart, on_stage=on_stage
    )
