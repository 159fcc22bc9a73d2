"""Every import inside a function in rdc_lib says why it is not at module level (issue 38, item 1).

Imports belong at module level unless a real cost forbids it (an import cycle, an optional extra, a heavy
package only one path needs, a module that must stay torch-free at import); that reason is written as a
comment on the import's line or on the line above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "rdc_lib"


def unexplained_imports(source: str, name: str = "<source>") -> list[str]:
    """``'name:line: import ...'`` for each import inside a function with no comment on its line or the one above."""
    lines = source.splitlines()
    found: dict[int, str] = {}
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            own = lines[node.lineno - 1 : node.end_lineno]
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if not any("#" in line for line in own) and not above.startswith("#"):
                found[node.lineno] = f"{name}:{node.lineno}: {own[0].strip()}"
    return [found[k] for k in sorted(found)]


def test_every_function_local_import_says_why():
    found = []
    for path in sorted(LIB.rglob("*.py")):
        found += unexplained_imports(path.read_text(), str(path.relative_to(LIB.parent)))
    assert not found, "move these imports to module level, or say why not in a comment:\n" + "\n".join(found)


def test_the_check_can_fail():
    """A bare import inside a function (also nested, also multi-line) is found; a commented one is not."""
    source = (
        "import os\n\n\n"
        "def bare():\n    import json\n    return json\n\n\n"
        "def explained():\n    import torch  # keeps this module torch-free at import\n    return torch\n\n\n"
        "def above():\n    # optional extra: diffusers\n    import diffusers\n    return diffusers\n\n\n"
        "class A:\n    def method(self):\n        def inner():\n            from os import (\n"
        "                path,\n                sep,\n            )\n\n            return path, sep\n\n"
        "        return inner\n"
    )
    assert unexplained_imports(source, "toy.py") == ["toy.py:5: import json", "toy.py:23: from os import ("]
    assert unexplained_imports("import json\n\n\ndef f():\n    return json\n") == []
