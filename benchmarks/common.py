"""What the timing benchmarks and the experiment drivers share: raw rows, tables, intervals, notes.

- raw rows (docs/raw): ``read_rows`` / ``append_row`` / ``write_rows`` (JSON lines), ``write_json`` (one
  document); ``stamped`` gives a row its ``command`` and ``provenance`` (commit, dirty flag, versions, command:
  ``rdc_lib.evaluation.provenance``), and ``append_row`` stamps a row that has none;
- markdown: ``table`` / ``table_row`` (GitHub tables, ``|---|`` separators);
- accuracies with their 95% Wilson interval (``rdc_lib.evaluation.stats.wilson``, as a dict or an ``Accuracy``):
  ``pct``, ``interval``, ``accuracy``, ``bracketed``, ``counted``;
- ``Notes``: the named blocks of a hand-written notes template (docs/*_notes.md) that a doc writer fills in.

A script imports it after putting the repository root on ``sys.path``::

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.common
    from benchmarks.common import read_rows  # noqa: E402
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rdc_lib.core.choices import DEFAULT_DENOISERS, LEGACY_DENOISERS
from rdc_lib.evaluation.provenance import provenance
from rdc_lib.evaluation.stats import Accuracy

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------ raw rows


def read_rows(path: str | Path, *, missing_ok: bool = True) -> list[dict]:
    """The rows of a JSON-lines file, in order (blank lines skipped); [] when the file does not exist, or
    FileNotFoundError naming it with ``missing_ok=False``."""
    path = Path(path)
    if not path.is_file():
        if not missing_ok:
            raise FileNotFoundError(f"{path} does not exist (expected the JSON-lines file of raw rows)")
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stamped(row: Mapping[str, Any], prov: dict[str, Any] | None = None) -> dict[str, Any]:
    """``row`` with its provenance: ``prov`` (e.g. ``eval_provenance(cfg)``) or this process's ``provenance()``
    (commit, dirty flag, versions, command, utc), and a ``command`` (the row's own if it has one, else the
    provenance's command line)."""
    prov = provenance() if prov is None else prov
    return {**row, "command": row.get("command", prov["command"]), "provenance": prov}


def append_row(path: str | Path, row: Mapping[str, Any], prov: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append ``row`` (stamped with ``prov`` / this process's provenance unless it carries one) as one JSON line
    to ``path`` (its folder made); returns the row written."""
    out = dict(row) if "provenance" in row and prov is None else stamped(row, prov)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(out) + "\n")
    return out


def write_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], *, sort_keys: bool = False) -> None:
    """Replace ``path`` with ``rows`` as JSON lines, atomically (a ``.tmp`` file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=sort_keys) + "\n" for r in rows))
    tmp.replace(path)


def write_json(path: str | Path, obj: Any, *, indent: int = 1) -> None:
    """Write ``obj`` as one indented JSON document (and a final newline) to ``path``, its folder made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent) + "\n")


# ------------------------------------------------------------------------------------------ markdown tables


def table_row(cells: Iterable[Any]) -> str:
    """One markdown table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[str], rows: Iterable[Iterable[Any]] = ()) -> list[str]:
    """The lines of a markdown table: the header, its ``|---|`` separator, then one line per row."""
    return [table_row(header), "|" + "---|" * len(header)] + [table_row(r) for r in rows]


# ------------------------------------------------------------------------------------------ intervals


def measured_on(names: Iterable[str]) -> str:
    """The header line naming the denoisers a generated doc was measured on, and whether each is a shipped default
    (rdc_lib.core.choices.DEFAULT_DENOISERS); names in first-seen order."""
    shipped = {name: heads for heads, name in DEFAULT_DENOISERS.items()}
    retired = {name: heads for heads, name in LEGACY_DENOISERS.items()}
    parts = []
    for name in dict.fromkeys(names):
        if name in shipped:
            parts.append(f"`{name}` (the shipped {shipped[name]}-head default)")
        elif name in retired:
            parts.append(f"`{name}` (the retired {retired[name]}-head model, not a shipped default)")
        else:
            parts.append(f"`{name}` (not a shipped default)")
    defaults = " and ".join(f"`{n}`" for n in DEFAULT_DENOISERS.values())
    return f"Measured on {', '.join(parts)}; the shipped defaults are {defaults}."


def _acc(acc: Mapping[str, Any] | Accuracy) -> Accuracy:
    if isinstance(acc, Accuracy):
        return acc
    try:
        return Accuracy(acc["correct"], acc["total"], acc["value"], acc["low"], acc["high"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"expected an accuracy (an Accuracy or a dict with correct, total, value, low, high), got {acc!r}"
        ) from err


def pct(value: float, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage: ``pct(0.125) == '12.5%'``."""
    return f"{100 * value:.{digits}f}%"


def interval(acc: Mapping[str, Any] | Accuracy) -> str:
    """The 95% interval of an accuracy in whole percents: ``'5-29'``."""
    a = _acc(acc)
    return f"{100 * a.low:.0f}-{100 * a.high:.0f}"


def accuracy(acc: Mapping[str, Any] | Accuracy, digits: int = 1) -> str:
    """An accuracy with its count and interval: ``'12.5% (4/32, 5-29)'``."""
    a = _acc(acc)
    return f"{pct(a.value, digits)} ({a.correct}/{a.total}, {interval(a)})"


def bracketed(acc: Mapping[str, Any] | Accuracy) -> str:
    """An accuracy and its interval in whole percents: ``'12% [5, 29]'``."""
    a = _acc(acc)
    return f"{pct(a.value, 0)} [{100 * a.low:.0f}, {100 * a.high:.0f}]"


def counted(acc: Mapping[str, Any] | Accuracy, mark: str = "") -> str:
    """The count first, then the accuracy (``mark`` after it) and its interval: ``'4/32 = 12%† [5, 29]'``."""
    a = _acc(acc)
    return f"{a.correct}/{a.total} = {pct(a.value, 0)}{mark} [{100 * a.low:.0f}, {100 * a.high:.0f}]"


# ------------------------------------------------------------------------------------------ notes templates

_BLOCK = re.compile(r"^<!-- ([\w.-]+) -->$")


class Notes:
    """The named blocks of a hand-written notes template, filled in by a doc writer.

    A block starts at a line ``<!-- name -->`` and runs to the next one (text before the first block is a
    comment for the reader). In a block, the wrapped lines of a paragraph are joined by single spaces into
    one line; a table row (a line starting with ``|``, continued on following lines until one ends with ``|``)
    and the lines of fenced code stay lines of their own; paragraphs (separated by blank lines) stay
    separated by one blank line. ``notes(name, **values)`` fills the block's ``{value}``
    fields (``str.format``: ``{{`` for a literal brace).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"notes template {self.path} does not exist (expected the hand-written text)")
        self.blocks: dict[str, str] = {}
        name, lines = None, []
        for line in self.path.read_text().splitlines() + ["<!-- end -->"]:
            m = _BLOCK.match(line)
            if not m:
                lines.append(line)
                continue
            if name is not None:
                self.blocks[name] = _join(lines)
            name, lines = m.group(1), []
        self.blocks.pop("end", None)

    def __call__(self, name: str, /, **values: Any) -> str:
        if name not in self.blocks:
            raise KeyError(f"{self.path} has no block <!-- {name} --> (it has: {', '.join(self.blocks)})")
        return self.blocks[name].format(**values)


def _join(lines: list[str]) -> str:
    """A block's text: paragraphs joined into lines, table rows (a row may wrap onto indented lines) and fenced
    code kept line by line, paragraphs separated by one blank line."""
    paragraphs: list[str] = []
    out: list[str] = []
    fenced = False
    for line in lines + [""]:
        fence = line.startswith("```")
        if fenced or fence:
            out.append(line)
            fenced = fenced != fence
        elif not line.strip():
            if out:
                paragraphs.append("\n".join(out))
            out = []
        elif out and not line.startswith("|") and _open(out[-1]):
            out[-1] += " " + line.strip()
        else:
            out.append(line.strip())
    return "\n\n".join(paragraphs)


def _open(line: str) -> bool:
    """Whether the next wrapped line continues ``line``: prose, or a table row not yet closed by its last ``|``."""
    if line.startswith("```"):
        return False
    return not line.startswith("|") or not line.endswith("|") or line == "|"
