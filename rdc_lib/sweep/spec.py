"""Sweep files: parse the YAML, check every cell against the target's declared parameters, expand the grid.

A sweep file names one target and the parameter cells to run on it::

    name: digits_eps                  # optional, default: the file's stem
    function: eval                    # or  notebook: notebooks/04_robustness_sweep.ipynb
                                      # or  function: my_package.module:callable
    params: {attack: pgd, steps: 10}  # fixed for every cell
    grid:                             # cartesian product, in this key order
      defense: [cnn, at-cnn, dc]
      eps: [0.05, 0.1]
    include:                          # optional extra cells (merged over params)
      - {defense: rdc, eps: 0.1}
    n: 32                             # dataset slice, passed as the parameters n / offset / dataset
    offset: 0
    seeds: [0, 1]                     # every cell runs once per seed (parameter ``seed``)
    output: runs/sweeps/digits_eps    # executed notebooks / per-cell folders (default runs/sweeps/<name>)
    store: runs/sweeps/digits_eps/results.sqlite   # default <output>/results.sqlite
    checkpoints: [data/checkpoints/digits_multi.safetensors]   # optional, hashed into every cell's key
    kernel: python3                   # notebooks only: kernel name (default: the notebook's kernelspec)
    cell_timeout: 3600                # notebooks only: seconds per notebook cell

Relative paths resolve against ``base_dir`` (default: the current working directory), like the paths
given to ``rdc`` on the command line. Everything is validated before any cell runs; a problem raises
``SweepSpecError`` naming the file, the YAML line and the valid choices. What each kind of target declares
(and so which parameters a cell may set) is read by ``rdc_lib.sweep.targets``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..evaluation.runner import EvalConfig
from .targets import EVAL_TARGET, describe_type, target_params, type_accepts

__all__ = ["SweepSpecError", "SweepSpec", "load_sweep", "parse_sweep"]

TOP_LEVEL_KEYS: dict[str, str] = {
    "name": "label of the sweep (default: the file's stem)",
    "notebook": "parameterised notebook to execute per cell",
    "function": "'eval' or 'module.path:callable' to call per cell",
    "params": "parameters fixed for every cell",
    "grid": "parameter -> list of values (cartesian product)",
    "include": "list of explicit extra cells",
    "seeds": "list of integer seeds (parameter 'seed')",
    "n": "number of dataset examples (parameter 'n')",
    "offset": "first dataset example (parameter 'offset')",
    "dataset": "dataset name (parameter 'dataset')",
    "output": "folder for executed notebooks and per-cell files",
    "store": "SQLite result store path",
    "checkpoints": "checkpoint files whose sha256 enters every cell's key",
    "kernel": "Jupyter kernel name for notebook targets",
    "cell_timeout": "per-notebook-cell timeout in seconds",
}
SLICE_KEYS = ("n", "offset", "dataset")
RESULT_DIR_PARAM = "result_dir"  # the notebook convention: write results.json into this folder


class SweepSpecError(ValueError):
    """A sweep file is invalid; the message names the file, the line and the valid choices."""


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. ``cells()`` lists the parameter dicts (seed included) in run order."""

    name: str
    target_kind: Literal["notebook", "function"]
    target: str  # absolute notebook path, "eval" or "module:callable"
    fixed: dict[str, Any]  # params + n/offset/dataset
    grid: dict[str, tuple]
    include: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...]
    output: Path
    store: Path
    checkpoints: tuple[Path, ...] = ()
    kernel: str | None = None
    cell_timeout: float | None = None
    source: str = "<sweep>"
    base_dir: Path = field(default_factory=Path.cwd)

    def cells(self) -> list[dict[str, Any]]:
        """Every cell's parameters, seeds outermost so a partial sweep covers the grid once first."""
        combos: list[dict[str, Any]] = []
        if self.grid:
            names = list(self.grid)
            for values in itertools.product(*(self.grid[k] for k in names)):
                combos.append({**self.fixed, **dict(zip(names, values))})
        combos.extend({**self.fixed, **entry} for entry in self.include)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for seed in self.seeds:
            for combo in combos:
                cell = {**combo, "seed": seed}
                canon = json.dumps(cell, sort_keys=True)
                if canon not in seen:  # an include entry may repeat a grid cell
                    seen.add(canon)
                    out.append(cell)
        return out


# --------------------------------------------------------------------------- YAML with line numbers


def _compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML; return the data and a map path -> 1-based line (mapping keys: the key's line)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SweepSpecError(
                f"{source}: the sweep file is empty; expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}"
            )
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SweepSpecError(f"{source}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {(): node.start_mark.line + 1}
    _walk(node, (), lines, source)
    return data, lines


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = path + (str(key_node.value),)
            if key in lines:
                raise SweepSpecError(
                    f"{source}, line {key_node.start_mark.line + 1}: key {key_node.value!r} "
                    f"is given twice (first on line {lines[key]})"
                )
            lines[key] = key_node.start_mark.line + 1
            _walk(value_node, key, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, source)


class _Ctx:
    """Error reporting with the file name and the line of a path in the document."""

    def __init__(self, source: str, lines: dict[tuple, int]) -> None:
        self.source, self.lines = source, lines

    def line(self, path: tuple) -> int:
        while path not in self.lines:
            path = path[:-1]
        return self.lines[path]

    def error(self, path: tuple, message: str) -> SweepSpecError:
        where = ".".join(str(p) for p in path) or "top level"
        return SweepSpecError(f"{self.source}, line {self.line(path)} ({where}): {message}")


# --------------------------------------------------------------------------- the sweep file


def load_sweep(path: str | Path, *, base_dir: str | Path | None = None) -> SweepSpec:
    """Read and validate a sweep file (see the module docstring); ``SweepSpecError`` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    return parse_sweep(path.read_text(), source=str(path), name=path.stem, base_dir=base_dir)


def parse_sweep(
    text: str, *, source: str = "<sweep>", name: str = "sweep", base_dir: str | Path | None = None
) -> SweepSpec:
    """Validate sweep YAML text; relative paths resolve against ``base_dir`` (default: cwd)."""
    data, lines = _compose(text, source)
    ctx = _Ctx(source, lines)
    base = Path(base_dir).resolve() if base_dir is not None else Path.cwd()
    if not isinstance(data, dict):
        raise ctx.error((), f"expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}, got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            raise ctx.error(
                (str(key),),
                f"unknown key {key!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                f"valid keys: {', '.join(TOP_LEVEL_KEYS)}",
            )
    kind, target = _target(data, ctx, base)
    fixed = _mapping(data, "params", ctx, allow_empty=True)
    for key in SLICE_KEYS:
        if key in data:
            if key in fixed:
                raise ctx.error((key,), f"{key!r} is given both at the top level and under params; keep one")
            fixed[key] = data[key]
    grid = _grid(data, ctx)
    include = _include(data, ctx)
    if not grid and not include:
        raise ctx.error(
            (),
            "the sweep has no cells: give a non-empty 'grid' (parameter -> list of values) "
            "and/or an 'include' list of cells",
        )
    seeds = _seeds(data, ctx)
    for key in grid:
        if key in fixed:
            raise ctx.error(("grid", key), f"parameter {key!r} is both fixed ({_where(key, data)}) and in the grid")
    name = _string(data, "name", ctx) or name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ctx.error(("name",), f"name must be letters, digits, '_', '.', '-' (it names a folder), got {name!r}")
    output = base / (_string(data, "output", ctx) or f"runs/sweeps/{name}")
    store = base / _string(data, "store", ctx) if "store" in data else output / "results.sqlite"
    checkpoints = _checkpoints(data, ctx, base)
    kernel = _string(data, "kernel", ctx)
    timeout = data.get("cell_timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ctx.error(("cell_timeout",), f"cell_timeout must be a positive number of seconds, got {timeout!r}")
    if kind == "function" and (kernel is not None or timeout is not None):
        raise ctx.error(
            ("kernel",) if kernel is not None else ("cell_timeout",),
            "'kernel' and 'cell_timeout' apply to notebook targets only",
        )
    spec = SweepSpec(
        name=name,
        target_kind=kind,
        target=target,
        fixed=fixed,
        grid=grid,
        include=tuple(include),
        seeds=seeds,
        output=output,
        store=store,
        checkpoints=checkpoints,
        kernel=kernel,
        cell_timeout=None if timeout is None else float(timeout),
        source=source,
        base_dir=base,
    )
    _check_against_target(spec, data, ctx)
    return spec


def _where(key: str, data: dict) -> str:
    return "top level" if key in data else "params"


def _target(data: dict, ctx: _Ctx, base: Path) -> tuple[Literal["notebook", "function"], str]:
    has_nb, has_fn = "notebook" in data, "function" in data
    if has_nb == has_fn:
        raise ctx.error(
            ("notebook",) if has_nb else (),
            "give exactly one target: 'notebook: path.ipynb' or 'function: eval' / 'function: module.path:callable'",
        )
    if has_nb:
        nb = _string(data, "notebook", ctx)
        path = base / nb
        if not nb.endswith(".ipynb"):
            raise ctx.error(("notebook",), f"notebook must be an .ipynb file, got {nb!r}")
        if not path.is_file():
            raise ctx.error(("notebook",), f"notebook {path} does not exist")
        return "notebook", str(path.resolve())
    fn = _string(data, "function", ctx)
    if fn != EVAL_TARGET and fn.count(":") != 1:
        raise ctx.error(("function",), f"function must be 'eval' or 'module.path:callable', got {fn!r}")
    return "function", fn


def _string(data: dict, key: str, ctx: _Ctx) -> str | None:
    value = data.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ctx.error((key,), f"{key!r} must be a non-empty string, got {value!r}")
    return value


def _mapping(data: dict, key: str, ctx: _Ctx, *, allow_empty: bool) -> dict[str, Any]:
    value = data.get(key, {} if allow_empty else None)
    if not isinstance(value, dict):
        raise ctx.error((key,), f"{key!r} must be a mapping of parameter -> value, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ctx.error((key,), f"{key!r} is empty")
    for k in value:
        if not isinstance(k, str) or not k.isidentifier():
            raise ctx.error((key, str(k)), f"parameter names must be identifiers, got {k!r}")
    return dict(value)


def _grid(data: dict, ctx: _Ctx) -> dict[str, tuple]:
    if "grid" not in data:
        return {}
    grid = _mapping(data, "grid", ctx, allow_empty=True) if data["grid"] is not None else {}
    if not grid:
        raise ctx.error(("grid",), "'grid' is empty; give parameter -> [values] (or remove it and use 'include')")
    for key, values in grid.items():
        if not isinstance(values, list):
            raise ctx.error(
                ("grid", key),
                f"grid parameter {key!r} must be a list of values, got {values!r} "
                f"(write [{values!r}] or move it under params)",
            )
        if not values:
            raise ctx.error(("grid", key), f"grid parameter {key!r} has an empty list of values")
    return {k: tuple(v) for k, v in grid.items()}


def _include(data: dict, ctx: _Ctx) -> list[dict[str, Any]]:
    if "include" not in data:
        return []
    include = data["include"]
    if not isinstance(include, list) or not include:
        raise ctx.error(("include",), "'include' must be a non-empty list of cells (parameter -> value mappings)")
    for i, entry in enumerate(include):
        if not isinstance(entry, dict) or not entry:
            raise ctx.error(("include", i), f"include entry {i} must be a non-empty mapping, got {entry!r}")
    return [dict(e) for e in include]


def _seeds(data: dict, ctx: _Ctx) -> tuple[int, ...]:
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds:
        raise ctx.error(("seeds",), f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int):
            raise ctx.error(("seeds", i), f"seeds must be integers, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise ctx.error(("seeds",), f"'seeds' repeats a value: {seeds}")
    return tuple(seeds)


def _checkpoints(data: dict, ctx: _Ctx, base: Path) -> tuple[Path, ...]:
    items = data.get("checkpoints", [])
    if not isinstance(items, list):
        raise ctx.error(("checkpoints",), "'checkpoints' must be a list of file paths")
    out = []
    for i, item in enumerate(items):
        path = base / str(item)
        if not path.is_file():
            raise ctx.error(("checkpoints", i), f"checkpoint file {path} does not exist")
        out.append(path.resolve())
    return tuple(out)


def _check_against_target(spec: SweepSpec, data: dict, ctx: _Ctx) -> None:
    """Every parameter name declared, every value of the declared type, required ones present."""
    target_path = ("notebook",) if spec.target_kind == "notebook" else ("function",)
    try:
        decls = target_params(spec.target_kind, spec.target)
    except (ImportError, ValueError, OSError) as exc:
        raise ctx.error(target_path, f"cannot read the parameters of {spec.target!r}: {exc}") from exc
    reserved = {"seed"} | ({RESULT_DIR_PARAM} if spec.target_kind == "notebook" else set())
    open_ended = "**" in decls
    valid = sorted(n for n in decls if n != "**" and n not in reserved)
    for name in sorted(reserved):
        if name not in decls and not open_ended:
            raise ctx.error(
                target_path,
                f"target {spec.target!r} does not declare the parameter {name!r}, "
                f"which the sweep always passes; declared: {', '.join(valid)}",
            )
    for path, pname, value in _param_sites(spec, data):
        if pname in reserved:
            hint = "use the top-level 'seeds' list" if pname == "seed" else "the sweep sets it per cell"
            raise ctx.error(path, f"parameter {pname!r} is reserved ({hint})")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ctx.error(
                path,
                f"parameter {pname!r} = {value!r} is not a plain JSON value (number, string, "
                "bool, null, list, mapping); quote dates and write nan/inf as strings",
            ) from None
        decl = decls.get(pname)
        if decl is None and not open_ended:
            hint = difflib.get_close_matches(pname, valid, n=1)
            raise ctx.error(
                path,
                f"parameter {pname!r} is not declared by {spec.target_kind} {spec.target!r}"
                f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; valid parameters: {', '.join(valid)}",
            )
        if decl is not None and not type_accepts(decl.type, value):
            raise ctx.error(
                path,
                f"parameter {pname!r} = {value!r} ({type(value).__name__}) does not match the "
                f"declared type: expected {describe_type(decl.type)}",
            )
    required = {n for n, d in decls.items() if d.required and n not in reserved}
    for cell in spec.cells():
        missing = sorted(required - set(cell))
        if missing:
            raise ctx.error(
                (), f"required parameter(s) {', '.join(missing)} of {spec.target!r} are not given (cell {cell})"
            )
    if spec.target == EVAL_TARGET:
        _check_eval_cells(spec, data, ctx)


def _param_sites(spec: SweepSpec, data: dict) -> list[tuple[tuple, str, Any]]:
    """(yaml path, parameter, value) for every value the sweep passes, for line-precise messages."""
    sites: list[tuple[tuple, str, Any]] = []
    for k, v in spec.fixed.items():
        sites.append(((k,) if k in SLICE_KEYS and k in data else ("params", k), k, v))
    for k, values in spec.grid.items():
        sites.extend((("grid", k, i), k, v) for i, v in enumerate(values))
    for i, entry in enumerate(spec.include):
        sites.extend((("include", i, k), k, v) for k, v in entry.items())
    return sites


def _check_eval_cells(spec: SweepSpec, data: dict, ctx: _Ctx) -> None:
    """Construct ``EvalConfig`` for every distinct cell so its own checks (names, ranges) run now."""
    names = {f.name for f in EvalConfig.flat_fields()}
    seen: set[str] = set()
    for cell in spec.cells():
        cfg_params = {k: v for k, v in cell.items() if k in names}
        canon = json.dumps(cfg_params, sort_keys=True)
        if canon in seen:
            continue
        seen.add(canon)
        try:
            EvalConfig(**cfg_params)
        except (TypeError, ValueError) as exc:
            raise ctx.error(
                _culprit(spec, data, cfg_params, str(exc)), f"invalid evaluation cell {cfg_params}: {exc}"
            ) from exc


def _culprit(spec: SweepSpec, data: dict, cell: dict, message: str) -> tuple:
    """The YAML path of the value an error message most likely refers to (for its line number)."""
    sites = [s for s in _param_sites(spec, data) if cell.get(s[1], object()) == s[2]]
    for test in (
        lambda s: s[1] in message and repr(s[2]) in message,
        lambda s: repr(s[2]) in message,
        lambda s: s[1] in message,
    ):
        hit = next((s for s in sites if test(s)), None)
        if hit is not None:
            return hit[0]
    return ()
