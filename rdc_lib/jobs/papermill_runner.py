"""The one papermill runner, shared by the main job (``make run``) and notebook sweep cells.

``PapermillJob(notebook, executed, result_dir, params).run(...)`` executes one notebook in a fresh kernel
whose cwd is the notebook's folder:

- the notebook's ``result_dir`` parameter is set to ``result_dir`` (absolute); a stale
  ``<result_dir>/results.json`` of an earlier attempt is removed first, so it is never reported;
- the executed notebook is written as ``<executed stem>.part.ipynb`` and renamed over ``executed`` with
  ``os.replace`` when papermill returns, also after an error (the failing cell's traceback is the record);
- a kernel that fails to start in one of the known start-up races between concurrent papermill runs
  (papermill#511, jupyter_client#487) is retried; every other error propagates.

:func:`error_head` and :func:`strip_ansi` turn a papermill error into plain text (no terminal colours).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .kernels import papermill_kernel_options

__all__ = ["KERNEL_START_ERRORS", "PapermillJob", "RESULT_FILE", "error_head", "strip_ansi"]

log = logging.getLogger(__name__)

RESULT_FILE = "results.json"
# Kernel start-up races between concurrent papermill runs: retry these (and nothing else).
KERNEL_START_ERRORS = ("Address already in use", "Kernel didn't respond", "Kernel died before replying")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (papermill tracebacks carry terminal colours)."""
    return _ANSI.sub("", text)


def error_head(exc: BaseException, *, cell: str = "cell") -> str:
    """One line: 'Name: message (<cell> N)' for a failing notebook cell, 'Type: message' otherwise; plain text."""
    if type(exc).__name__ == "PapermillExecutionError":
        return strip_ansi(f"{exc.ename}: {exc.evalue} ({cell} {exc.exec_count})")
    return strip_ansi(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class PapermillJob:
    """One notebook execution: source notebook, where the executed copy goes, its result folder, parameters."""

    notebook: Path  # the source .ipynb
    executed: Path  # the executed notebook's final path
    result_dir: Path  # passed to the notebook as its ``result_dir`` parameter
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("notebook", "executed", "result_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if "result_dir" in self.params:
            raise ValueError(
                f"parameter 'result_dir' of {self.notebook.name} is set by the runner; "
                "pass the folder as result_dir=, not among the parameters"
            )

    @property
    def parameters(self) -> dict[str, Any]:
        """The parameters papermill injects: ``params`` plus ``result_dir`` (absolute)."""
        return {**self.params, "result_dir": str(self.result_dir.resolve())}

    @property
    def result_file(self) -> Path:
        return self.result_dir / RESULT_FILE

    @property
    def part(self) -> Path:
        return self.executed.with_name(f"{self.executed.stem}.part.ipynb")

    def run(
        self,
        *,
        kernel_name: str | None = None,
        cell_timeout: float | None = None,
        progress_bar: bool | dict[str, Any] = False,
        kernel_start_retries: int = 2,
    ) -> None:
        """Execute; raises papermill's error for a failing cell (the executed notebook is kept either way)."""
        import papermill as pm  # heavy (papermill, ~2.5 s) and only needed here

        if (
            isinstance(kernel_start_retries, bool)
            or not isinstance(kernel_start_retries, int)
            or kernel_start_retries < 0
        ):
            raise ValueError(f"kernel_start_retries must be an int >= 0, got {kernel_start_retries!r}")
        self.result_dir.mkdir(parents=True, exist_ok=True)
        self.result_file.unlink(missing_ok=True)  # never report a stale result
        for attempt in range(kernel_start_retries + 1):
            try:
                pm.execute_notebook(
                    str(self.notebook),
                    str(self.part),
                    parameters=self.parameters,
                    kernel_name=kernel_name,
                    cwd=str(self.notebook.parent),
                    progress_bar=progress_bar,
                    log_output=False,
                    execution_timeout=cell_timeout,
                    **papermill_kernel_options(),
                )
                return
            except pm.PapermillExecutionError:
                raise
            except Exception as exc:  # retry only the known kernel start-up races
                if attempt == kernel_start_retries or not any(s in str(exc) for s in KERNEL_START_ERRORS):
                    raise
                log.warning("kernel start failed (%s); retrying", exc)
                time.sleep(1.0 + attempt)
            finally:
                if self.part.exists():
                    os.replace(self.part, self.executed)
