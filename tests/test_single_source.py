"""One home per concept: no choice tuple or module constant of rdc_lib is defined twice (static, via ``ast``).

- A module-level tuple/list of string literals must not have the value of another one (any name; ``__all__`` aside).
- A module-level UPPERCASE constant must not be defined again with the same name and value elsewhere.
- Outside rdc_lib/core/choices.py no code writes a literal equal to one of its choice tuples (``Literal[...]``
  annotations aside): it reads the name instead.
- One name per concept (issue 38): the old names (``OLD_NAMES``: GRID_LEVELS, T, T_list, sigma_list; CertifyConfig's
  n / sigma / batch; UNetBlock's num_heads) do not come back, and the evaluation, certification and notebooks branch
  on registry facts, never on a registered attack or defense name.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "rdc_lib"


def _str_tuple(node: ast.AST) -> tuple[str, ...] | None:
    if (
        isinstance(node, (ast.Tuple, ast.List))
        and node.elts
        and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
    ):
        return tuple(e.value for e in node.elts)
    return None


def module_constants(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """(name, value) of every module-level assignment to a plain name."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            out += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out.append((node.target.id, node.value))
    return out


def duplicate_definitions(sources: dict[str, str]) -> list[str]:
    """Messages for string tuples defined twice (same value) and UPPERCASE constants copied (same name and value)."""
    tuples: dict[tuple[str, ...], list[str]] = defaultdict(list)
    scalars: dict[tuple[str, str], list[str]] = defaultdict(list)
    for where, text in sources.items():
        for name, value in module_constants(ast.parse(text)):
            if name == "__all__":  # a package re-exporting a module's names is not a second definition
                continue
            strs = _str_tuple(value)
            if strs is not None:
                tuples[strs].append(f"{where}:{name}")
            elif name.lstrip("_").isupper():
                try:
                    val = ast.literal_eval(value)
                except ValueError:
                    continue
                if isinstance(val, (str, bytes, int, float, tuple)):  # not a mutable container (a registry)
                    scalars[(name, repr(val))].append(where)
    msgs = [f"{value} defined {len(w)} times: {', '.join(w)}" for value, w in tuples.items() if len(w) > 1]
    msgs += [
        f"{name} = {value} defined {len(w)} times: {', '.join(w)}" for (name, value), w in scalars.items() if len(w) > 1
    ]
    return msgs


def _literal_annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of the tuples inside ``Literal[...]`` subscripts (type annotations may spell the values)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", getattr(node.value, "attr", "")) == "Literal":
            skip |= {id(n) for n in ast.walk(node.slice)}
    return skip


def inline_choice_copies(sources: dict[str, str], choices: dict[str, tuple[str, ...]]) -> list[str]:
    """Messages for literals equal to a choice tuple of rdc_lib.core.choices written outside it."""
    by_value = {v: k for k, v in choices.items()}
    msgs = []
    for where, text in sources.items():
        tree = ast.parse(text)
        skip = _literal_annotation_nodes(tree)
        for node in ast.walk(tree):
            strs = _str_tuple(node)
            if strs in by_value and id(node) not in skip:
                msgs.append(f"{where}:{node.lineno} spells {strs}: use rdc_lib.core.choices.{by_value[strs]}")
    return msgs


def lib_sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted(LIB.rglob("*.py"))}


def choice_tuples() -> dict[str, tuple[str, ...]]:
    tree = ast.parse((LIB / "core" / "choices.py").read_text())
    return {name: v for name, value in module_constants(tree) if (v := _str_tuple(value)) is not None}


def test_no_constant_defined_twice():
    assert duplicate_definitions(lib_sources()) == []


def test_no_choice_spelled_outside_choices():
    sources = {k: v for k, v in lib_sources().items() if not k.endswith("rdc_lib/core/choices.py")}
    assert inline_choice_copies(sources, choice_tuples()) == []


def test_checks_can_fail():
    """The checks find a copied tuple, a copied constant and an inline copy of a choice."""
    sources = {"a.py": 'MODES = ("x", "y")\nLIMIT = 3\n', "b.py": 'OTHER = ["x", "y"]\nLIMIT = 3\nOK = 3\n'}
    msgs = duplicate_definitions(sources)
    assert any("('x', 'y') defined 2 times" in m for m in msgs) and any("LIMIT = 3" in m for m in msgs)
    assert not any("OK" in m for m in msgs)
    code = 'from typing import Literal\ndef f(m: Literal["x", "y"]):\n    return m in ("x", "y")\n'
    found = inline_choice_copies({"c.py": code}, {"MODES": ("x", "y")})
    assert found == ["c.py:3 spells ('x', 'y'): use rdc_lib.core.choices.MODES"]


def test_choices_is_torch_free():
    """The module itself imports nothing heavy (loaded from its file: the package may import torch)."""
    code = (
        "import importlib.util, sys; s = importlib.util.spec_from_file_location('c', 'rdc_lib/core/choices.py'); "
        "s.loader.exec_module(importlib.util.module_from_spec(s)); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'rdc_lib/core/choices.py imports torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_one_lm_step_size():
    """The LM step size default has one source; RDC's LMConfig, the evaluation's spec and the presets read it."""
    from rdc_lib.core.choices import LM_STEP_SIZE
    from rdc_lib.defenses.presets import get_preset
    from rdc_lib.defenses.registry import DefenseSpec
    from rdc_lib.diffusion.lm import LMConfig

    assert LMConfig().step_size == DefenseSpec().lm_step_size == LM_STEP_SIZE == 0.03
    assert get_preset("digits").lm.step_size == 0.03 and get_preset("cifar10-paper").lm.step_size == 0.1


# ------------------------------------------------------------------ one name per concept (issue 38)
# Old names that must not come back (the glossary: docs/paper.md, "Names"). GRID_LEVELS is the old name of
# rdc_lib.core.choices.TIMESTEPS.
OLD_NAMES = {"GRID_LEVELS": "TIMESTEPS", "T": "timesteps", "T_list": "timesteps_list", "sigma_list": "pixel_sigma_list"}


def old_name_uses(sources: dict[str, str]) -> list[str]:
    """Messages for parameters, dataclass fields and names spelled with an old name of ``OLD_NAMES``."""
    msgs = []
    for where, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                for arg in a.posonlyargs + a.args + a.kwonlyargs:
                    if arg.arg in OLD_NAMES:
                        msgs.append(f"{where}:{node.lineno} parameter {arg.arg}: use {OLD_NAMES[arg.arg]}")
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", "") in OLD_NAMES:
                        name = item.target.id
                        msgs.append(f"{where}:{item.lineno} field {node.name}.{name}: use {OLD_NAMES[name]}")
            elif isinstance(node, ast.Name) and node.id == "GRID_LEVELS":
                msgs.append(f"{where}:{node.lineno} GRID_LEVELS: use rdc_lib.core.choices.TIMESTEPS")
            elif isinstance(node, ast.alias) and node.name == "GRID_LEVELS":
                msgs.append(f"{where} imports GRID_LEVELS: use rdc_lib.core.choices.TIMESTEPS")
    return msgs


def registered_name_branches(sources: dict[str, str]) -> list[str]:
    """Messages for ``x == 'name'`` / ``x != 'name'`` with a registered attack or defense name: read a registry
    fact instead (e.g. ``get_attack(name).budget == 'queries'``, ``get_defense(name).expensive``)."""
    from rdc_lib.attacks.registry import attack_names
    from rdc_lib.defenses import defense_names

    registered = set(attack_names()) | set(defense_names())
    msgs = []
    for where, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
                for side in (node.left, node.comparators[0]):
                    if isinstance(side, ast.Constant) and side.value in registered:
                        msgs.append(f"{where}:{node.lineno} branches on {side.value!r}: read a registry fact")
    return msgs


def notebook_sources() -> dict[str, str]:
    """Code cells of notebooks/*.ipynb (IPython magics and shell lines dropped), one source per cell."""
    import nbformat

    out = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                lines = [ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
                out[f"notebooks/{path.name}[{i}]"] = "\n".join(lines)
    return out


def test_old_names_do_not_come_back():
    sources = {**lib_sources(), **notebook_sources()}
    assert old_name_uses(sources) == []
    from rdc_lib.certify.runner import STORED_NAMES, CertifyConfig
    from rdc_lib.jobs.params import PARAM_SPECS, RENAMED_PARAMS
    from rdc_lib.models.ddpmpp_blocks import UNetBlock

    fields = set(CertifyConfig.__dataclass_fields__)
    assert not set(STORED_NAMES) & fields and set(STORED_NAMES.values()) <= fields  # n, sigma, batch: migrated
    assert not set(RENAMED_PARAMS) & set(PARAM_SPECS) and set(RENAMED_PARAMS.values()) <= set(PARAM_SPECS)
    assert "attn_heads" in inspect.signature(UNetBlock).parameters  # attention heads; num_heads = output heads
    assert "num_heads" not in inspect.signature(UNetBlock).parameters


def test_evaluation_and_notebooks_read_registries_not_names():
    sources = {k: v for k, v in lib_sources().items() if k.startswith(("rdc_lib/evaluation/", "rdc_lib/certify/"))}
    assert registered_name_branches({**sources, **notebook_sources()}) == []


def test_name_checks_can_fail():
    code = (
        "from rdc_lib.core.choices import GRID_LEVELS\n"
        "def f(x, T=GRID_LEVELS):\n    return x == 'square'\n"
        "class C:\n    T_list: list\n"
    )
    found = old_name_uses({"m.py": code})
    assert len(found) == 4 and any("parameter T" in m for m in found) and any("C.T_list" in m for m in found)
    assert registered_name_branches({"m.py": code}) == ["m.py:3 branches on 'square': read a registry fact"]
