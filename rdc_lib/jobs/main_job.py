"""The main job: execute every notebook in notebooks/ with papermill into one run folder.

``run_notebooks(out_dir)`` runs ``notebooks/[0-9][0-9]_*.ipynb`` in name order, each in a fresh
kernel whose cwd is the notebooks folder, and writes into ``out_dir``::

    <out>/<name>.ipynb          the executed notebook (rdc_lib.jobs.papermill_runner: <name>.part.ipynb, then
                                os.replace)
    <out>/<name>/results.json   the notebook's results (its ``result_dir`` parameter is set to <out>/<name>)
    <out>/summary.json          one row per notebook: status, seconds, key results, error
    <out>/summary.md            the same as a markdown table

A notebook that fails is recorded (status 'failed', the error and the failing cell) and the next one
runs; the summary is rewritten after every notebook, so an interrupted run keeps what finished.
Batch runs set ``interactive=False`` (static figures only) unless the parameters file says otherwise.

Parameters file (YAML, also usable as ``papermill -f``): a flat mapping ``name: value`` applied to
every notebook that declares ``name``; an optional ``per_notebook: {<name or NN prefix>: {...}}``
section overrides values for one notebook. A name no notebook declares is an error (typo guard).

Key results: a notebook's results.json may hold ``key_results``, a small mapping of scalars shown
in the summary table; otherwise its top-level scalars (numbers, booleans, short strings) are shown.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.paths import NOTEBOOKS_DIR
from ..core.progress import is_terminal, progress_bar
from .papermill_runner import RESULT_FILE, PapermillJob, error_head

__all__ = [
    "NOTEBOOK_PATTERN",
    "NotebookRun",
    "RunSummary",
    "discover_notebooks",
    "load_params_file",
    "notebook_parameters",
    "run_notebooks",
]

log = logging.getLogger(__name__)

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
RESERVED = ("result_dir",)  # set per notebook by the job
BATCH_DEFAULTS = {"interactive": False}


@dataclass
class NotebookRun:
    """One row of the summary."""

    notebook: str  # stem, e.g. '01_bayes_rule_classification'
    status: str  # 'ok' | 'failed' | 'pending'
    seconds: float | None = None
    executed: str | None = None  # path of the executed notebook
    results: str | None = None  # path of results.json (None if the notebook wrote none)
    key_results: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # 'Name: message (cell N)' for a failed notebook


@dataclass
class RunSummary:
    """What ``run_notebooks`` returns (and writes to summary.json)."""

    run_dir: str
    started: str
    finished: str | None
    params_file: str | None
    notebooks: list[NotebookRun]

    @property
    def failed(self) -> list[str]:
        return [r.notebook for r in self.notebooks if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and all(r.status == "ok" for r in self.notebooks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = self.failed
        return d

    def markdown(self) -> str:
        """The summary table: notebook, status, seconds, key results (and the error of failed ones)."""
        lines = [
            f"# Notebook run {self.run_dir}",
            "",
            f"started {self.started}, finished {self.finished or '-'}"
            + (f", parameters {self.params_file}" if self.params_file else ""),
            "",
            "| notebook | status | seconds | key results |",
            "|---|---|---:|---|",
        ]
        for r in self.notebooks:
            keys = ", ".join(f"{k}={_fmt(v)}" for k, v in r.key_results.items()) or "-"
            if r.error:
                keys = f"**{_md_escape(r.error.splitlines()[0])}**"
            secs = f"{r.seconds:.1f}" if r.seconds is not None else "-"
            lines.append(f"| {r.notebook} | {r.status} | {secs} | {_md_escape(keys)} |")
        lines += [
            "",
            f"executed notebooks: {self.run_dir}/<notebook>.ipynb; results: {self.run_dir}/<notebook>/{RESULT_FILE}",
            "",
        ]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- notebooks and params


def discover_notebooks(folder: str | Path = NOTEBOOKS_DIR, only: Sequence[str] | None = None) -> list[Path]:
    """Notebooks ``NN_*.ipynb`` of ``folder`` in name order; ``only`` selects by stem, file name or NN prefix."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob(NOTEBOOK_PATTERN) if not p.name.endswith(".part.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks matching {NOTEBOOK_PATTERN} in {folder}")
    if not only:
        return found
    chosen: list[Path] = []
    for name in only:
        match = [p for p in found if name in (p.stem, p.name, p.stem[:2])]
        if not match:
            raise ValueError(
                f"unknown notebook {name!r}; valid: {', '.join(p.stem for p in found)} (or their NN prefixes)"
            )
        chosen.extend(m for m in match if m not in chosen)
    return sorted(chosen)


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares (papermill's inspection of its ``parameters`` cell)."""
    import papermill as pm  # heavy (papermill, ~2.5 s) and only needed here

    return dict(pm.inspect_notebook(str(path)))


def load_params_file(path: str | Path | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(common parameters, per-notebook overrides) from a YAML file; ({}, {}) for None."""
    if path is None:
        return {}, {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameters file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path} must hold a mapping name: value, got {type(data).__name__}")
    per = data.pop("per_notebook", None) or {}
    if not isinstance(per, dict) or not all(isinstance(v, dict) for v in per.values()):
        raise ValueError(f"{path}: per_notebook must map a notebook name to a mapping of parameters")
    for name in list(data) + [k for v in per.values() for k in v]:
        if name in RESERVED:
            raise ValueError(f"{path}: parameter {name!r} is set by the job for every notebook; remove it")
    return data, per


def _plan(
    notebooks: list[Path], common: dict[str, Any], per: dict[str, dict[str, Any]], source: str
) -> dict[Path, dict[str, Any]]:
    """Parameters per notebook: common names the notebook declares, then its overrides; unknown names fail."""
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    every = set().union(*(set(d) for d in declared.values()))
    for name in common:
        if name not in every:
            hint = difflib.get_close_matches(name, sorted(every), n=1)
            raise ValueError(
                f"{source}: parameter {name!r} is declared by none of the notebooks "
                f"{', '.join(nb.stem for nb in notebooks)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
    stems = {nb: nb.stem for nb in notebooks}
    for key in per:
        if not any(key in (s, s[:2], nb.name) for nb, s in stems.items()):
            raise ValueError(
                f"{source}: per_notebook key {key!r} names no selected notebook; valid: {', '.join(stems.values())}"
            )
    plan = {}
    for nb in notebooks:
        params = {k: v for k, v in BATCH_DEFAULTS.items() if k in declared[nb]}
        params.update({k: v for k, v in common.items() if k in declared[nb]})
        for key, values in per.items():
            if key in (nb.stem, nb.stem[:2], nb.name):
                unknown = sorted(set(values) - set(declared[nb]))
                if unknown:
                    raise ValueError(
                        f"{source}: per_notebook {key!r} sets {unknown}, which {nb.name} does not "
                        f"declare; declared: {', '.join(sorted(declared[nb]))}"
                    )
                params.update(values)
        plan[nb] = params
    return plan


# ---------------------------------------------------------------------------------------- running


def _key_results(results: Any) -> dict[str, Any]:
    if not isinstance(results, dict):
        return {}
    if isinstance(results.get("key_results"), dict):
        return {k: v for k, v in results["key_results"].items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {
        k: v for k, v in results.items() if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 40)
    }


def _write_summary(summary: RunSummary, out: Path) -> None:
    for name, text in (
        ("summary.json", json.dumps(summary.to_dict(), indent=1, allow_nan=True)),
        ("summary.md", summary.markdown()),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _run_one(
    nb: Path,
    params: dict[str, Any],
    out: Path,
    *,
    kernel_name: str | None,
    progress: bool,
    cell_timeout: float | None,
    row: NotebookRun,
) -> None:
    job = PapermillJob(nb, out / f"{nb.stem}.ipynb", out / nb.stem, params)
    row.parameters = job.parameters
    t0 = time.perf_counter()
    try:
        job.run(
            kernel_name=kernel_name,
            cell_timeout=cell_timeout,
            progress_bar=dict(desc=nb.stem, leave=False) if progress and is_terminal() else False,
        )
        row.status = "ok"
    except Exception as exc:  # a failing notebook is a row of the summary, not the end of the run
        row.status, row.error = "failed", error_head(exc)
        log.warning("notebook %s failed: %s", nb.name, row.error)
    finally:
        row.seconds = time.perf_counter() - t0
        row.executed = str(job.executed) if job.executed.exists() else None
    result_file = job.result_file
    if result_file.is_file():
        row.results = str(result_file)
        try:
            row.key_results = _key_results(json.loads(result_file.read_text()))
        except ValueError as exc:
            row.status, row.error = "failed", f"{result_file} is not valid JSON: {exc}"


def run_notebooks(
    out_dir: str | Path,
    params_file: str | Path | None = None,
    notebooks: Sequence[str] | None = None,
    progress: bool = True,
    *,
    notebooks_dir: str | Path | None = None,
    kernel_name: str | None = None,
    cell_timeout: float | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Execute the notebooks (all, or those named in ``notebooks``) into ``out_dir``; see the module docstring.

    ``parameters`` are extra common parameters (applied after the file's); ``notebooks_dir`` defaults
    to the repository's notebooks/. ``progress`` shows a bar over
    notebooks and papermill's bar over the cells of the running one (tqdm, on stderr); when stderr is not a
    terminal, one plain line per finished notebook instead (rdc_lib.core.progress).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = discover_notebooks(NOTEBOOKS_DIR if notebooks_dir is None else notebooks_dir, notebooks)
    common, per = load_params_file(params_file)
    common.update(parameters or {})
    plan = _plan(selected, common, per, str(params_file or "parameters"))
    rows = [NotebookRun(nb.stem, "pending") for nb in selected]
    summary = RunSummary(str(out), _now(), None, str(params_file) if params_file else None, rows)
    _write_summary(summary, out)
    bar = progress_bar(len(selected), "notebooks", "nb", enabled=progress, position=0)
    for nb, row in zip(selected, rows):
        bar.set_postfix_str(nb.stem)
        _run_one(nb, plan[nb], out, kernel_name=kernel_name, progress=progress, cell_timeout=cell_timeout, row=row)
        _write_summary(summary, out)
        bar.write(f"{row.status:>6}  {row.seconds:7.1f} s  {nb.stem}" + (f"  ({row.error})" if row.error else ""))
        bar.update(1)
    bar.close()
    summary.finished = _now()
    _write_summary(summary, out)
    return summary
