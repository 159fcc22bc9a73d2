"""Sweeps: YAML validation, cell keys, the SQLite store, the Dask engine (resume, retry, a SIGKILLed
client, a dying worker, papermill cells), Slurm option translation, the report and the CLI.

Targets are the cheap functions of tests/sweep_targets.py and the tiny notebook tests/data/sweep_tiny.ipynb,
so nothing here depends on the evaluation code, except one integration test of ``function: eval``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdc_lib.cli import add_sweep_parsers, cmd_report, cmd_sweep
from rdc_lib.sweep import (
    ResultStore,
    SlurmOptions,
    SweepSpecError,
    load_sweep,
    parse_sweep,
    plan_cells,
    run_sweep,
    slurm_cluster_kwargs,
    sweep_status,
    write_report,
)
from rdc_lib.sweep.cluster import _gpu_cluster
from rdc_lib.sweep.store import CellRecord, cell_key, code_version
from rdc_lib.sweep.targets import parse_annotation, type_accepts

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
# Workers import the target module by name; spawned worker processes inherit sys.path at spawn time.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

TINY = "function: sweep_targets:tiny_cell\n"


def _spec(tmp_path: Path, body: str, name: str = "t"):
    return parse_sweep(f"name: {name}\n{body}", source="t.yaml", base_dir=tmp_path)


def _bad(text: str, base: Path = DATA) -> str:
    with pytest.raises(SweepSpecError) as info:
        parse_sweep(text, source="bad.yaml", base_dir=base)
    return str(info.value)


def _log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --------------------------------------------------------------------------- validation


def test_unknown_top_level_key_names_line_and_valid_keys():
    msg = _bad(TINY + "grid:\n  x: [1]\nsedes: [1, 2]\n")
    assert "bad.yaml, line 4" in msg and "'sedes'" in msg and "did you mean 'seeds'" in msg
    assert "valid keys: name, notebook, function, params, grid" in msg


@pytest.mark.parametrize(
    "grid, line, needle",
    [
        ("grid: {}\n", 2, "'grid' is empty"),
        ("grid:\n  x: []\n", 3, "'x' has an empty list"),
        ("grid:\n  x: 3\n", 3, "must be a list of values"),
    ],
)
def test_empty_or_malformed_grid(grid, line, needle):
    msg = _bad(TINY + grid)
    assert f"line {line}" in msg and needle in msg


def test_no_cells_and_bad_seeds_and_duplicate_key():
    assert "the sweep has no cells" in _bad(TINY + "params: {x: 1}\n")
    assert "line 4" in _bad(TINY + "grid:\n  x: [1]\nseeds: []\n")
    assert "line 4" in _bad(TINY + "grid:\n  x: [1]\nseeds: [0, 1.5]\n")
    msg = _bad(TINY + "grid:\n  x: [1]\ngrid:\n  x: [2]\n")
    assert "line 4" in msg and "given twice (first on line 2)" in msg


def test_undeclared_notebook_parameter_lists_declared_ones():
    msg = _bad("notebook: sweep_tiny.ipynb\ngrid:\n  x: [1]\n  epz: [0.1]\n")
    assert "line 4" in msg and "'epz' is not declared" in msg and "did you mean 'eps'" in msg
    assert "valid parameters: eps, fail, mode, scale, x" in msg


def test_type_mismatch_names_line_and_expected_type():
    msg = _bad(TINY + "params:\n  scale: big\ngrid:\n  x: [1]\n")
    assert "line 3 (params.scale)" in msg and "expected float" in msg
    msg = _bad(TINY + "grid:\n  x: [1, 2.5]\n")
    assert "line 3 (grid.x.1)" in msg and "expected int" in msg
    # bools are not ints; papermill's own parser drops `mode: Literal[...]` and `eps: float | None`
    assert "expected int" in _bad("notebook: sweep_tiny.ipynb\ngrid:\n  x: [true]\n")
    msg = _bad("notebook: sweep_tiny.ipynb\ngrid:\n  x: [1]\n  mode: [fast, medium]\n")
    assert "line 4 (grid.mode.1)" in msg and "one of 'fast', 'slow'" in msg
    msg = _bad("notebook: sweep_tiny.ipynb\ninclude:\n  - {x: 1, eps: null}\n  - {x: 2, eps: high}\n")
    assert "line 4 (include.1.eps)" in msg and "float (a number) or None" in msg


def test_reserved_and_required_parameters():
    assert "use the top-level 'seeds'" in _bad(TINY + "grid:\n  x: [1]\n  seed: [3]\n")
    assert "required parameter(s) x" in _bad(TINY + "include:\n  - {scale: 1.0}\n")
    assert "'result_dir' is reserved" in _bad("notebook: sweep_tiny.ipynb\ngrid:\n  result_dir: [a]\n")
    assert "give exactly one target" in _bad("grid:\n  x: [1]\n")
    assert "No module named 'nosuch'" in _bad("function: nosuch:fn\ngrid:\n  x: [1]\n")


@pytest.mark.parametrize(
    "text, good, bad",
    [
        ("float | None", [1, 0.5, None], ["a", True]),
        ("Literal['a', 'b']", ["a"], ["c", 1]),
        ("list[int]", [[1, 2], []], [[1.5], 3]),
        ("dict[str, float]", [{"a": 1}], [{"a": "x"}]),
        ("Optional[str]", ["s", None], [3]),
    ],
)
def test_type_accepts(text, good, bad):
    tp = parse_annotation(text)
    assert all(type_accepts(tp, v) for v in good) and not any(type_accepts(tp, v) for v in bad)


def test_cells_grid_product_include_seeds():
    spec = load_sweep(DATA / "sweep_tiny.yaml", base_dir=DATA)
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2 and cells[0] == {"scale": 2.0, "x": 1, "label": "a", "seed": 0}
    assert [c["seed"] for c in cells] == [0] * 4 + [1] * 4  # seeds outermost
    spec = parse_sweep(
        "function: sweep_targets:fake_eval\nparams: {defense: cnn}\nn: 5\ngrid:\n  eps: [0.1, 0.2]\n"
        "include:\n  - {eps: 0.2}\n  - {eps: 0.3, defense: dc}\nseeds: [3]\n",
        base_dir=DATA,
    )
    assert spec.cells()[0] == {"defense": "cnn", "n": 5, "eps": 0.1, "seed": 3}
    assert [(c["eps"], c["defense"]) for c in spec.cells()] == [(0.1, "cnn"), (0.2, "cnn"), (0.3, "dc")]
    assert spec.store == DATA / "runs/sweeps/sweep/results.sqlite"  # the repeated include cell was dropped


# --------------------------------------------------------------------------- identity and store


def test_cell_key_identity():
    base = cell_key("function:f", {"x": 1, "seed": 0}, "v1", {})
    assert base == cell_key("function:f", {"seed": 0, "x": 1}, "v1", {})  # canonical JSON
    assert (
        len(
            {
                base,
                cell_key("function:f", {"x": 1, "seed": 1}, "v1", {}),
                cell_key("function:f", {"x": 1.5, "seed": 0}, "v1", {}),
                cell_key("function:f", {"x": 1, "seed": 0}, "v2", {}),
                cell_key("function:f", {"x": 1, "seed": 0}, "v1", {"c.safetensors": "ab"}),
                cell_key("notebook:f", {"x": 1, "seed": 0}, "v1", {}),
            }
        )
        == 6
    )


def test_code_version_and_checkpoint_hash(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    v1 = code_version(package_root=pkg)
    assert v1 == code_version(package_root=pkg)
    (pkg / "a.py").write_text("x = 2\n")
    assert code_version(package_root=pkg) != v1
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"one")
    body = TINY + "params: {label: m.safetensors}\ngrid:\n  x: [1]\n"
    k1 = plan_cells(_spec(tmp_path, body), "c")[0]
    assert k1.checkpoints == {"m.safetensors": __import__("hashlib").sha256(b"one").hexdigest()}
    ckpt.write_bytes(b"two!")
    assert plan_cells(_spec(tmp_path, body), "c")[0].key != k1.key


def _rec(key: str, status: str, finished: str, **kw) -> CellRecord:
    return CellRecord(
        key=key,
        sweep="s",
        target="function:f",
        params={"x": 1, "seed": 0},
        status=status,
        code_version="c",
        checkpoints={},
        finished=finished,
        **kw,
    )


def test_store_upsert_semantics(tmp_path):
    path = tmp_path / "s.sqlite"
    with ResultStore(path) as store:
        assert store.record(_rec("k1", "failed", "t1", error="boom"))
        assert store.record(_rec("k1", "done", "t2", result={"v": 1}))  # a retry replaces a failure
        assert not store.record(_rec("k1", "done", "t3", result={"v": 2}))  # a done row is final
        assert not store.record(_rec("k1", "failed", "t4", error="late"))
        row = store.get("k1")
        assert (row.status, row.finished, row.result, row.attempts) == ("done", "t2", {"v": 1}, 2)
        with pytest.raises(ValueError, match="'done' or 'failed'"):
            store.record(_rec("k2", "running", "t"))
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResultStore(tmp_path / "missing.sqlite", readonly=True)


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def cluster():
    """One 2-worker local cluster for the engine tests; a worker death fails its task at once."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield cl
    cl.close()


def test_resume_skips_done_cells(tmp_path, cluster):
    log = tmp_path / "calls.jsonl"
    spec = _spec(tmp_path, TINY + f"params: {{sleep: 0.1, log_file: {log}}}\ngrid:\n  x: [1, 2, 3]\nseeds: [0]\n")
    first = run_sweep(spec, scheduler_address=cluster.scheduler_address, progress=False, code="c")
    assert (first.ran, first.ran_done, first.skipped) == (3, 3, 0)
    with ResultStore(spec.store) as store:
        rows = {r.key: r for r in store.rows()}
    assert sorted(r.result["value"] for r in rows.values()) == [1.0, 2.0, 3.0]
    again = run_sweep(spec, scheduler_address=cluster.scheduler_address, progress=False, code="c")
    assert (again.ran, again.skipped, again.status.done) == (0, 3, 3)
    assert len(_log_lines(log)) == 3  # nothing executed twice
    with ResultStore(spec.store) as store:
        assert {r.key: r.finished for r in store.rows()} == {k: r.finished for k, r in rows.items()}
    grown = _spec(tmp_path, TINY + f"params: {{sleep: 0.1, log_file: {log}}}\ngrid:\n  x: [1, 2, 3, 4]\n")
    assert sweep_status(grown, code="c").as_dict() == {"total": 4, "done": 3, "failed": 0, "pending": 1, "stale": 0}
    assert sweep_status(grown, code="other").as_dict()["stale"] == 3  # other code version: not reused


def test_retry_failed_retries_only_failed(tmp_path, cluster):
    log, marker = tmp_path / "calls.jsonl", tmp_path / "fail.marker"
    marker.touch()
    spec = _spec(
        tmp_path, TINY + f"params: {{log_file: {log}, fail_marker: {marker}, fail_x: 2}}\ngrid:\n  x: [1, 2, 3]\n"
    )
    run = lambda **kw: run_sweep(spec, scheduler_address=cluster.scheduler_address, progress=False, code="c", **kw)  # noqa: E731
    res = run()
    assert (res.ran_done, res.ran_failed) == (2, 1)
    with ResultStore(spec.store) as store:
        (failed,) = store.rows(status="failed")
    assert failed.params["x"] == 2 and "RuntimeError: requested failure for x=2" in failed.error
    assert "Traceback" in failed.error and failed.result is None
    assert run().ran == 0  # failed cells are kept, not retried, without retry_failed
    marker.unlink()
    res = run(retry_failed=True)
    assert (res.ran, res.ran_done) == (1, 1) and res.status.done == 3
    assert sorted(line["x"] for line in _log_lines(log)) == [1, 2, 2, 3]
    with ResultStore(spec.store) as store:
        row = store.get(failed.key)
        assert (row.status, row.attempts, row.error) == ("done", 2, None)
        assert len(store.rows()) == 3


def test_dying_worker_becomes_a_failed_row(tmp_path, cluster):
    spec = _spec(tmp_path, TINY + "params: {crash_x: 2, sleep: 0.1}\ngrid:\n  x: [1, 2, 3]\n")
    res = run_sweep(spec, scheduler_address=cluster.scheduler_address, progress=False, code="c")
    assert res.status.as_dict() == {"total": 3, "done": 2, "failed": 1, "pending": 0, "stale": 0}
    with ResultStore(spec.store) as store:
        (row,) = store.rows(status="failed")
    assert row.params["x"] == 2 and "KilledWorker" in row.error and row.started is None


def test_notebook_cells_with_papermill(tmp_path, cluster):
    spec = load_sweep(DATA / "sweep_tiny_notebook.yaml", base_dir=DATA)
    spec = dataclasses.replace(spec, output=tmp_path / "out", store=tmp_path / "nb.sqlite")
    res = run_sweep(spec, scheduler_address=cluster.scheduler_address, progress=False, code="c")
    assert res.status.done == 2, [o.error for o in res.outcomes]
    with ResultStore(spec.store) as store:
        rows = sorted(store.rows(), key=lambda r: r.params["x"])
    assert [r.result["value"] for r in rows] == [3.0, 6.0]
    assert rows[0].result["cwd"] == str(DATA)  # kernels run in the notebook's folder
    for r in rows:
        nb = json.loads(Path(r.notebook).read_text())
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert f"x = {r.params['x']}" in "".join(injected[0]["source"])
    assert not list((tmp_path / "out").rglob("*.part.ipynb"))


def test_inline_run_and_failing_notebook_record(tmp_path):
    spec = parse_sweep(
        "notebook: sweep_tiny.ipynb\nparams: {fail: true}\ngrid:\n  x: [1]\n"
        f"output: {tmp_path / 'o'}\nstore: {tmp_path / 's.sqlite'}\n",
        base_dir=DATA,
    )
    res = run_sweep(spec, workers=0, progress=False)
    assert res.ran_failed == 1
    with ResultStore(spec.store) as store:
        (row,) = store.rows()
    assert row.status == "failed" and row.error.startswith("ValueError: requested failure")
    assert "requested failure" in Path(row.notebook).read_text()  # the executed notebook is the record


def test_gpu_pinning_sets_one_device_per_worker():
    from distributed import Client

    with _gpu_cluster(2, ["7", "9"], 1, None) as cl, Client(cl) as client:
        seen = client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")))
    assert sorted(seen.values()) == [("7", "1"), ("9", "1")]


_FT_SCRIPT = (
    "import sys\nfrom rdc_lib.sweep import load_sweep, run_sweep\n"
    "run_sweep(load_sweep(sys.argv[1]), workers=2, devices=[], progress=False, code='ft')\n"
)


def _start_sweep(tmp_path: Path, sweep_file: Path, tag: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    out = open(tmp_path / f"{tag}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-c", _FT_SCRIPT, str(sweep_file)],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _done_rows(store: Path) -> dict[str, tuple]:
    if not store.exists():
        return {}
    try:
        with ResultStore(store, readonly=True) as s:
            return {r.key: (r.finished, r.started, json.dumps(r.result)) for r in s.rows(status="done")}
    except (sqlite3.OperationalError, ValueError):  # the schema is being created right now
        return {}


def test_sigkill_midway_then_restart_keeps_every_finished_cell_once(tmp_path):
    log = tmp_path / "calls.jsonl"
    sweep_file = tmp_path / "ft.yaml"
    sweep_file.write_text(
        f"name: ft\n{TINY}params: {{sleep: 1.5, log_file: {log}}}\ngrid:\n  x: [1, 2, 3, 4, 5, 6, 7, 8]\noutput: out\n"
    )
    store = tmp_path / "out" / "results.sqlite"
    proc = _start_sweep(tmp_path, sweep_file, "first")
    deadline = time.time() + 240
    while len(_done_rows(store)) < 3:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()
        assert time.time() < deadline, "no cell finished in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # client, scheduler, nannies and workers at once
    proc.wait()
    for _ in range(100):  # wait until every process of the group is gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    before = _done_rows(store)
    assert 3 <= len(before) < 8
    kill_calls = len(_log_lines(log))

    proc = _start_sweep(tmp_path, sweep_file, "second")
    assert proc.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()
    after = _done_rows(store)
    assert len(after) == 8
    assert {k: after[k] for k in before} == before  # finished rows untouched: same timestamps and results
    con = sqlite3.connect(store)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key), SUM(attempts) FROM cells").fetchone() == (8, 8, 8)
    done_x = {json.loads(v[2])["x"] for v in before.values()}
    rerun = [line["x"] for line in _log_lines(log)[kill_calls:]]
    assert not done_x & set(rerun) and sorted(rerun) == sorted(set(range(1, 9)) - done_x)


# --------------------------------------------------------------------------- Slurm, report, CLI


def test_slurm_options_translate_to_a_job_script():
    opts = SlurmOptions(
        jobs=3,
        partition="gpu",
        account="proj",
        cores=8,
        memory="32GB",
        walltime="01:00:00",
        gpus=1,
        directives=("--constraint=a100",),
        prologue=("source .venv/bin/activate",),
    )
    kw = slurm_cluster_kwargs(opts)
    assert kw["cores"] == 1 and kw["job_cpu"] == 8 and kw["queue"] == "gpu"
    assert kw["worker_extra_args"] == ["--lifetime", "55m", "--lifetime-stagger", "2m"]
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(**kw) as cl:  # starts a local scheduler only; no job is submitted
        script = cl.job_script()
    for needle in (
        "#SBATCH -p gpu",
        "#SBATCH -A proj",
        "--cpus-per-task=8",
        "--gres=gpu:1",
        "--constraint=a100",
        "source .venv/bin/activate",
        "export OMP_NUM_THREADS=8",
        "--nthreads 1",
        "--lifetime 55m",
    ):
        assert needle in script, needle
    with pytest.raises(ValueError, match="walltime"):
        SlurmOptions(walltime="one hour")


def test_report_tables_and_figure(tmp_path):
    spec = _spec(
        tmp_path,
        "function: sweep_targets:fake_eval\nparams: {untrusted_eps: 0.1}\n"
        "grid:\n  defense: [cnn, dc]\n  eps: [0.05, 0.1]\nseeds: [0, 1]\n",
    )
    assert run_sweep(spec, workers=0, progress=False).status.done == 8
    rep = write_report(spec.store, tmp_path / "rep")
    assert (rep.done, rep.failed, rep.untrusted) == (8, 0, 4)
    md = rep.markdown.read_text()
    assert "| cnn | pgd | linf | 0.1 | 0.305 | 0.007071 | 2 | UNTRUSTED |" in md  # mean/std over seeds, untrusted
    assert "| dc | pgd | linf | 0.05 | 0.705 | 0.007071 | 2 | passed |" in md
    rows = list(csv.DictReader(rep.cells_csv.open()))
    assert len(rows) == 8 and {r["failed_checks"] for r in rows} == {"", "large_budget"}
    page = rep.html.read_text()
    assert 'src="https://cdn.plot.ly' not in page and len(page) > 1_000_000  # plotly.js embedded: works offline
    assert "x-open" in page and "untrusted (sanity check failed)" in page


def test_cli_status_and_report(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(
        "name: cli\nfunction: sweep_targets:fake_eval\ngrid:\n  defense: [cnn]\n  eps: [0.1, 0.2]\n"
    )
    parser = argparse.ArgumentParser()
    add_sweep_parsers(parser.add_subparsers(dest="command"))
    assert cmd_sweep(parser.parse_args(["sweep", "s.yaml", "--status"])) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["pending"] == 2
    assert cmd_sweep(parser.parse_args(["sweep", "s.yaml", "--workers", "0", "--no-progress"])) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["done"] == 2
    assert cmd_report(parser.parse_args(["report", "runs/sweeps/cli/results.sqlite"])) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["done"] == 2
    (tmp_path / "bad.yaml").write_text("function: sweep_targets:fake_eval\ngrid:\n  defenze: [cnn]\n")
    assert cmd_sweep(parser.parse_args(["sweep", "bad.yaml", "--status"])) == 2
    assert "line 3" in capsys.readouterr().err


# --------------------------------------------------------------------------- the real evaluation


def test_eval_target_validation_and_one_cell(tmp_path):
    msg = _bad("function: eval\ngrid:\n  defense: [cnn, nope]\n", tmp_path)
    assert "line 3 (grid.defense.1)" in msg and "valid choices: cnn" in msg
    assert "valid parameters: attack" in _bad("function: eval\ngrid:\n  defenze: [cnn]\n", tmp_path)
    spec = _spec(
        tmp_path, "function: eval\nparams: {attack: fgsm, eps: 0.1, run_checks: false}\nn: 8\ngrid:\n  defense: [cnn]\n"
    )
    res = run_sweep(spec, workers=0, progress=False, threads_per_cell=1)
    assert res.status.done == 1, [o.error for o in res.outcomes]
    with ResultStore(spec.store) as store:
        (row,) = store.rows()
    for key in ("defense", "attack", "n", "clean_acc", "robust_acc", "norm", "eps", "seconds", "checks"):
        assert key in row.result, key
    assert row.result["n"] == 8 and 0.0 <= row.result["robust_acc"] <= row.result["clean_acc"] <= 1.0
    from rdc_lib.evaluation.provenance import provenance_problem

    assert provenance_problem(row.result) == "" and row.result["provenance"]["checkpoints"]  # a traceable cell
    (cell,) = list(csv.DictReader(write_report(spec.store, tmp_path / "rep").cells_csv.open()))
    assert json.loads(cell["provenance"]) == row.result["provenance"]  # the CSV (docs/raw) carries it per row
