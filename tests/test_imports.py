"""Every rdc_lib module imports on its own, and the modules' imports form no cycle (function-local ones included).

The graph is built statically with ``ast``: an edge A -> B for every ``import``/``from ... import`` in A
(at module level or inside a function; ``if TYPE_CHECKING:`` blocks aside) naming module B of rdc_lib.
A package's ``__init__`` importing its own submodules is an ordinary edge; the implicit import of a
parent package when a submodule is imported is not counted (Python runs it first, it is not a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "rdc_lib"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules(lib: Path = LIB) -> dict[str, Path]:
    return {module_name(p, lib.parent): p for p in sorted(lib.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The rdc_lib modules ``name`` (file ``path``) imports anywhere in its body."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from pkg import sub" imports the submodule pkg.sub when there is one, else names of pkg
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # "import rdc_lib.x.y" of a name inside a module: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_no_import_cycle():
    graph = import_graph()
    assert graph["rdc_lib.evaluation.runner"] >= {"rdc_lib.evaluation.checks"}  # the graph sees real imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_checks_do_not_import_the_runner():
    assert "rdc_lib.evaluation.runner" not in import_graph()["rdc_lib.evaluation.checks"]


def test_cycle_finder_can_fail(tmp_path):
    """A cycle hidden in function-local imports is found; a package importing its submodule is not one."""
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .b import g\n\ndef f():\n    return g()\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f  # hidden by a function-local import\n    return f\n")
    modules = all_modules(pkg)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph["toy"] == {"toy.a"}
    assert find_cycle(graph) == ["toy.a", "toy.b", "toy.a"]
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert find_cycle(graph) is None


@pytest.mark.slow  # one fresh interpreter per module: about 2 minutes in all
@pytest.mark.parametrize("name", sorted(all_modules()))
def test_module_imports_on_its_own(name):
    """A fresh interpreter imports the module alone (no hidden dependence on import order)."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import importlib; importlib.import_module({name!r})"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
