"""No module of rdc_lib is longer than MAX_LINES (issue 17), and few stay outside the layer folders (issue 38)."""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rdc_lib"
MAX_LINES = 450


def too_long(package: Path, max_lines: int = MAX_LINES) -> dict[str, int]:
    """Every ``.py`` file under ``package`` with more than ``max_lines`` lines -> its line count."""
    counts = {
        str(p.relative_to(package.parent)): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted(package.rglob("*.py"))
    }
    return {name: n for name, n in counts.items() if n > max_lines}


def test_no_rdc_lib_module_is_over_the_limit():
    assert sorted(PACKAGE.rglob("*.py")), f"no modules found under {PACKAGE}"
    offenders = too_long(PACKAGE)
    assert not offenders, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(
        f"{k} ({v})" for k, v in offenders.items()
    )


@pytest.mark.parametrize("lines, flagged", [(MAX_LINES, False), (MAX_LINES + 1, True)])
def test_the_check_flags_a_long_module(tmp_path, lines, flagged):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "long.py").write_text("x = 1\n" * lines)
    assert too_long(pkg) == ({"pkg/sub/long.py": lines} if flagged else {})


MAX_LOOSE = 4  # issue 38: folders by layer; only the facade and a few top-level entry points stay loose


def loose_modules(package: Path) -> list[str]:
    """The modules directly in ``package`` other than its ``__init__.py``."""
    return sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")


def test_rdc_lib_keeps_its_modules_in_layer_folders():
    loose = loose_modules(PACKAGE)
    assert len(loose) <= MAX_LOOSE, f"{len(loose)} loose modules in rdc_lib (at most {MAX_LOOSE}): {loose}"


def test_the_check_counts_loose_modules(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "b.py", "sub/c.py"):
        (pkg / name).write_text("")
    assert loose_modules(pkg) == ["a.py", "b.py"]
