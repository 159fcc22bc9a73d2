"""environment.yml and pyproject.toml describe the same environment."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda name -> pip name


def _name(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", req)
    assert m, req
    return m.group(1).lower().replace("_", "-"), m.group(3).replace(" ", "")


def _pyproject() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        reqs += extra
    out = dict(_name(r) for r in reqs)
    if "dask" in out:  # dask[distributed] is dask + distributed in conda
        out["distributed"] = out["dask"]
    return out


def _conda() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and not dep.startswith(("python=", "pip", "cpuonly")):
            name, spec = _name(dep)
            out[CONDA_NAMES.get(name, name)] = spec
    return out


def test_same_packages():
    py, conda = _pyproject(), _conda()
    assert set(py) == set(conda), (
        f"only in pyproject: {set(py) - set(conda)}; only in environment.yml: {set(conda) - set(py)}"
    )


def test_same_version_constraints():
    py, conda = _pyproject(), _conda()
    diff = {k: (py[k], conda[k]) for k in py if k in conda and py[k] != conda[k]}
    assert not diff, f"version constraints differ (pyproject, environment.yml): {diff}"


def test_torch_is_never_an_open_cuda_pull():
    assert (ROOT / "Makefile").read_text().count("TORCH_SPEC ?= torch==2.13.0") == 1
