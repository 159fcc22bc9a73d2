"""The shipped default denoisers (rdc_lib.core.choices.DEFAULT_DENOISERS) and the legacy meaning of a stored
denoiser "":
one home for the mapping, every reader of `heads` follows it, stored configurations keep their meaning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rdc_lib.core.choices import DEFAULT_DENOISERS, HEADS, LEGACY_DENOISERS
from rdc_lib.core.paths import checkpoint_path, data_dir, default_denoiser, stored_denoiser_name

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mapping", [DEFAULT_DENOISERS, LEGACY_DENOISERS], ids=["default", "legacy"])
def test_every_mapped_name_is_a_shipped_checkpoint_of_its_heads(mapping):
    from rdc_lib.models.checkpoints import read_checkpoint

    assert set(mapping) == set(HEADS)
    for heads, name in mapping.items():
        path = data_dir() / "checkpoints" / f"{name}.safetensors"
        assert path.is_file(), f"{heads} -> {name}: no file {path}"
        _, config, _ = read_checkpoint(path, expected_kind="denoiser")
        assert config["heads"] == heads, f"{name} is a {config['heads']}-head denoiser, mapped to {heads}"


def test_a_missing_default_checkpoint_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("RDC_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="digits_film_single.safetensors is missing"):
        checkpoint_path(default_denoiser("single"))


def test_default_denoiser_and_bad_heads():
    assert default_denoiser("single") == "digits_film_single"
    assert default_denoiser("multi") == "digits_film_multi_distill9_h16_long_adv"
    with pytest.raises(ValueError, match="unknown heads 'triple'; valid choices: single, multi"):
        default_denoiser("triple")


def test_stored_denoiser_name_keeps_the_legacy_meaning():
    assert stored_denoiser_name({"heads": "multi", "denoiser": ""}) == "digits_multi"
    assert stored_denoiser_name({"heads": "single"}) == "digits_single"
    assert (
        stored_denoiser_name({"heads": "multi", "denoiser": "digits_film_multi_distill9"})
        == "digits_film_multi_distill9"
    )
    assert stored_denoiser_name({"heads": "single", "dataset": "cifar10", "denoiser": ""}) == ""
    with pytest.raises(ValueError, match="must name its heads"):
        stored_denoiser_name({"denoiser": ""})
    with pytest.raises(ValueError, match="unknown heads"):
        stored_denoiser_name({"heads": "both", "denoiser": ""})


@pytest.mark.parametrize("heads", HEADS)
def test_defenses_load_the_default_of_heads(heads):
    from rdc_lib.defenses import DefenseSpec
    from rdc_lib.defenses.registry import checkpoint_files
    from rdc_lib.evaluation import EvalConfig
    from rdc_lib.evaluation.runner import defense_spec

    want = checkpoint_path(DEFAULT_DENOISERS[heads])
    for name in ("dc", "rdc", "diffpure"):
        assert want in checkpoint_files(DefenseSpec(name=name, heads=heads))
        assert want in checkpoint_files(defense_spec(EvalConfig(defense=name, heads=heads)))
    legacy = EvalConfig(defense="dc", heads=heads, denoiser=LEGACY_DENOISERS[heads])
    assert checkpoint_files(defense_spec(legacy)) == [checkpoint_path(LEGACY_DENOISERS[heads])]


def test_configs_without_a_denoiser_stay_without_one():
    from rdc_lib.evaluation import EvalConfig

    assert EvalConfig(defense="cnn").denoiser == "" and "denoiser" not in EvalConfig(defense="cnn").identity()
    assert EvalConfig(defense="dc", dataset="cifar10").denoiser == ""


def test_eval_from_stored_names_the_legacy_denoiser():
    from rdc_lib.evaluation import EvalConfig

    assert EvalConfig.from_stored({"defense": "dc", "heads": "single", "denoiser": ""}).denoiser == "digits_single"
    assert EvalConfig.from_stored({"defense": "rdc"}).denoiser == "digits_multi"  # heads' old default: multi
    assert EvalConfig.from_stored({"defense": "cnn", "heads": "multi"}).denoiser == ""
    named = {"defense": "dc", "heads": "single", "denoiser": "digits_film_single"}
    assert EvalConfig.from_stored(named) == EvalConfig(**named)


def test_certify_config_names_its_denoiser():
    from rdc_lib.certify.runner import CertifyConfig

    cfg = CertifyConfig(base="noised-dc", heads="single")
    assert cfg.denoiser == "digits_film_single" and cfg.identity()["denoiser"] == "digits_film_single"
    assert "digits_film_single" in cfg.label()
    assert CertifyConfig(heads="multi").denoiser == "digits_film_multi_distill9_h16_long_adv"
    stored = {**CertifyConfig(heads="multi").identity(), "denoiser": "", "label": "denoised s=0.25"}
    old = CertifyConfig.from_stored(stored)
    assert old.denoiser == "digits_multi" and old.key() != CertifyConfig(heads="multi").key()


def test_certify_loads_the_named_denoiser(monkeypatch):
    import rdc_lib.models.checkpoints as ckpt
    from rdc_lib.certify.runner import CertifyConfig, build_smoothing_base

    loaded = []
    real = ckpt.load_denoiser
    monkeypatch.setattr(ckpt, "load_denoiser", lambda path, **kw: loaded.append(Path(path)) or real(path, **kw))
    build_smoothing_base(CertifyConfig(base="dc", heads="single", timesteps=2))
    build_smoothing_base(CertifyConfig(base="dc", heads="single", timesteps=2, denoiser="digits_single"))
    assert loaded == [checkpoint_path("digits_film_single"), checkpoint_path("digits_single")]


def _heads_to_checkpoint_literals(text: str) -> list[int]:
    """Lines of ``text`` (Python) that build a checkpoint name from heads (f"digits_{...heads...}")."""
    lines = []
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.JoinedStr)
            and node.values
            and isinstance(node.values[0], ast.Constant)
            and str(node.values[0].value).startswith("digits_")
            and any(isinstance(v, ast.FormattedValue) and "heads" in ast.unparse(v.value) for v in node.values)
        ):
            lines.append(node.lineno)
    return lines


def test_no_second_heads_to_checkpoint_mapping():
    """rdc_lib maps heads to a checkpoint only through DEFAULT_DENOISERS / LEGACY_DENOISERS."""
    assert _heads_to_checkpoint_literals('x = 1\nname = f"digits_{cfg.heads}"') == [2]  # the check can fail
    found = {
        str(p.relative_to(ROOT)): _heads_to_checkpoint_literals(p.read_text())
        for p in sorted((ROOT / "rdc_lib").rglob("*.py"))
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_sweep_report_keeps_legacy_and_new_default_cells_apart():
    """An old cell (denoiser "" = digits_multi) and a new one with the same params are different curves."""
    from rdc_lib.sweep.report import aggregate, cell_rows, group_keys
    from rdc_lib.sweep.store import CellRecord

    params = {"defense": "dc", "attack": "pgd", "norm": "linf", "eps": 0.1, "heads": "multi", "seed": 0}

    def record(key: str, denoiser: str, robust: float) -> CellRecord:
        result = {**params, "dataset": "digits", "denoiser": denoiser, "robust_acc": robust, "trusted": True}
        return CellRecord(
            key=key,
            sweep="s",
            target="function:rdc_lib.evaluation.runner:evaluate_params",
            params=params,
            status="done",
            code_version="c",
            checkpoints={},
            finished="t",
            result=result,
        )

    records = [record("a", "", 0.2), record("b", "digits_film_multi_distill9", 0.5)]
    rows = cell_rows(records)
    assert [r["denoiser"] for r in rows] == ["digits_multi", "digits_film_multi_distill9"]
    group = group_keys(records)
    assert "denoiser" in group
    agg = aggregate(rows, "eps", "robust_acc", group)
    assert sorted((a["denoiser"], a["robust_acc_mean"], a["seeds"]) for a in agg) == [
        ("digits_film_multi_distill9", 0.5, 1),
        ("digits_multi", 0.2, 1),
    ]
    cnn = CellRecord(
        key="c",
        sweep="s",
        target="t",
        params={**params, "defense": "cnn"},
        status="done",
        code_version="c",
        checkpoints={},
        finished="t",
        result={**params, "defense": "cnn", "dataset": "digits", "denoiser": "", "robust_acc": 0.1},
    )
    assert cell_rows([cnn])[0]["denoiser"] == "" and "denoiser" not in group_keys([records[1], cnn])


def test_a_digits_preset_keeps_its_own_checkpoint():
    """A preset fixes its checkpoint; the defaults of heads do not change what a preset means."""
    from rdc_lib.defenses.presets import get_preset
    from rdc_lib.evaluation import EvalConfig

    cfg = EvalConfig(defense="dc", preset="digits")
    assert cfg.denoiser == Path(get_preset("digits").checkpoints.classifier).stem == "digits_single"


@pytest.mark.parametrize("heads", HEADS)
def test_every_diffusion_defense_runs_on_the_defaults(heads):
    """dc, rdc (LM through the null label / head) and diffpure (unconditional head) on the default of heads."""
    import torch

    from rdc_lib.data import load_dataset
    from rdc_lib.defenses import DefenseSpec, build_defense

    x, _ = load_dataset("digits", "test")
    for name in ("dc", "rdc", "diffpure"):
        extra = {"timesteps": 2, "lm_steps": 1} if name == "rdc" else {"timesteps": 2} if name == "dc" else {}
        model = build_defense(DefenseSpec(name=name, heads=heads, noise_mode="fixed", **extra))
        with torch.no_grad():
            logits = model(x[:2])
        assert logits.shape == (2, 10) and torch.isfinite(logits).all(), name


def test_benchmarks_that_measure_digits_multi_find_their_stored_rows(tmp_path):
    """The five-defense table and docs/certified.md name digits_multi; their stored rows (denoiser "") are the same
    configurations, so a rerun skips / replaces them instead of measuring another network beside them."""
    import json
    from argparse import Namespace

    from rdc_lib.certify.runner import CertifyConfig
    from rdc_lib.evaluation import EvalConfig

    from .conftest import load_benchmark

    table = load_benchmark("results_table")
    rows = [json.loads(l) for l in (ROOT / "docs/raw/results.jsonl").read_text().splitlines() if l.strip()]
    assert {r.get("denoiser", "") for r in rows} == {""}  # stored before the denoiser was named
    done = {EvalConfig.from_stored(r).key() for r in rows}
    cells = table.cells(["cnn", "at-cnn", "diffpure", "dc", "rdc"], table.DEFAULTS)
    assert {c.denoiser for c in cells} == {"", "digits_multi"} and all(c.key() in done for c in cells)
    assert not any(c.key() in {r["key"] for r in rows} for c in cells if c.denoiser)  # the stored keys differ

    report = load_benchmark("certify_report")
    stored = [json.loads(l) for l in (ROOT / "docs/raw/certified.jsonl").read_text().splitlines() if l.strip()]
    args = Namespace(
        rows=None, n_images=100, n0=100, n=1000, alpha=0.001, seed=0, timesteps=4, attack_steps=10, attack_eot=1
    )
    configs = report._configs(args)
    assert {c.denoiser for c in configs} == {"digits_multi"}
    assert {c.key() for c in configs} <= {CertifyConfig.from_stored(r).key() for r in stored}
    raw = tmp_path / "certified.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in stored))
    report._write_row(raw, {"key": configs[0].key(), **configs[0].identity()})  # replaces, does not add
    assert len(raw.read_text().splitlines()) == len(stored)
