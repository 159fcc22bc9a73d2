"""The one papermill runner (rdc_lib.jobs.papermill_runner), used by the main job and by notebook sweep cells.

papermill.execute_notebook is replaced by fakes here (no kernel starts): what is tested is what the runner does
around it (result_dir injection, stale results, part-file rename, kernel start-up retries, plain error text).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from rdc_lib.jobs import main_job, papermill_runner
from rdc_lib.jobs.papermill_runner import RESULT_FILE, PapermillJob, error_head, strip_ansi
from rdc_lib.sweep.execute import CellTask, execute_cell


class FakePapermill:
    """Stands in for papermill.execute_notebook: fails with ``errors`` in turn, then writes the part file."""

    def __init__(self, errors=(), result: dict | None = None):
        self.errors, self.result, self.calls = list(errors), result, []

    def __call__(self, notebook, out, parameters, **kw):
        self.calls.append({"notebook": notebook, "out": out, "parameters": dict(parameters), **kw})
        Path(out).write_text("{}")  # papermill writes the output notebook as it goes
        if self.errors:
            raise self.errors.pop(0)
        if self.result is not None:
            Path(parameters["result_dir"], RESULT_FILE).write_text(json.dumps(self.result))


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(papermill_runner.time, "sleep", lambda s: None)


def _job(tmp_path: Path, **params) -> PapermillJob:
    return PapermillJob(
        tmp_path / "nbs" / "01_x.ipynb", tmp_path / "out" / "01_x.ipynb", tmp_path / "out" / "01_x", params
    )


def test_injects_result_dir_renames_the_part_file_and_drops_a_stale_result(tmp_path, monkeypatch):
    fake = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    job = _job(tmp_path, scale=2.0)
    job.result_dir.mkdir(parents=True)
    job.result_file.write_text('{"stale": true}')
    job.run(kernel_name="python3", cell_timeout=5.0)
    (call,) = fake.calls
    assert call["parameters"] == {"scale": 2.0, "result_dir": str(job.result_dir.resolve())}
    assert call["out"] == str(job.part) and job.part.name == "01_x.part.ipynb"
    assert call["cwd"] == str(job.notebook.parent) and call["kernel_name"] == "python3"
    assert call["execution_timeout"] == 5.0
    assert job.executed.is_file() and not job.part.exists()
    assert not job.result_file.exists()  # the stale result is gone, the fake wrote none


def test_retries_kernel_start_races_only(tmp_path, monkeypatch, no_sleep):
    race = RuntimeError("Kernel didn't respond in 60 seconds")
    fake = FakePapermill(errors=[race, race], result={"ok": 1})
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    job = _job(tmp_path)
    job.run(kernel_start_retries=2)
    assert len(fake.calls) == 3 and json.loads(job.result_file.read_text()) == {"ok": 1}

    fake = FakePapermill(errors=[race, race, race])
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    with pytest.raises(RuntimeError, match="didn't respond"):
        job.run(kernel_start_retries=2)
    assert len(fake.calls) == 3  # retries exhausted

    fake = FakePapermill(errors=[ValueError("something else"), race])
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    with pytest.raises(ValueError, match="something else"):
        job.run()
    assert len(fake.calls) == 1 and job.executed.is_file() and not job.part.exists()  # kept after an error

    failing_cell = papermill.PapermillExecutionError(3, 2, "x", "NameError", "Address already in use", [])
    fake = FakePapermill(errors=[failing_cell])
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    with pytest.raises(papermill.PapermillExecutionError):
        job.run()
    assert len(fake.calls) == 1  # a failing cell is never retried


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'result_dir' of 01_x.ipynb is set by the runner"):
        _job(tmp_path, result_dir="/elsewhere")
    with pytest.raises(ValueError, match="kernel_start_retries must be an int >= 0, got -1"):
        _job(tmp_path).run(kernel_start_retries=-1)


def test_error_text_is_plain():
    coloured = "\x1b[0;31mNameError\x1b[0m"
    assert strip_ansi(coloured) == "NameError"
    exc = papermill.PapermillExecutionError(4, 3, "x", "NameError", f"{coloured}: name 'x'", [])
    assert error_head(exc) == "NameError: NameError: name 'x' (cell 3)"
    assert error_head(exc, cell="notebook cell").endswith("(notebook cell 3)")
    assert error_head(RuntimeError(f"boom {coloured}")) == "RuntimeError: boom NameError"


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('result_dir: str = ""', metadata={"tags": ["parameters"]})]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_main_job_and_sweep_cells_share_the_runner(tmp_path, monkeypatch, no_sleep):
    """Both retry a kernel start-up race (before issue 17 only sweep cells did) and read the result it wrote."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_x.ipynb")
    fake = FakePapermill(errors=[RuntimeError("Address already in use")], result={"key_results": {"v": 1}})
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    summary = main_job.run_notebooks(tmp_path / "run", notebooks_dir=folder, progress=False)
    assert summary.ok and summary.notebooks[0].key_results == {"v": 1} and len(fake.calls) == 2

    fake = FakePapermill(errors=[RuntimeError("Address already in use")], result={"robust_acc": 0.5})
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    outcome = execute_cell(
        CellTask(
            key="k" * 64, kind="notebook", target=str(folder / "01_x.ipynb"), params={}, cell_dir=str(tmp_path / "cell")
        )
    )
    assert outcome.status == "done" and outcome.result == {"robust_acc": 0.5} and len(fake.calls) == 2
    assert (tmp_path / "cell" / "notebook.ipynb").is_file() and not (tmp_path / "cell" / "notebook.part.ipynb").exists()
