"""rdc_lib.evaluation.provenance: commit, dirty flag, checkpoint hashes, versions, command; and where rows carry it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from rdc_lib.core.paths import REPO_ROOT, checkpoint_path
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.provenance import (
    NOT_RECORDED,
    PROVENANCE_KEYS,
    command_line,
    describe,
    eval_provenance,
    file_sha256,
    git_state,
    provenance,
    relative_to_repo,
)

HAS_GIT = shutil.which("git") is not None


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    assert HAS_GIT, "git is needed to test the commit / dirty fields"
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_fields_and_checkpoint_hash(repo):
    ckpt = repo / "model.safetensors"
    ckpt.write_bytes(b"weights")
    prov = provenance([ckpt], argv=["python", str(repo / "script.py"), "--out", str(repo / "o.json")], root=repo)
    assert tuple(prov) == PROVENANCE_KEYS
    assert prov["checkpoints"] == {"model.safetensors": hashlib.sha256(b"weights").hexdigest()}
    assert prov["commit"] == _git(repo, "rev-parse", "HEAD")
    assert set(prov["versions"]) == {"python", "torch", "numpy", "rdc"}
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["command"] == "python script.py --out o.json"  # repository paths relative, never absolute
    assert prov["utc"].endswith("Z")
    json.dumps(prov)  # JSON-able


def test_dirty_flag_follows_the_working_tree(repo):
    assert git_state(repo)[1] is False
    (repo / "a.txt").write_text("two\n")  # a tracked file changed
    assert git_state(repo)[1] is True
    _git(repo, "commit", "-qam", "second")
    (repo / "untracked.log").write_text("run output\n")  # untracked files do not count
    commit, dirty = git_state(repo)
    assert dirty is False and commit == _git(repo, "rev-parse", "HEAD")


def test_outside_a_repository_commit_is_none(tmp_path):
    assert git_state(tmp_path) == (None, None)
    assert describe({"provenance": provenance(root=tmp_path, argv=["python"])}) == "commit unknown (no git checkout)"


def test_missing_checkpoint_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        provenance([tmp_path / "nope.safetensors"], root=tmp_path)


def test_hash_changes_with_content(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a")
    h1 = file_sha256(f)
    f.write_bytes(b"bb")
    assert file_sha256(f) != h1 == hashlib.sha256(b"a").hexdigest()


def test_command_line_relativises_repository_paths():
    argv = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "drivers" / "results_table.py"),
        "run",
        f"--records={REPO_ROOT / 'runs' / 'r'}",
        "/elsewhere/file",
    ]
    assert command_line(argv) == "python benchmarks/drivers/results_table.py run --records=runs/r /elsewhere/file"
    assert relative_to_repo("docs/raw") == "docs/raw"


def test_describe():
    assert describe({}) == NOT_RECORDED
    assert describe({"provenance": {"commit": "a845259bfc18", "dirty": True}}) == "commit a845259 (dirty)"
    assert describe({"provenance": {"commit": "a845259bfc18", "dirty": False}}) == "commit a845259"
    assert describe({"provenance": {"backfilled": "back-filled from X"}}) == "back-filled from X"


def test_eval_provenance_hashes_the_checkpoints_the_evaluation_reads():
    rdc = eval_provenance(EvalConfig(defense="rdc", attack="pgd", heads="multi", run_checks=True), argv=["rdc"])
    assert set(rdc["checkpoints"]) == {  # the default of multi + the transfer check's CNN
        "data/checkpoints/digits_film_multi_distill9_h16_long_adv.safetensors",
        "data/checkpoints/digits_cnn.safetensors",
    }
    assert rdc["checkpoints"]["data/checkpoints/digits_film_multi_distill9_h16_long_adv.safetensors"] == file_sha256(
        checkpoint_path("digits_film_multi_distill9_h16_long_adv")
    )
    clean = eval_provenance(EvalConfig(defense="dc", attack="none", heads="single"), argv=["rdc"])
    assert set(clean["checkpoints"]) == {"data/checkpoints/digits_film_single.safetensors"}
    named = eval_provenance(
        EvalConfig(defense="dc", attack="none", heads="single", denoiser="digits_single"), argv=["rdc"]
    )
    assert set(named["checkpoints"]) == {"data/checkpoints/digits_single.safetensors"}
    at = eval_provenance(EvalConfig(defense="at-cnn", attack="pgd", run_checks=False), argv=["rdc"])
    assert set(at["checkpoints"]) == {"data/checkpoints/digits_at_cnn.safetensors"}


def test_rdc_eval_json_carries_provenance(capsys):
    from rdc_lib.cli import main

    torch.set_num_threads(1)
    assert main(["eval", "--defense", "cnn", "--attack", "none", "--n", "4", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuple(result["provenance"]) == PROVENANCE_KEYS
    assert set(result["provenance"]["checkpoints"]) == {"data/checkpoints/digits_cnn.safetensors"}


def test_results_doc_shows_each_rows_provenance(tmp_path):
    from .conftest import load_benchmark

    rt = load_benchmark("results_table")
    rows = [json.loads(l) for l in (REPO_ROOT / "docs" / "raw" / "results.jsonl").read_text().splitlines() if l.strip()]
    rows[0]["provenance"] = {"commit": "0123456789abcdef", "dirty": True}
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rt.doc(Namespace(records=str(tmp_path), out=str(tmp_path / "r.md"), notes=""))
    text = (tmp_path / "r.md").read_text()
    assert f"| {rows[0]['defense']} | {rows[0]['norm']} | commit 0123456 (dirty) |" in text
    assert text.count(NOT_RECORDED) == len(rows) - 1


def test_a_not_recorded_marker_is_explicit_and_needs_a_note():
    from rdc_lib.evaluation.provenance import GIT_HISTORY, not_recorded, provenance_problem

    mark = not_recorded("measured before provenance existed", "0123456789abcdef")
    assert tuple(k for k in mark if k in PROVENANCE_KEYS) == PROVENANCE_KEYS
    assert mark["commit_source"] == GIT_HISTORY and mark["dirty"] == "not recorded"
    assert provenance_problem({"provenance": mark}) == ""
    assert describe({"provenance": mark}) == "commit 0123456 (git history; the rest not recorded)"
    assert describe({"provenance": not_recorded("old")}) == NOT_RECORDED
    with pytest.raises(ValueError, match="a note is required"):
        not_recorded("")
    assert "no provenance" in provenance_problem({"n": 1})
    assert (
        provenance_problem({"provenance": {"commit": "abc", "dirty": False}})
        == "provenance without checkpoints, versions, command, utc"
    )


def test_certify_provenance_hashes_the_denoiser_and_the_cnn_of_denoised_smoothing():
    from rdc_lib.certify.runner import CertifyConfig
    from rdc_lib.evaluation.provenance import certify_provenance

    den = certify_provenance(CertifyConfig(base="denoised", denoiser="digits_multi"), argv=["x"])
    assert set(den["checkpoints"]) == {
        "data/checkpoints/digits_multi.safetensors",
        "data/checkpoints/digits_cnn.safetensors",
    }
    noised = certify_provenance(CertifyConfig(base="noised-dc", denoiser="digits_multi"), argv=["x"])
    assert set(noised["checkpoints"]) == {"data/checkpoints/digits_multi.safetensors"}
