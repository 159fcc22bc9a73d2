"""Clean logs: progress bars degrade to plain lines off a terminal; notebook kernels start without the
unencrypted-transport warning (the main job and notebook sweeps encrypt it instead)."""

from __future__ import annotations

import io
import re

import nbformat
import papermill as pm

from rdc_lib.core.progress import PlainProgress, is_terminal, progress_bar
from rdc_lib.jobs import main_job
from rdc_lib.jobs.kernels import papermill_kernel_options

WARNING = "without encryption"
ESCAPES = re.compile(r"[\r\x1b]")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal():
    stream = io.StringIO()
    with progress_bar(3, "work", "item", stream=stream) as bar:
        assert isinstance(bar, PlainProgress) and not is_terminal(stream)
        bar.set_postfix(failed=0)
        bar.update(1)
        bar.write("a message")
        bar.set_postfix_str("last")
        bar.update(2)
    text = stream.getvalue()
    assert not ESCAPES.search(text)
    lines = text.splitlines()
    assert len(lines) == 3 and lines[1] == "a message"
    assert lines[0].startswith("work: 1/3 item, ") and lines[0].endswith("failed=0")
    assert lines[2].startswith("work: 3/3 item, ") and lines[2].endswith("last")


def test_a_terminal_gets_tqdm_and_disabled_writes_nothing():
    from tqdm.auto import tqdm

    term = _Terminal()
    bar = progress_bar(2, "work", stream=term)
    assert isinstance(bar, tqdm) and is_terminal(term)
    bar.update(2)
    bar.close()
    assert "\r" in term.getvalue()  # the control: a real bar redraws in place
    quiet = io.StringIO()
    off = progress_bar(2, "work", enabled=False, stream=quiet)
    off.update(1)
    off.write("x")
    off.close()
    assert quiet.getvalue() == ""


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('x: int = 1\nresult_dir: str = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(2 * x)"),
    ]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_kernel_starts_without_the_encryption_warning(tmp_path, capfd):
    nb = tmp_path / "01_tiny.ipynb"
    _notebook(nb)
    pm.execute_notebook(str(nb), str(tmp_path / "plain.ipynb"), progress_bar=False)
    assert WARNING in capfd.readouterr().err  # the control: papermill's defaults print it
    assert papermill_kernel_options(), "pyzmq without CurveZMQ: the kernels cannot be encrypted here"
    pm.execute_notebook(str(nb), str(tmp_path / "enc.ipynb"), progress_bar=False, **papermill_kernel_options())
    assert WARNING not in capfd.readouterr().err
    out = nbformat.read(tmp_path / "enc.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "2\n"


def test_main_job_log_is_plain_and_clean(tmp_path, capfd):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01_tiny.ipynb")
    _notebook(folder / "02_tiny.ipynb")
    summary = main_job.run_notebooks(tmp_path / "run", notebooks_dir=folder, progress=True)
    assert summary.ok
    err = capfd.readouterr().err  # stderr is captured: not a terminal
    assert not ESCAPES.search(err) and WARNING not in err
    assert "notebooks: 1/2 nb" in err and "notebooks: 2/2 nb" in err and "01_tiny" in err
