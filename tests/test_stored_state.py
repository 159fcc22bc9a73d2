"""Damaged or stale stored state: every reader names the file and both ways out; confined damage is
recovered; a restart moves the damaged files aside and gives exactly the result of a clean run.

Stored files covered: evaluation records (.jsonl) and adversarial images (.adv.safetensors), the
ensemble state, the training state (<out>.state.pt), a sweep cell's folder and the SQLite store.
Cheap settings throughout: the digits CNN, PGD with 2 steps on 8 images, a tiny denoiser for 2 steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rdc_lib.attacks import build_attack, run_ensemble
from rdc_lib.cli import main
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.core.stored_state import StoredStateError, move_aside
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.records import records_paths
from rdc_lib.models import read_checkpoint
from rdc_lib.sweep import ResultStore, parse_sweep, run_sweep, sweep_status
from rdc_lib.sweep.store import CellRecord
from rdc_lib.train import TrainConfig, train_denoiser

from .conftest import TINY_BACKBONE

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sweep target module tests/sweep_targets.py
    sys.path.insert(0, str(HERE))

CFG = EvalConfig(defense="cnn", attack="pgd", steps=2, n_images=8, chunk=4, run_checks=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_names_file_and_ways_out(exc: StoredStateError, path: Path, flag: str) -> None:
    msg = str(exc)
    assert exc.path == path and str(path) in msg, msg
    assert flag in msg and f"delete {path}" in msg and ".damaged-<time>" in msg, msg


def _aside(path: Path, tag: str = "damaged") -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.{tag}-*"))


def _same(a: dict, b: dict, skip: tuple[str, ...] = ("seconds",)) -> None:
    """Equal results, apart from wall-clock facts (seconds, and the provenance's UTC time stamp)."""

    def kept(result: dict) -> dict:
        out = {k: v for k, v in result.items() if k not in skip}
        if isinstance(out.get("provenance"), dict):
            out["provenance"] = {k: v for k, v in out["provenance"].items() if k != "utc"}
        return out

    assert kept(a) == kept(b)


# --------------------------------------------------------------------------- evaluation records


@pytest.fixture(scope="module")
def clean_eval(tmp_path_factory) -> tuple[dict, Path]:
    """A clean evaluation with records (the reference) and its records folder (copied by each test)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("clean_records")
    return evaluate(CFG, records_dir=root, progress=False), root


@pytest.fixture
def records(clean_eval, tmp_path) -> tuple[dict, Path, Path, Path]:
    """(clean result, records folder copy, its .jsonl, its .adv.safetensors)."""
    result, root = clean_eval
    folder = tmp_path / "records"
    shutil.copytree(root, folder)
    jsonl, adv = records_paths(folder, CFG)
    assert jsonl.is_file() and adv.is_file()
    return result, folder, jsonl, adv


def _damaged_eval(folder: Path, path: Path, match: str) -> StoredStateError:
    with pytest.raises(StoredStateError, match=match) as info:
        evaluate(CFG, records_dir=folder, progress=False)
    _assert_names_file_and_ways_out(info.value, path, "--restart")
    return info.value


def test_cut_off_last_record_is_recovered_and_the_rest_recomputed(records, caplog):
    clean, folder, jsonl, adv = records
    original = jsonl.read_bytes()
    jsonl.write_bytes(original[:-40])
    with caplog.at_level(logging.WARNING):
        res = evaluate(CFG, records_dir=folder, progress=False)
    _same(res, clean, ("seconds", "attack_stats"))
    assert res["attack_stats"], "the chunk of the cut-off record is attacked again"
    assert "last line was cut off" in caplog.text and "recovered 7/8 records" in caplog.text
    (kept,) = _aside(jsonl)
    assert kept.read_bytes() == original[:-40]  # the damaged file is kept as it was
    assert jsonl.read_bytes() == original  # and the records are complete again


def test_fewer_adversarial_rows_than_records_are_recovered(records, caplog):
    clean, folder, jsonl, adv = records
    x_adv = load_file(str(adv))["x_adv"]
    save_file({"x_adv": x_adv[:5].contiguous()}, str(adv))
    with caplog.at_level(logging.WARNING):
        res = evaluate(CFG, records_dir=folder, progress=False)
    _same(res, clean, ("seconds", "attack_stats"))
    assert "has 5 rows for 8 records" in caplog.text and "recovered 5/8 records" in caplog.text
    assert len(res["attack_stats"]) == 1  # only the second chunk is attacked again
    assert torch.equal(load_file(str(adv))["x_adv"], x_adv)
    assert len(_aside(adv)) == 1 and len(_aside(jsonl)) == 1


def test_missing_images_recompute_every_record(records, caplog):
    clean, folder, jsonl, adv = records
    adv.unlink()
    with caplog.at_level(logging.WARNING):
        res = evaluate(CFG, records_dir=folder, progress=False)
    _same(res, clean, ("seconds",))
    assert "is missing" in caplog.text and "recovered 0/8 records" in caplog.text and len(_aside(jsonl)) == 1


def test_images_without_records_are_moved_aside_and_everything_recomputed(records):
    clean, folder, jsonl, adv = records
    jsonl.unlink()
    res = evaluate(CFG, records_dir=folder, progress=False)
    _same(res, clean)
    assert len(_aside(adv, "orphaned")) == 1 and jsonl.is_file()


def test_restart_of_intact_records_tags_them_replaced(records):
    clean, folder, jsonl, adv = records
    _same(evaluate(CFG, records_dir=folder, progress=False, restart=True), clean)
    assert len(_aside(jsonl, "replaced")) == 1 and len(_aside(adv, "replaced")) == 1 and not _aside(jsonl)


def test_random_bytes_in_the_images_name_the_file_then_restart_matches_a_clean_run(records):
    clean, folder, jsonl, adv = records
    damage = torch.randint(0, 256, (600,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    adv.write_bytes(bytes(damage.tolist()))
    _damaged_eval(folder, adv, "cannot be read")
    before = {p.name: p.read_bytes() for p in (jsonl, adv)}
    res = evaluate(CFG, records_dir=folder, progress=False, restart=True)
    _same(res, clean)  # exactly the clean run, attack included
    for path in (jsonl, adv):
        (kept,) = _aside(path)
        assert kept.read_bytes() == before[path.name]


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "out of range", "other run", "extra tensor"])
def test_images_that_do_not_fit_the_records_are_refused(records, case):
    _, folder, jsonl, adv = records
    x_adv = load_file(str(adv))["x_adv"]
    tensors = {
        "wrong shape": {"x_adv": x_adv[:, :, :4, :4].contiguous()},
        "wrong dtype": {"x_adv": x_adv.double()},
        "out of range": {"x_adv": x_adv * 3},
        "other run": {"x_adv": torch.where(x_adv > 0.5, x_adv - 0.01, x_adv + 0.01)},
        "extra tensor": {"x_adv": x_adv, "y": torch.zeros(8)},
    }[case]
    save_file(tensors, str(adv))
    match = {
        "wrong shape": r"shape \(8, 1, 4, 4\), expected float32 of shape \(8, 1, 8, 8\)",
        "wrong dtype": "torch.float64",
        "out of range": r"outside \[0, 1\]",
        "other run": "does not match its record",
        "extra tensor": "expected only 'x_adv'",
    }[case]
    _damaged_eval(folder, adv, match)
    assert not _aside(adv) and not _aside(jsonl)  # an error moves nothing


def _edit_line(jsonl: Path, lineno: int, edit) -> None:
    lines = jsonl.read_text().splitlines()
    lines[lineno - 1] = edit(lines[lineno - 1])
    jsonl.write_text("\n".join(lines) + "\n")


def _with(line: str, **fields) -> str:
    return json.dumps({**json.loads(line), **fields})


@pytest.mark.parametrize(
    "case, match",
    [
        ("record of another config", "line 3: a record of another configuration"),
        ("header of another config", r"another configuration \(differs in eps\)"),
        ("older code", "written by code version '0.0.0\\+src.old'"),
        ("damaged middle line", "line 3 is not valid JSON"),
        ("wrong label", "has label"),
        ("index outside", "outside this slice"),
        ("missing field", "field 'robust_all' must be true or false"),
        ("duplicate", "recorded twice"),
        ("empty", "it is empty"),
        ("random bytes", "line 1 is not a records header"),
    ],
)
def test_damaged_or_stale_records_are_refused(records, case, match):
    _, folder, jsonl, adv = records
    other_key = EvalConfig(**{**CFG.identity(), "eps": 0.2}).key()
    if case == "record of another config":
        _edit_line(jsonl, 3, lambda l: _with(l, config_key=other_key))
    elif case == "header of another config":
        _edit_line(jsonl, 1, lambda l: json.dumps({**json.loads(l), "config": {**CFG.identity(), "eps": 0.2}}))
    elif case == "older code":
        _edit_line(jsonl, 1, lambda l: _with(l, code="0.0.0+src.old"))
    elif case == "damaged middle line":
        _edit_line(jsonl, 3, lambda l: l[:30])
    elif case == "wrong label":
        _edit_line(jsonl, 4, lambda l: _with(l, label=(json.loads(l)["label"] + 1) % 10))
    elif case == "index outside":
        _edit_line(jsonl, 4, lambda l: _with(l, index=100))
    elif case == "missing field":
        _edit_line(jsonl, 4, lambda l: json.dumps({k: v for k, v in json.loads(l).items() if k != "robust_all"}))
    elif case == "duplicate":
        _edit_line(jsonl, 4, lambda l: jsonl.read_text().splitlines()[2])
    elif case == "empty":
        jsonl.write_bytes(b"")
    else:
        jsonl.write_bytes(
            bytes(torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).tolist())
        )
    _damaged_eval(folder, jsonl, match)


def test_cli_eval_names_the_damaged_file_and_restart_matches_a_clean_run(tmp_path, capsys):
    argv = [
        "eval",
        "--defense",
        "cnn",
        "--attack",
        "pgd",
        "--steps",
        "2",
        "--n",
        "8",
        "--chunk",
        "4",
        "--run-checks",
        "false",
        "--records",
        str(tmp_path),
        "--json",
        "--no-progress",
    ]
    assert main(argv) == 0
    clean = json.loads(capsys.readouterr().out.splitlines()[-1])
    jsonl, adv = records_paths(tmp_path, CFG)
    jsonl.write_bytes(jsonl.read_bytes()[:-40])
    adv.write_bytes(b"\x00" * 64)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(adv) in err and "--restart" in err and f"delete {adv}" in err and "Traceback" not in err
    assert main(argv + ["--restart"]) == 0
    _same(json.loads(capsys.readouterr().out.splitlines()[-1]), clean)
    assert len(_aside(jsonl)) == 1 and _aside(adv)[0].read_bytes() == b"\x00" * 64


def test_move_aside_never_overwrites(tmp_path):
    path = tmp_path / "f.txt"
    names = []
    for text in ("a", "b"):
        path.write_text(text)
        names.append(move_aside(path))
    assert not path.exists() and names[0] != names[1] and [p.read_text() for p in names] == ["a", "b"]
    assert all(p.name.startswith("f.txt.damaged-") for p in names)


# --------------------------------------------------------------------------- ensemble state


@pytest.fixture(scope="module")
def ensemble_setup():
    cnn = load_classifier(checkpoint_path("digits_cnn"))
    x, y = load_dataset("digits", "test")
    suite = [(name, build_attack(name, cnn, eps=0.1, steps=2, seed=0)) for name in ("fgsm", "pgd")]
    return cnn, x[:16], y[:16], suite


def _ensemble(setup, state, **kw):
    cnn, x, y, suite = setup
    return run_ensemble(cnn, x, y, suite, chunk=8, state_path=state, progress=False, **kw)


def _equal_results(a, b) -> None:
    for key in ("x_adv", "robust", "clean_correct", "broken_by", "margin", "queries"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert a.queries_per_attack == b.queries_per_attack


@pytest.mark.parametrize(
    "case, match",
    [
        ("truncated", "cannot be read"),
        ("random bytes", "cannot be read"),
        ("wrong shape", r"'x_adv' is torch.float32 \(8, 1, 8, 8\), expected torch.float32 \(16, 1, 8, 8\)"),
        ("older code", "other code version"),
        ("next_chunk", "next_chunk is 7"),
        ("not a dict", "holds a list"),
    ],
)
def test_damaged_ensemble_state_is_refused_then_restart_matches_a_clean_run(ensemble_setup, tmp_path, case, match):
    state = tmp_path / "ens.state.pt"
    clean = _ensemble(ensemble_setup, state)
    if case == "truncated":
        state.write_bytes(state.read_bytes()[:-100])
    elif case == "random bytes":
        state.write_bytes(bytes(range(256)) * 4)
    elif case == "not a dict":
        torch.save([1, 2], state)
    else:
        saved = torch.load(state, weights_only=True)
        saved.update(
            {
                "wrong shape": {"x_adv": saved["x_adv"][:8]},
                "older code": {"code": "0.0.0+src.old"},
                "next_chunk": {"next_chunk": 7},
            }[case]
        )
        torch.save(saved, state)
    damaged = state.read_bytes()
    with pytest.raises(StoredStateError, match=match) as info:
        _ensemble(ensemble_setup, state)
    _assert_names_file_and_ways_out(info.value, state, "restart=True")
    _equal_results(_ensemble(ensemble_setup, state, restart=True), clean)
    (kept,) = _aside(state)
    assert kept.read_bytes() == damaged


# --------------------------------------------------------------------------- training state


def _train_cfg(**kw) -> TrainConfig:
    return TrainConfig(backbone=dict(TINY_BACKBONE), steps=2, batch_size=8, warmup=1, checkpoint_every=1, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny training run: (weights, state)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("train") / "d.safetensors"
    train_denoiser(_train_cfg(), out, progress=False)
    return out, out.with_name(out.name + ".state.pt")


@pytest.mark.parametrize(
    "case, match",
    [
        ("truncated", "cannot be read"),
        ("random bytes", "cannot be read"),
        ("wrong shape", "do not fit this model"),
        ("step", r"its step is 9, expected an int in \[0, 2\]"),
        ("other config", "different training config"),
        ("no rng", "entry 'rng' is missing"),
    ],
)
def test_damaged_training_state_is_refused(trained, tmp_path, case, match):
    _, ref_state = trained
    out = tmp_path / "d.safetensors"
    state = out.with_name(out.name + ".state.pt")
    shutil.copy(ref_state, state)
    cfg = _train_cfg(lr=1e-3) if case == "other config" else _train_cfg()
    if case == "truncated":
        state.write_bytes(state.read_bytes()[:-200])
    elif case == "random bytes":
        state.write_bytes(bytes(range(256)) * 8)
    else:
        saved = torch.load(state, weights_only=True)
        if case == "wrong shape":
            name = next(iter(saved["model"]))
            saved["model"][name] = torch.zeros(3, 3)
        elif case == "step":
            saved["step"] = 9
        elif case == "no rng":
            del saved["rng"]
        torch.save(saved, state)
    with pytest.raises(StoredStateError, match=match) as info:
        train_denoiser(cfg, out, progress=False)
    _assert_names_file_and_ways_out(info.value, state, "--restart")


def test_training_restart_after_damage_matches_a_clean_run(trained, tmp_path, capsys):
    ref, _ = trained
    out = tmp_path / "d.safetensors"
    state = out.with_name(out.name + ".state.pt")
    state.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(StoredStateError):
        train_denoiser(_train_cfg(), out, progress=False)
    train_denoiser(_train_cfg(), out, progress=False, restart=True)
    a, b = read_checkpoint(ref)[0], read_checkpoint(out)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    (kept,) = _aside(state)
    assert kept.read_bytes() == b"PK\x03\x04 cut short"
    # the CLI: a clear one-line error and exit code 2, then --restart
    argv = ["train", "--steps", "2", "--batch-size", "8", "--model-channels", "8", "--out", str(out)]
    state.write_bytes(b"garbage")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(state) in err and "--restart" in err and "Traceback" not in err
    assert main(argv + ["--restart"]) == 0 and len(_aside(state)) == 2
    # --no-resume still ignores the damaged file (and overwrites it, as before)
    state.write_bytes(b"garbage")
    assert main(argv + ["--no-resume"]) == 0 and torch.load(state, weights_only=True)["step"] == 2


# --------------------------------------------------------------------------- sweep store and cells


def _tiny_spec(tmp_path: Path, body: str = "function: sweep_targets:tiny_cell\ngrid:\n  x: [1, 2]\n"):
    return parse_sweep(f"name: t\n{body}", source="t.yaml", base_dir=tmp_path)


def _write_store(path: Path, n: int = 40) -> None:
    with ResultStore(path) as store:
        for i in range(n):
            store.record(
                CellRecord(
                    key=f"k{i}",
                    sweep="t",
                    target="function:x",
                    params={"x": i, "pad": "p" * 200},
                    status="done",
                    code_version="c",
                    checkpoints={},
                    finished=f"t{i}",
                    result={"v": i},
                )
            )


@pytest.mark.parametrize(
    "case, match",
    [
        ("random bytes", "not a readable SQLite database"),
        ("truncated", "SQLite finds it damaged|not a readable"),
        ("foreign", "without the tables of an rdc sweep store"),
        ("bad json", "holds text that is not JSON"),
    ],
)
def test_damaged_store_is_refused_then_restart_store_starts_afresh(tmp_path, case, match, capsys):
    spec = _tiny_spec(tmp_path)
    store = spec.store
    store.parent.mkdir(parents=True)
    if case == "random bytes":
        store.write_bytes(bytes(range(256)) * 64)
    elif case == "truncated":
        _write_store(store)
        store.write_bytes(store.read_bytes()[: 4096 * 3])
    elif case == "foreign":
        with sqlite3.connect(store) as conn:
            conn.execute("CREATE TABLE other (a)")
        conn.close()
    else:
        _write_store(store, 2)
        with sqlite3.connect(store) as conn:
            conn.execute("UPDATE cells SET params = '{cut' WHERE key = 'k1'")
        conn.close()
    damaged = store.read_bytes()

    def check(call) -> None:
        with pytest.raises(StoredStateError, match=match) as info:
            call()
        _assert_names_file_and_ways_out(info.value, store, "--restart-store")

    if case == "bad json":
        check(lambda: ResultStore(store, readonly=True).rows())
    else:
        check(lambda: ResultStore(store, readonly=True))
        check(lambda: ResultStore(store))
        check(lambda: sweep_status(spec))
        sweep_file = tmp_path / "t.yaml"
        sweep_file.write_text(
            f"name: t\nfunction: sweep_targets:tiny_cell\ngrid:\n  x: [1, 2]\noutput: {spec.output}\n"
        )
        assert main(["sweep", str(sweep_file), "--status"]) == 2
        err = capsys.readouterr().err
        assert str(store) in err and "--restart-store" in err and "Traceback" not in err
    res = run_sweep(spec, workers=0, progress=False, restart_store=True)
    assert res.status.done == 2
    (kept,) = _aside(store)
    assert kept.read_bytes() == damaged


EVAL_SWEEP = (
    "function: eval\nparams: {attack: pgd, steps: 2, chunk: 4, run_checks: false}\nn: 8\ngrid:\n  defense: [cnn]\n"
)


def test_sweep_cell_with_damaged_records_fails_clearly_and_retry_failed_restarts_only_that_cell(tmp_path):
    spec = _tiny_spec(tmp_path, EVAL_SWEEP)
    first = run_sweep(spec, workers=0, progress=False, threads_per_cell=1)
    assert first.status.done == 1, [o.error for o in first.outcomes]
    (cell_dir,) = (spec.output / "cells").iterdir()
    (adv,) = (cell_dir / "records").glob("*.adv.safetensors")
    adv.write_bytes(b"\x01" * 100)
    move_aside(spec.store)  # the store is lost too, so the cell runs again and meets its damaged records
    second = run_sweep(spec, workers=0, progress=False, threads_per_cell=1)
    (outcome,) = second.outcomes
    assert outcome.status == "failed" and outcome.error.startswith("StoredStateError:")
    assert (
        str(adv) in outcome.error
        and "--retry-failed" in outcome.error
        and "Traceback" not in outcome.error.split("\n\n")[0]
    )
    third = run_sweep(spec, workers=0, progress=False, threads_per_cell=1, retry_failed=True)
    assert third.status.done == 1 and third.status.failed == 0
    _same(third.outcomes[0].result, first.outcomes[0].result)
    (kept,) = _aside(cell_dir)
    assert (kept / "records" / adv.name).read_bytes() == b"\x01" * 100


def test_retry_failed_keeps_the_folder_of_a_cell_that_failed_otherwise(tmp_path):
    marker = tmp_path / "fail"
    marker.touch()
    spec = _tiny_spec(
        tmp_path,
        f"function: sweep_targets:tiny_cell\nparams: {{fail_marker: '{marker}', fail_x: 1}}\ngrid:\n  x: [1]\n",
    )
    assert run_sweep(spec, workers=0, progress=False).status.failed == 1
    marker.unlink()
    assert run_sweep(spec, workers=0, progress=False, retry_failed=True).status.done == 1
    assert [p.name for p in (spec.output / "cells").iterdir() if ".damaged-" in p.name] == []


def test_a_notebook_cell_whose_results_file_is_not_json_fails_naming_it(tmp_path, monkeypatch):
    import papermill

    from rdc_lib.sweep.execute import RESULT_FILE, CellTask, execute_cell

    def fake_execute(notebook, out, parameters, **kw):
        Path(parameters["result_dir"], RESULT_FILE).write_text('{"robust_acc": 0.5')  # cut short

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    cell_dir = tmp_path / "cell"
    outcome = execute_cell(
        CellTask(key="k" * 64, kind="notebook", target=str(tmp_path / "nb.ipynb"), params={}, cell_dir=str(cell_dir))
    )
    assert outcome.status == "failed" and outcome.error.startswith("StoredStateError:")
    assert str(cell_dir / RESULT_FILE) in outcome.error and "--retry-failed" in outcome.error
