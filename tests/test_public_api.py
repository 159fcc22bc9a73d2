"""The public API: every name of rdc_lib.__all__ imports from rdc_lib, lazily (import rdc_lib stays torch-free)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rdc_lib

ROOT = Path(__file__).resolve().parents[1]


def test_import_rdc_lib_loads_no_torch_and_no_submodule():
    code = (
        "import sys, rdc_lib; loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('rdc_lib.'));"
        " print(loaded); assert not loaded, loaded"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_public_name_imports_from_its_home():
    assert rdc_lib.__all__ == sorted(rdc_lib.PUBLIC) and len(rdc_lib.__all__) > 50
    for name in rdc_lib.__all__:
        module_name, _, attr = rdc_lib.PUBLIC[name].partition(":")
        assert getattr(rdc_lib, name) is getattr(importlib.import_module(module_name), attr), name
    namespace: dict = {}
    exec("from rdc_lib import *", namespace)
    assert set(rdc_lib.__all__) <= set(namespace)
    assert set(rdc_lib.__all__) <= set(dir(rdc_lib))


def test_no_public_name_shadows_a_submodule():
    """``from rdc_lib import viz`` must keep meaning the subpackage: no public name may equal a module name."""
    shadowing = [n for n in rdc_lib.PUBLIC if importlib.util.find_spec(f"rdc_lib.{n}") is not None]
    assert not shadowing, shadowing
    from rdc_lib import experiments, viz  # subpackages still import through the package

    assert viz.__name__ == "rdc_lib.viz" and experiments.__name__ == "rdc_lib.experiments"


def test_unknown_and_broken_names_fail_clearly(monkeypatch):
    with pytest.raises(AttributeError, match="module 'rdc_lib' has no attribute 'DiffusionClasifier'"):
        rdc_lib.DiffusionClasifier  # noqa: B018 (a typo)
    monkeypatch.setitem(rdc_lib.PUBLIC, "moved_away", "rdc_lib.no_such_module:thing")
    with pytest.raises(ImportError, match=r"rdc_lib.moved_away is listed as 'rdc_lib.no_such_module:thing'"):
        rdc_lib.moved_away  # noqa: B018
    monkeypatch.setitem(rdc_lib.PUBLIC, "renamed", "rdc_lib.core.utils:no_such_function")
    with pytest.raises(ImportError, match="no_such_function"):
        rdc_lib.renamed  # noqa: B018
