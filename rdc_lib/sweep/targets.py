"""What a sweep target declares: the parameters a cell may set and their types, read without running it.

Parameters a target declares:
- ``notebook``: the assignments of the cell tagged ``parameters`` (``papermill.inspect_notebook``,
  completed by parsing that cell with ``ast`` because papermill's regex drops annotations such as
  ``float | None`` or ``Literal[...]``). Types come from the annotations, else from the default's
  literal. The notebook must declare ``result_dir: str = ""`` (see ``rdc_lib.sweep`` for the convention).
- ``function: eval``: the fields of ``rdc_lib.evaluation.runner.EvalConfig`` (plus ``device`` and
  ``records_dir``); every cell is also checked by constructing ``EvalConfig``, so invalid names
  (an unknown defense) fail here.
- ``function: module:callable``: the callable's keyword parameters and annotations.

Types: :func:`parse_annotation` reads annotation source without evaluating it, :func:`type_accepts` checks a
YAML value against it, :func:`describe_type` names it in messages.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "EVAL_TARGET",
    "ParamDecl",
    "describe_type",
    "parse_annotation",
    "resolve_callable",
    "target_params",
    "type_accepts",
]

EVAL_TARGET = "eval"
_EVAL_EXTRA = {"device": "str", "records_dir": "str | None"}  # evaluate_params() accepts these besides EvalConfig


@dataclass(frozen=True)
class ParamDecl:
    """One parameter a target accepts: its name, type (a typing object; ``None`` = any) and help text."""

    name: str
    type: Any = None
    default: Any = None
    help: str = ""
    required: bool = False


# --------------------------------------------------------------------------- types

_TYPE_NAMES: dict[str, Any] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "List": list,
    "Dict": dict,
    "Tuple": tuple,
    "Sequence": Sequence,
    "Mapping": Mapping,
    "Any": Any,
    "None": type(None),
    "Optional": typing.Optional,
    "Union": typing.Union,
    "Literal": Literal,
}


def parse_annotation(text: str) -> Any:
    """Turn annotation source (``"float | None"``, ``"Literal['a', 'b']"``) into a typing object.

    Unknown names give ``None`` (no type check). Only names and subscripts are interpreted, nothing is
    evaluated.
    """
    try:
        tree = ast.parse(text.strip().strip("'\""), mode="eval").body
    except SyntaxError:
        return None
    try:
        return _from_ast(tree)
    except (KeyError, TypeError, ValueError):
        return None


def _from_ast(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return type(None) if node.value is None else node.value
    if isinstance(node, ast.Name):
        return _TYPE_NAMES[node.id]
    if isinstance(node, ast.Attribute):  # typing.Literal, t.Optional
        return _TYPE_NAMES[node.attr]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_from_ast(node.left), _from_ast(node.right)]
    if isinstance(node, ast.Subscript):
        origin = _from_ast(node.value)
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin is Literal:
            return Literal[tuple(ast.literal_eval(e) for e in elts)]
        args = tuple(Ellipsis if isinstance(e, ast.Constant) and e.value is Ellipsis else _from_ast(e) for e in elts)
        return origin[args if len(args) > 1 else args[0]]
    raise ValueError(f"unsupported annotation node {ast.dump(node)}")


def type_accepts(tp: Any, value: Any) -> bool:
    """Whether a YAML value fits the declared type (ints count as floats, bools never as ints)."""
    if tp is None or tp is Any or tp is object:
        return True
    if tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(type_accepts(a, value) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    base = origin or tp
    if base in (list, tuple, Sequence) or (isinstance(base, type) and issubclass(base, (list, tuple))):
        if not isinstance(value, list):
            return False
        item_types = [a for a in args if a is not Ellipsis]
        if base is tuple and args and Ellipsis not in args:
            return len(item_types) == len(value) and all(map(type_accepts, item_types, value))
        return not item_types or all(type_accepts(item_types[0], v) for v in value)
    if base in (dict, Mapping):
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(type_accepts(args[0], k) and type_accepts(args[1], v) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def describe_type(tp: Any) -> str:
    """Readable type for messages: ``float``, ``int or None``, ``one of 'a', 'b'``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is None or tp is Any:
        return "any value"
    if tp is type(None):
        return "None (null)"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is float:
        return "float (a number)"
    return getattr(tp, "__name__", None) if origin is None else str(tp).replace("typing.", "")


def _type_of_default(text: str) -> Any:
    """Infer a parameter's type from its default's source (``"0.5"`` -> float); ``None`` if unknown."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return None if value is None else type(value) if not isinstance(value, tuple) else list


# --------------------------------------------------------------------------- target declarations


def target_params(kind: str, target: str) -> dict[str, ParamDecl]:
    """The parameters a target declares (see the module docstring). Raises ``ValueError``/``ImportError``."""
    if kind == "notebook":
        return _notebook_params(Path(target))
    if target == EVAL_TARGET:
        from ..evaluation.runner import EvalConfig  # lazy: the evaluation pulls in torch

        return _dataclass_params(EvalConfig.flat_schema(), extra=_EVAL_EXTRA)
    return _callable_params(resolve_callable(target))


def _notebook_params(path: Path) -> dict[str, ParamDecl]:
    import nbformat  # heavy (nbformat, ~2 s): only notebook targets need it
    import papermill as pm  # heavy (papermill, ~2.5 s): only notebook targets need it

    decls: dict[str, ParamDecl] = {}
    for name, info in pm.inspect_notebook(str(path)).items():
        tp = parse_annotation(info["inferred_type_name"]) if info["inferred_type_name"] != "None" else None
        if tp is None:
            tp = _type_of_default(info["default"])
        decls[name] = ParamDecl(name, tp, info["default"], info.get("help", ""))
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if cells:
        try:
            body = ast.parse(cells[0].source).body
        except SyntaxError as exc:
            raise ValueError(f"the parameters cell of {path} is not valid Python: {exc}") from exc
        for stmt in body:  # papermill's regex skips e.g. `eps: float | None = None`; ast does not
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                tp = parse_annotation(ast.unparse(stmt.annotation))
                default = ast.unparse(stmt.value) if stmt.value is not None else None
                old = decls.get(stmt.target.id)
                if tp is None and old is not None:
                    tp = old.type
                decls[stmt.target.id] = ParamDecl(stmt.target.id, tp, default, old.help if old else "")
            elif isinstance(stmt, ast.Assign):
                for tgt in stmt.targets:
                    if isinstance(tgt, ast.Name) and tgt.id not in decls:
                        decls[tgt.id] = ParamDecl(
                            tgt.id, _type_of_default(ast.unparse(stmt.value)), ast.unparse(stmt.value)
                        )
    return decls


def _dataclass_params(cls: type, extra: Mapping[str, str] = ()) -> dict[str, ParamDecl]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: fall back to parsing its text
        hints = {}
    decls = {}
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        if isinstance(tp, str):
            tp = parse_annotation(tp)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        decls[f.name] = ParamDecl(f.name, tp, None if required else f.default, required=required)
    for name, text in dict(extra).items():
        decls.setdefault(name, ParamDecl(name, parse_annotation(text)))
    return decls


def resolve_callable(ref: str) -> Callable[..., Any]:
    """Import ``module.path:callable``; ``ValueError`` if the reference is malformed or not callable."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"function {ref!r} must be 'eval' or 'module.path:callable'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref!r} is not callable")
    return obj


def _callable_params(fn: Callable[..., Any]) -> dict[str, ParamDecl]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    decls: dict[str, ParamDecl] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            decls["**"] = ParamDecl("**")  # accepts any name
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        tp = hints.get(p.name, p.annotation if p.annotation is not p.empty else None)
        if isinstance(tp, str):
            tp = parse_annotation(tp)
        if tp is None and p.default is not p.empty and p.default is not None:
            tp = type(p.default)
        decls[p.name] = ParamDecl(
            p.name, tp, None if p.default is p.empty else p.default, required=p.default is p.empty
        )
    return decls
