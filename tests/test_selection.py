"""Every choice is made on the validation split (rdc_lib.experiments.selection): no selection script or selection sweep
reads
test images by default, and the check that says so fails on one that does."""

from __future__ import annotations

import argparse
import inspect
import types
from pathlib import Path

import pytest
import torch

from rdc_lib.core.choices import SELECTION_SPLIT
from rdc_lib.data import load_dataset
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.experiments.selection import (
    SELECTION_SCRIPTS,
    SELECTION_SWEEPS,
    add_split_argument,
    with_split,
)
from rdc_lib.experiments.study import StudyEntry, robust_config
from rdc_lib.sweep import load_sweep, parse_sweep

from .conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def default_split(module, argv=("run",)) -> tuple[str, argparse.Namespace]:
    """The split a script's ``run`` receives from its command line with no flags (its ``run`` is not executed)."""
    seen: list[argparse.Namespace] = []
    original = module.run
    module.run = seen.append
    try:
        module.main(list(argv))
    finally:
        module.run = original
    assert len(seen) == 1, f"{module.__name__}: main did not call run once"
    return getattr(seen[0], "split", "test"), seen[0]


def sweep_split(path: str | Path) -> set[str]:
    """The splits the cells of a sweep file read (an eval cell without 'split' reads test images)."""
    return {cell.get("split", "test") for cell in load_sweep(path).cells()}


def test_registry_is_complete():
    assert all((ROOT / p).is_file() for p in [*SELECTION_SCRIPTS, *SELECTION_SWEEPS])
    using = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "benchmarks").rglob("*.py")
        if "add_split_argument" in p.read_text()
    }
    assert using == set(SELECTION_SCRIPTS), "a script with a selection --split is missing from the registry, or back"
    eta_sweeps = {f"examples/sweeps/{p.name}" for p in (ROOT / "examples/sweeps").glob("*eps_eta*.yaml")}
    assert eta_sweeps <= set(SELECTION_SWEEPS)


@pytest.mark.parametrize("script", sorted(SELECTION_SCRIPTS))
def test_selection_scripts_read_the_validation_split_by_default(script):
    module = load_benchmark(Path(script).stem)
    split, _ = default_split(module)
    assert split == SELECTION_SPLIT == "val", f"{script} reads {split!r} images by default"
    explicit, _ = default_split(module, ("run", "--split", "test"))
    assert explicit == "test"  # the test images only when asked for


def test_the_scripts_pass_the_split_on():
    """What each script builds from its default arguments reads the validation images."""
    gl = load_benchmark("grid_levels")
    _, args = default_split(gl)
    assert args.offset == 0  # the validation split's images 0..n-1 (test: 200..)
    cfg = gl.cell_config(
        "digits_film_single",
        "single",
        0.6,
        n=args.n,
        offset=args.offset,
        steps=args.steps,
        timesteps=args.timesteps,
        split=args.split,
    )
    assert cfg.split == "val" and cfg.offset + cfg.n_images <= 200
    assert default_split(gl, ("run", "--split", "test"))[1].offset == 200
    entry = StudyEntry(
        name="x",
        checkpoint="data/checkpoints/digits_film_single.safetensors",
        factor="baseline",
        command="rdc train",
        n_robust=20,
    )
    assert robust_config(entry, "single").split == "val"
    ds = load_benchmark("denoiser_study")
    _, args = default_split(ds)
    assert args.raw == "docs/raw/denoiser_study_val.jsonl"
    assert robust_config(entry, "single", split=args.split).split == "val"
    er = load_benchmark("evaluation_report")
    assert inspect.signature(er.eot_diagnostic).parameters["split"].default == "val"


def test_the_check_fails_on_a_script_that_reads_test_images_by_default():
    fake = types.ModuleType("fake_selection")

    def main(argv):
        ap = argparse.ArgumentParser()
        sub = ap.add_subparsers(dest="cmd")
        r = sub.add_parser("run")
        r.add_argument("--split", default="test")
        fake.run(ap.parse_args(argv))

    fake.main, fake.run = main, lambda args: None
    assert default_split(fake)[0] == "test"  # what the parametrised test above would reject
    good = types.ModuleType("good_selection")

    def good_main(argv):
        ap = argparse.ArgumentParser()
        add_split_argument(ap.add_subparsers(dest="cmd").add_parser("run"))
        good.run(ap.parse_args(argv))

    good.main, good.run = good_main, lambda args: None
    assert default_split(good)[0] == "val"


@pytest.mark.parametrize("path", sorted(SELECTION_SWEEPS))
def test_selection_sweeps_read_the_validation_split(path):
    assert sweep_split(ROOT / path) == {"val"}, f"{path} reads test images by default"
    spec = with_split(load_sweep(ROOT / path), "test")
    assert {c.get("split", "test") for c in spec.cells()} == {"test"} and spec.name.endswith("_test")
    assert spec.output != load_sweep(ROOT / path).output


def test_sweep_check_can_fail_and_split_override(tmp_path):
    text = "name: s\nfunction: eval\nparams: {defense: cnn}\ngrid: {eps: [0.1]}\nn: 2\n"
    (tmp_path / "s.yaml").write_text(text)
    assert sweep_split(tmp_path / "s.yaml") == {"test"}  # a sweep without split: flagged
    spec = parse_sweep(text, base_dir=tmp_path)
    val = with_split(spec, "val")
    assert {c["split"] for c in val.cells()} == {"val"} and val.store.parent.name == "s_val"
    assert with_split(spec, "test") is spec
    cert = parse_sweep(
        "name: c\nfunction: rdc_lib.certify.runner:certify_cell\ngrid: {n_images: [2]}\n", base_dir=tmp_path
    )
    with pytest.raises(ValueError, match="--split applies to eval sweeps"):
        with_split(cert, "val")


def test_eval_on_the_validation_split(tmp_path):
    assert "split" not in EvalConfig().identity()  # keys of configurations stored before the split are unchanged
    cfg = EvalConfig(defense="cnn", attack="none", n_images=3, offset=5, split="val")
    assert (
        cfg.identity()["split"] == "val"
        and cfg.key() != EvalConfig(defense="cnn", attack="none", n_images=3, offset=5).key()
    )
    res = evaluate(cfg, records_dir=tmp_path, progress=False)
    assert res["split"] == "val" and res["clean"]["total"] == 3
    x_val, _ = load_dataset("digits", "val")
    x_te, _ = load_dataset("digits", "test")
    assert not torch.equal(x_val[5:8], x_te[5:8])
    with pytest.raises(ValueError, match="unknown split 'validation'; valid choices: train, val, test"):
        EvalConfig(defense="cnn", split="validation")
    with pytest.raises(ValueError, match="exceeds the 200 val images"):
        evaluate(EvalConfig(defense="cnn", attack="none", n_images=10, offset=195, split="val"), progress=False)


def test_rdc_sweep_split_flag(tmp_path, capsys):
    from rdc_lib.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nfunction: eval\nparams: {defense: cnn, split: val}\ngrid: {eps: [0.1]}\nn: 2\n")
    assert main(["sweep", str(path), "--status"]) == 0
    assert '"sweep": "s"' in capsys.readouterr().out
    assert main(["sweep", str(path), "--status", "--split", "test"]) == 0
    assert '"sweep": "s_test"' in capsys.readouterr().out
