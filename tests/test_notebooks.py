"""The notebooks and the main job (rdc run-notebooks).

* Committed notebooks are clean: no outputs, kernelspec python3, one ``parameters`` cell of annotated
  literals whose every name the next cell passes to ``validate_params``.
* The main job executes every notebook with ``notebooks/params/small.yaml`` into a temporary run
  folder (one kernel each, OMP_NUM_THREADS=1): each must succeed and write a well-formed results.json,
  and the summary must list them.
* A bad parameter fails in the first code cell after the parameters, naming the parameter.
* ``pytest --nbval-lax`` re-runs the executed copy of notebook 01 and compares its
  ``# NBVAL_CHECK_OUTPUT`` cell; a copy whose stored output was altered must fail that comparison.
* The main job's bookkeeping (failures recorded, others still run, exit code, parameter files) on
  two tiny synthetic notebooks.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import yaml

from rdc_lib.cli import add_run_notebooks_parser, cmd_run_notebooks
from rdc_lib.evaluation.checks import MIN_CHECK_IMAGES
from rdc_lib.jobs import main_job

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
SMALL = NB_DIR / "params" / "small.yaml"
SANITIZE = NB_DIR / "nbval_sanitize.cfg"
NOTEBOOKS = sorted(NB_DIR.glob(main_job.NOTEBOOK_PATTERN))
OWN = [
    p for p in NOTEBOOKS if p.stem[:2] in ("01", "02", "03", "04", "06", "07", "08")
]  # written with rdc_lib.jobs.params
# Absolute checkpoint paths: the executed copies are re-run by nbval from a temporary folder. The denoisers keep
# their defaults ('' = the shipped defaults, resolved through rdc_lib.core.choices wherever the notebook runs).
ABSOLUTE = {
    "cnn_checkpoint": str(REPO / "data/checkpoints/digits_cnn.safetensors"),
    "diffusers_model": str(REPO / "data/diffusers_digits"),
}
# Parameters that name a denoiser on purpose for a contrast (documented in the notebook); no other may default to a
# retired denoiser.
CONTRAST_PARAMS = {"contrast_checkpoint"}
CELL_TIMEOUT = 300
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _ids(paths):
    return [p.stem[:2] for p in paths]


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _param_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def _declared(nb) -> dict[str, object]:
    """name -> default of the parameters cell; every statement must be `name: type = literal`."""
    out = {}
    for stmt in ast.parse(_param_cell(nb).source).body:
        assert isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name), (
            f"parameters cell: only annotated assignments allowed, got {ast.unparse(stmt)!r}"
        )
        out[stmt.target.id] = ast.literal_eval(stmt.value)  # raises for anything but a literal
    return out


@pytest.fixture(scope="module")
def single_thread_kernels():
    """Kernels inherit the environment: one thread each on the shared cores."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    yield
    for v, old in saved.items():
        if old is None:
            os.environ.pop(v, None)
        else:
            os.environ[v] = old


# ----------------------------------------------------------------------- committed notebooks


def test_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS][:4] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a code cell has outputs"
    md = sum(c.cell_type == "markdown" for c in nb.cells)
    assert md > len(_code_cells(nb)), f"{path.name}: expected more markdown than code cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_parameters_cell_is_validated_by_the_next_cell(path):
    nb = nbformat.read(path, as_version=4)
    declared = _declared(nb)
    # papermill parses every line (a line it cannot parse is dropped from --help-notebook and sweeps)
    assert set(pm.inspect_notebook(str(path))) == set(declared)
    assert "result_dir" in declared, "the main job and rdc sweep pass result_dir (rdc_lib.sweep convention)"
    code = _code_cells(nb)
    first = code.index(_param_cell(nb))
    assert first == 0, "the parameters cell must be the first code cell"
    calls = [
        n
        for n in ast.walk(ast.parse(code[first + 1].source))
        if isinstance(n, ast.Call) and re.fullmatch(r"validate\w*params", getattr(n.func, "id", ""))
    ]
    assert len(calls) == 1, "the cell after the parameters must call a validate...params function once"
    passed = {kw.arg: kw.value for kw in calls[0].keywords if kw.arg != "namespace"}
    assert set(passed) == set(declared), f"not validated: {set(declared) - set(passed)}"
    # the notebook's globals go along, so a parameter papermill injected under an old name is refused
    namespace = [kw.value for kw in calls[0].keywords if kw.arg == "namespace"]
    assert len(namespace) == 1 and ast.unparse(namespace[0]) == "globals()", "validate with namespace=globals()"
    assert all(isinstance(v, ast.Name) and v.id == k for k, v in passed.items())
    # the defaults themselves are valid, and run from the notebooks folder
    from rdc_lib.jobs.params import validate_params

    validate_params(base_dir=NB_DIR, **declared)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_result_dir_default_writes_nothing(path):
    """rdc_lib.sweep convention: result_dir: str = '' so an interactive or plain papermill run writes no results.json
    into the current folder; the main job and sweeps pass a folder."""
    nb = nbformat.read(path, as_version=4)
    assert _declared(nb)["result_dir"] == ""
    writes = [c.source for c in _code_cells(nb) if "results.json" in c.source and "write_text" in c.source]
    assert writes and all("if result_dir:" in src for src in writes)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_denoisers_default_to_the_shipped_defaults(path):
    """No denoiser parameter defaults to a retired denoiser (rdc_lib.core.choices.LEGACY_DENOISERS) except a documented
    contrast, and the notebook's opening cells say which denoiser it uses and where the choice is explained."""
    from rdc_lib.core.choices import DEFAULT_DENOISERS, LEGACY_DENOISERS
    from rdc_lib.jobs.params import validate_params

    nb = nbformat.read(path, as_version=4)
    declared = _declared(nb)
    retired = {
        k: v
        for k, v in declared.items()
        if isinstance(v, str)
        and any(v == name or v.endswith(f"/{name}.safetensors") for name in LEGACY_DENOISERS.values())
    }
    assert set(retired) <= CONTRAST_PARAMS, f"{path.name}: {retired} default to a retired denoiser"
    intro = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown")
    for name in retired:
        assert f"`{name}`" in intro and "contrast" in intro, f"{path.name}: the contrast {name} is not documented"
    denoisers = [k for k in ("checkpoint", "checkpoint_single") if k in declared] or (
        ["heads"] if "heads" in declared else []
    )
    if denoisers:  # the denoiser is named in the opening cells, with where the choice is explained
        assert "DEFAULT_DENOISERS" in intro and "docs/denoisers.md" in intro, path.name
        values = validate_params(base_dir=NB_DIR, **{k: declared[k] for k in denoisers})
        for k in denoisers:
            if k != "heads":
                assert Path(values[k]).stem in DEFAULT_DENOISERS.values(), (path.name, k, values[k])


def test_parameter_files_only_name_declared_parameters():
    declared = set().union(*(set(pm.inspect_notebook(str(p))) for p in NOTEBOOKS))
    for f in sorted((NB_DIR / "params").glob("*.yaml")):
        names = set(yaml.safe_load(f.read_text()))
        assert names <= declared, f"{f.name}: {names - declared} declared by no notebook"


# ----------------------------------------------------------------------- the main job, for real


@pytest.fixture(scope="module")
def run(tmp_path_factory, single_thread_kernels):
    out = tmp_path_factory.mktemp("run")
    summary = main_job.run_notebooks(
        out, params_file=SMALL, progress=False, parameters=ABSOLUTE, cell_timeout=CELL_TIMEOUT
    )
    return out, summary


def test_main_job_runs_every_notebook(run):
    out, summary = run
    rows = {r.notebook: r for r in summary.notebooks}
    assert list(rows) == [p.stem for p in NOTEBOOKS]
    failed = {k: r.error for k, r in rows.items() if r.status != "ok"}
    assert not failed, f"notebooks failed: {failed}"
    for path in NOTEBOOKS:
        executed = out / f"{path.stem}.ipynb"
        assert executed.is_file() and not (out / f"{path.stem}.part.ipynb").exists()
        nb = nbformat.read(executed, as_version=4)
        errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
        assert not errors
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        values = {s.targets[0].id: ast.literal_eval(s.value) for s in ast.parse(injected[0].source).body}
        assert values["result_dir"] == str((out / path.stem).resolve())
        assert values.get("interactive", False) is False  # batch runs: static figures only
    data = json.loads((out / "summary.json").read_text())
    assert data["failed"] == [] and [r["notebook"] for r in data["notebooks"]] == [p.stem for p in NOTEBOOKS]
    table = (out / "summary.md").read_text()
    assert all(f"| {p.stem} | ok |" in table for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_results_file_is_well_formed(run, path):
    out, summary = run
    assert "result_dir" in pm.inspect_notebook(str(path)), f"{path.name} declares no result_dir parameter"
    results = json.loads((out / path.stem / "results.json").read_text())
    assert isinstance(results, dict) and results
    row = next(r for r in summary.notebooks if r.notebook == path.stem)
    assert row.results == str(out / path.stem / "results.json") and row.key_results
    assert all(isinstance(v, (int, float, str, bool)) or v is None for v in row.key_results.values())
    if path in OWN:  # ours name the scalars the summary shows
        assert row.key_results == results["key_results"]


def test_results_content(run):
    out, _ = run
    small = yaml.safe_load(SMALL.read_text())
    r1 = json.loads((out / "01_bayes_rule_classification" / "results.json").read_text())
    assert r1["n_images"] == small["n_images"] and 0 <= r1["key_results"]["accuracy"] <= 1
    assert r1["noise_spread"]["timesteps_list"] == small["timesteps_list"]
    r2 = json.loads((out / "02_likelihood_maximization" / "results.json").read_text())
    assert set(r2["counts"]) == {"dc_clean", "dc_adversarial", "rdc_clean", "rdc_adversarial"}
    assert len(r1["levels"]["views"]) >= 2 and r1["levels"]["views"][0]["weight_below_0.45"] > 0.5
    assert "the shipped multi-head default" in r1["denoisers"]["checkpoint"]
    r3 = json.loads((out / "03_attack_visualization" / "results.json").read_text())
    assert set(r3["robust"]) == {"CNN", "DC", "RDC"}
    assert r3["checks"]["RDC (bpda)"]["fd_passed"] is False  # the control must fail the finite-difference check
    fresh = r3["fixed_vs_fresh"]
    assert fresh["n"] == small["n_images"] and fresh["n_draws"] == small["n_reads"]
    assert all(0 <= w <= small["n_reads"] for ws in fresh["wrong_draws"].values() for w in ws)
    counts = fresh["robust_counts"]["fixed_attack"]
    assert counts[f"worst_of_{small['n_reads']}"] <= counts["one_call_expected"] + 1e-9
    r4 = json.loads((out / "04_robustness_sweep" / "results.json").read_text())
    combos = {(r["defense"], r["eps"]) for r in r4["rows"]}
    assert combos == {(d, e) for d in small["defenses"] for e in small["eps_list"]}
    for r in r4["rows"]:
        assert r["robust"]["low"] <= r["robust_acc"] <= r["robust"]["high"]
        assert (r["trusted"] is None) == (r["n"] < MIN_CHECK_IMAGES)  # too few images: not checked, never passed
        assert r["n"] == (small["rdc_n_images"] if r["defense"] == "rdc" else small["n_images"])
    r8 = json.loads((out / "08_findings" / "results.json").read_text())
    headline = [json.loads(l) for l in (REPO / "docs" / "raw" / "headline.jsonl").read_text().splitlines() if l]
    counts = {(r["robust"]["correct"], r["robust"]["total"]) for r in headline}
    assert r8["counts"]["multi_rdc_paper"] in [list(c) for c in counts] and r8["points"]["robust_by_defence"] >= 14
    r6 = json.loads((out / "06_certified_robustness" / "results.json").read_text())
    assert r6["consistent"] is True and r6["rows"] and all(r["images"] == small["n_images"] for r in r6["rows"])
    for r in r6["rows"]:
        cert = [r["certified"][k]["value"] for k in sorted(r["certified"], key=float)]
        assert cert == sorted(cert, reverse=True) and set(r["empirical"]) == set(r["certified"])
    r7 = json.loads((out / "07_bring_your_own_model" / "results.json").read_text())
    assert r7["key_results"]["adapter_ok"] is True and r7["adapter_max_abs_diff"] <= 1e-5
    assert 0 <= r7["key_results"]["dc_acc"] <= 1 and len(r7["class_gap"]["gap"]) == len(r7["class_gap"]["sigmas"])


def _nbval(good: Path, bad: Path, tmp_path: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    """nbval over the notebooks ``good`` and ``bad`` (in ``tmp_path``): the failed test cases, sorted, and the run."""
    report = tmp_path / "nbval.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(tmp_path),
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(SANITIZE),
        f"--nbval-cell-timeout={CELL_TIMEOUT}",
        f"--junitxml={report}",
        str(good),
        str(bad),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    cases = ET.parse(report).getroot().iter("testcase")
    failed = sorted(
        (c.get("classname", "") + "::" + c.get("name", ""))
        for c in cases
        if c.find("failure") is not None or c.find("error") is not None
    )
    return failed, proc


@pytest.mark.parametrize(
    "stem, marker, n_checked",
    [("01_bayes_rule_classification", "correct:", 2), ("07_bring_your_own_model", "max abs difference", 1)],
    ids=["01", "07"],
)
def test_nbval_checks_the_seeded_output(run, tmp_path, stem, marker, n_checked):
    """nbval re-runs the executed notebook and compares its NBVAL_CHECK_OUTPUT cells (01: the prediction table and
    the noise-level decisions; 07: the adapter check); a copy whose first checked output was altered must fail there."""
    out, _ = run
    good = tmp_path / f"nb{stem[:2]}_good.ipynb"
    bad = tmp_path / f"nb{stem[:2]}_bad.ipynb"
    nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
    code = _code_cells(nb)
    checked = [i for i, c in enumerate(code) if "# NBVAL_CHECK_OUTPUT" in c.source]  # nbval numbers code cells
    assert len(checked) == n_checked and all(code[i].outputs for i in checked), "the checked cells must have output"
    if n_checked == 2:
        assert "predictions per image" in code[checked[1]].outputs[0]["text"]  # 01 section 6: noise-level decisions
    nbformat.write(nb, good)
    stream = next(o for o in code[checked[0]].outputs if marker in o.get("text", ""))
    stream["text"] = stream["text"].replace(marker, marker.upper())
    for cell in code[checked[0] + 1 :]:  # later cells cannot affect the checked one: skip them in the copy
        cell.source = "# NBVAL_SKIP\n" + cell.source
    nbformat.write(nb, bad)
    failed, proc = _nbval(good, bad, tmp_path)
    assert len(failed) == 1 and f"nb{stem[:2]}_bad" in failed[0], f"nbval result:\n{proc.stdout[-4000:]}"
    assert failed[0].endswith(f"Cell {checked[0]}"), failed
    assert proc.returncode == 1


def test_nbval_checks_the_08_findings_answer(run, tmp_path):
    """nbval re-runs the executed 08 (it reads docs/raw only) and its checked answer cell matches; an altered copy
    of the stored answer fails."""
    out, _ = run
    nb = nbformat.read(out / "08_findings.ipynb", as_version=4)
    code = _code_cells(nb)
    checked = [i for i, c in enumerate(code) if "# NBVAL_CHECK_OUTPUT" in c.source]
    assert len(checked) == 1 and "multi_rdc_paper" in code[checked[0]].outputs[0]["text"]
    good, bad = tmp_path / "nb08_good.ipynb", tmp_path / "nb08_bad.ipynb"
    nbformat.write(nb, good)
    stream = code[checked[0]].outputs[0]
    stream["text"] = stream["text"].replace("74.0%", "84.0%")
    nbformat.write(nb, bad)
    failed, proc = _nbval(good, bad, tmp_path)
    assert len(failed) == 1 and "nb08_bad" in failed[0], f"nbval result:\n{proc.stdout[-4000:]}"


# ------------------------------------------------------------------------- bad parameters

BAD = [
    ("01", {"timesteps": "many"}, "notebook parameter timesteps = 'many'"),
    ("02", {"T": 4}, "renamed notebook parameter(s): 'T' is now 'timesteps'"),  # an old name is refused
    ("02", {"eps": -1}, "notebook parameter eps = -1"),
    ("03", {"norm": "l3"}, "notebook parameter norm = 'l3'"),
    ("04", {"dataset": "cifar10"}, "notebook parameter dataset = 'cifar10' needs files that are missing"),
    ("06", {"n_estimate": 5}, "notebook parameter n_estimate = 5 (int): expected an int >= 7"),
    ("06", {"radii": [0.0, -0.5]}, "notebook parameter radii[1] = -0.5"),
    ("06", {"pixel_sigma_list": [0.0]}, "notebook parameter pixel_sigma_list[0] = 0.0"),
    ("08", {"figures": ["robust_by_defense"]}, "notebook parameter figures[0] = 'robust_by_defense'"),
    ("08", {"raw_dir": "."}, "expected a folder holding headline.jsonl"),
    ("07", {"diffusers_model": "../data/checkpoints"}, "notebook parameter diffusers_model = '../data/checkpoints'"),
]


@pytest.mark.parametrize("prefix, params, message", BAD, ids=[b[0] + "-" + next(iter(b[1])) for b in BAD])
def test_bad_parameter_fails_in_the_validation_cell(prefix, params, message, tmp_path, single_thread_kernels):
    path = next(p for p in NOTEBOOKS if p.stem.startswith(prefix))
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(
            str(path), str(out), parameters=params, cwd=str(NB_DIR), progress_bar=False, execution_timeout=CELL_TIMEOUT
        )
    err = info.value
    assert err.ename in ("NotebookParameterError", "MissingFilesError") and message in err.evalue
    if params.get("dataset") == "cifar10":
        assert "data_batch_1" in err.evalue and "rdc import-edm" in err.evalue
    # executed: the parameters cell, papermill's injected cell, then the validation cell, which failed
    assert err.exec_count == 3
    nb = nbformat.read(out, as_version=4)
    code = [c for c in _code_cells(nb) if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    failing = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert failing == [2]
    assert "parameters" in code[0].metadata.tags and "injected-parameters" in code[1].metadata.tags
    assert "validate_params" in code[2].source


# ------------------------------------------------------------------ the main job's bookkeeping


def _tiny_notebook(path: Path, body: str, params: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("tiny"),
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_notebooks")
    params = 'scale: float = 1.0  # multiplier\ninteractive: bool = True  # widgets\nresult_dir: str = ""  # out'
    _tiny_notebook(
        d / "01_ok.ipynb",
        "import json, pathlib\n"
        "r = {'key_results': {'value': 2 * scale, 'interactive': interactive}, 'big': list(range(3))}\n"
        "if result_dir:\n    pathlib.Path(result_dir, 'results.json').write_text(json.dumps(r))",
        params,
    )
    _tiny_notebook(d / "02_fails.ipynb", "raise RuntimeError(f'boom {scale}')", params)
    _tiny_notebook(d / "03_no_results.ipynb", "x = 1", "y: int = 0  # nothing")
    (d / "not_numbered.ipynb").write_text((d / "03_no_results.ipynb").read_text())
    return d


def test_run_records_failures_and_continues(tiny_dir, tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("scale: 3.0\nper_notebook:\n  '02': {scale: 5.0}\n")
    args = _cli_args(
        ["--out", str(tmp_path / "run"), "--params", str(params), "--no-progress", "--notebooks-dir", str(tiny_dir)]
    )
    code = cmd_run_notebooks(args)
    assert code == 1
    printed = capsys.readouterr().out
    last = json.loads(printed.strip().splitlines()[-1])
    assert last["failed"] == ["02_fails"] and last["notebooks"] == 3
    data = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = {r["notebook"]: r for r in data["notebooks"]}
    assert [r["status"] for r in rows.values()] == ["ok", "failed", "ok"]
    assert rows["01_ok"]["key_results"] == {"value": 6.0, "interactive": False}  # batch runs set interactive False
    assert rows["01_ok"]["parameters"]["scale"] == 3.0
    assert "RuntimeError: boom 5.0" in rows["02_fails"]["error"]  # per-notebook override, error recorded
    assert rows["03_no_results"]["results"] is None and "scale" not in rows["03_no_results"]["parameters"]
    for stem in rows:
        assert (tmp_path / "run" / f"{stem}.ipynb").is_file()  # the failed one too (with its traceback)
    assert "| 02_fails | failed |" in (tmp_path / "run" / "summary.md").read_text()
    assert "| 01_ok | ok |" in printed and str((tmp_path / "run").resolve()) in printed


def test_only_and_parameter_errors(tiny_dir, tmp_path):
    s = main_job.run_notebooks(tmp_path / "r", notebooks=["01"], progress=False, notebooks_dir=tiny_dir)
    assert [r.notebook for r in s.notebooks] == ["01_ok"] and s.ok
    with pytest.raises(ValueError, match="unknown notebook 'zz'"):
        main_job.discover_notebooks(tiny_dir, ["zz"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("scal: 2\n")
    with pytest.raises(ValueError, match=r"'scal' is declared by none of the notebooks.*did you mean 'scale'"):
        main_job.run_notebooks(tmp_path / "r2", params_file=bad, progress=False, notebooks_dir=tiny_dir)
    bad.write_text("result_dir: /x\n")
    with pytest.raises(ValueError, match="set by the job"):
        main_job.load_params_file(bad)
    with pytest.raises(FileNotFoundError):
        main_job.load_params_file(tmp_path / "missing.yaml")


def test_cli_arguments():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_run_notebooks_parser(sub)
    args = parser.parse_args(
        ["run-notebooks", "--out", "d", "--params", "p.yaml", "--only", "01", "02", "-p", "timesteps", "8"]
    )
    assert (args.out, args.params, args.only, args.parameter) == ("d", "p.yaml", ["01", "02"], [["timesteps", "8"]])
    assert parser.parse_args(["run-notebooks"]).out == "runs/latest"


def _cli_args(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_run_notebooks_parser(sub)
    return parser.parse_args(["run-notebooks", *argv])
