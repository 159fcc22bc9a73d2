"""Issue 15: distillation training, the FiLM architecture, training-flag validation, the denoiser study."""

import json

import pytest
import torch

from rdc_lib.cli import main as cli_main
from rdc_lib.diffusion.loss import edm_distill_loss, edm_loss
from rdc_lib.evaluation.runner import EvalConfig, resolve_denoiser
from rdc_lib.experiments.study import (
    FACTORS,
    check_study_checkpoint,
    class_gap_by_sigma,
    distance_to_optimal_by_sigma,
    load_study,
)
from rdc_lib.experiments.study_report import render_report
from rdc_lib.models import DenoiserConfig, build_denoiser, load_denoiser, read_checkpoint, save_denoiser
from rdc_lib.models.base import Denoiser
from rdc_lib.models.optimal import OptimalDenoiser
from rdc_lib.train import TrainConfig, train_denoiser

from .conftest import TINY_BACKBONE

TINY = dict(TINY_BACKBONE)


def _tiny(tmp_path, name: str, heads: str, **cfg_kw) -> str:
    """A tiny denoiser checkpoint trained for 2 steps."""
    out = tmp_path / f"{name}.safetensors"
    cfg = TrainConfig(heads=heads, backbone=dict(TINY), steps=2, batch_size=8, warmup=1, **cfg_kw)
    train_denoiser(cfg, out, progress=False)
    return str(out)


# ------------------------------------------------------------------ training flags


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lr=0.0), "lr must be > 0"),
        (dict(warmup=-1), "warmup must be >= 0"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(backbone={**TINY, "dropout": 1.2}), "dropout must be in"),
        (dict(distill_from="t.safetensors"), "multi-head student"),
        (dict(heads="multi", distill_from="t.safetensors", distill_classes=0), r"distill_classes must be in \[1, 9\]"),
        (dict(heads="multi", distill_from="t.safetensors", distill_classes=10), r"distill_classes must be in \[1, 9\]"),
        (dict(heads="multi", distill_from="t.safetensors", distill_weight=-1.0), "distill_weight must be >= 0"),
        (dict(P_std=0.0), "P_std finite and > 0"),
        (dict(P_mean=float("nan")), "P_mean must be finite"),
    ],
)
def test_training_flags_out_of_range_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_cli_train_reports_a_bad_flag_by_name(tmp_path, capsys):
    rc = cli_main(["train", "--label-dropout", "1.5", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "label_dropout must be in [0, 1), got 1.5" in capsys.readouterr().err
    rc = cli_main(["train", "--arch", "nope", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "unknown arch 'nope'" in capsys.readouterr().err


def test_cli_train_film_with_flags_writes_its_config(tmp_path):
    out = tmp_path / "film.safetensors"
    rc = cli_main(
        [
            "train",
            "--arch",
            "film",
            "--model-channels",
            "8",
            "--dropout",
            "0.2",
            "--label-dropout",
            "0.3",
            "--ema-decay",
            "0.99",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--p-mean",
            "0.5",
            "--p-std",
            "0.4",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    _, config, extra = read_checkpoint(out, expected_kind="denoiser")
    assert config["arch"] == "film" and config["backbone"] == {"model_channels": 8, "num_blocks": 1, "dropout": 0.2}
    tc = extra["train_config"]
    assert (tc["label_dropout"], tc["ema_decay"], tc["warmup"], tc["P_mean"], tc["P_std"]) == (0.3, 0.99, 1, 0.5, 0.4)


def test_cli_train_refuses_a_nonpositive_noise_spread(tmp_path, capsys):
    rc = cli_main(["train", "--p-std", "-1", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "P_std finite and > 0" in capsys.readouterr().err


# ------------------------------------------------------------------ distillation


def test_distillation_trains_wrong_class_heads_the_plain_loss_never_touches():
    torch.manual_seed(0)
    cfg = DenoiserConfig(heads="multi", backbone=dict(TINY, head_channels=4))
    student = build_denoiser(cfg)
    teacher = build_denoiser(DenoiserConfig(heads="single", backbone=dict(TINY))).eval()
    # a teacher whose output depends on the label, so that matching it is a non-trivial target
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    y = torch.zeros(6, dtype=torch.long)  # every example is class 0
    last = student.backbone.conv_out[-1]  # grouped conv: weight rows [4 * k, 4 * k + 4) belong to head k

    def head_grads(loss: torch.Tensor) -> list[float]:
        student.zero_grad()
        loss.mean().backward()
        return [float(last.weight.grad[k : k + 1].abs().sum()) for k in range(11)]

    plain = head_grads(edm_loss(student, x, y, generator=torch.Generator().manual_seed(0)))
    assert plain[0] > 0 and plain[10] > 0 and all(g == 0 for g in plain[1:10])  # heads 1..9 learn nothing here
    dist = head_grads(
        edm_distill_loss(student, teacher, x, y, generator=torch.Generator().manual_seed(0), wrong_classes=9)
    )
    assert all(g > 0 for g in dist)  # with the teacher every head is trained
    zero = head_grads(
        edm_distill_loss(
            student, teacher, x, y, generator=torch.Generator().manual_seed(0), wrong_classes=9, weight=0.0
        )
    )
    assert all(g == 0 for g in zero[1:10])


def test_distillation_refuses_wrong_students_and_teachers():
    multi = build_denoiser(DenoiserConfig(heads="multi", backbone=dict(TINY)))
    single = build_denoiser(DenoiserConfig(heads="single", backbone=dict(TINY)))
    five = build_denoiser(DenoiserConfig(heads="single", num_classes=5, backbone=dict(TINY)))
    x, y = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="multi-head student"):
        edm_distill_loss(single, single, x, y)
    with pytest.raises(ValueError, match="teacher has 5 classes"):
        edm_distill_loss(multi, five, x, y)
    with pytest.raises(ValueError, match="wrong_classes"):
        edm_distill_loss(multi, single, x, y, wrong_classes=10)


def test_distillation_training_end_to_end_and_teacher_shape_check(tmp_path):
    teacher = _tiny(tmp_path, "teacher", "single")
    out = _tiny(tmp_path, "student", "multi", distill_from=teacher, distill_classes=2)
    assert load_denoiser(out).heads == "multi"
    assert read_checkpoint(out)[2]["train_config"]["distill_from"] == teacher
    cfg16 = DenoiserConfig(arch="film", heads="single", img_resolution=16, backbone={"model_channels": 4})
    save_denoiser(tmp_path / "t16.safetensors", build_denoiser(cfg16), cfg16)
    with pytest.raises(ValueError, match=r"\(classes, channels, resolution\) = \(10, 1, 16\)"):
        _tiny(tmp_path, "bad", "multi", distill_from=str(tmp_path / "t16.safetensors"))


# ------------------------------------------------------------------ FiLM architecture


@pytest.mark.parametrize("heads", ["single", "multi"])
def test_film_denoiser_shapes_size_and_zero_init(heads):
    net = build_denoiser(DenoiserConfig(arch="film", heads=heads)).eval()
    n = sum(p.numel() for p in net.parameters())
    assert 150_000 < n < 260_000  # "~0.2M parameters"
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 2.0])
    assert net(x, sigma, torch.tensor([0, 4, 10])).shape == (3, 1, 8, 8)
    assert net.denoise_all(x, sigma).shape == (3, 10, 1, 8, 8)
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    assert torch.allclose(net(x, sigma, None), c_skip * x, atol=1e-6)  # zero-initialised output layer


def test_film_labels_change_the_output_after_training_signal():
    net = build_denoiser(DenoiserConfig(arch="film", heads="single", backbone={"model_channels": 8}))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, sigma = torch.randn(1, 1, 8, 8), torch.tensor([0.5])
    assert not torch.allclose(net(x, sigma, torch.tensor([1])), net(x, sigma, torch.tensor([2])))


def test_film_rejects_odd_resolution_and_bad_dropout():
    with pytest.raises(ValueError, match="even resolution"):
        build_denoiser(DenoiserConfig(arch="film", img_resolution=7))
    with pytest.raises(ValueError, match="dropout must be in"):
        build_denoiser(DenoiserConfig(arch="film", backbone={"dropout": 1.0}))


# ------------------------------------------------------------------ study measurements


class _LabelBlind(Denoiser):
    """Shrinks the input towards zero whatever the label: every class denoises equally well."""

    num_classes, img_channels, img_resolution = 10, 1, 8

    def forward(self, x, sigma, labels=None):
        s = self._sigma(sigma, x.shape[0], x).reshape(-1, 1, 1, 1)
        return x * 0.25 / (0.25 + s**2)


def test_class_gap_is_zero_for_a_label_blind_denoiser_and_positive_for_the_optimal_one(digits_small):
    x_tr, y_tr, x_te, y_te = digits_small
    sig = (0.2, 0.8)
    blind = class_gap_by_sigma(_LabelBlind(), x_te, y_te, sig, torch.Generator().manual_seed(0))
    assert torch.allclose(blind, torch.zeros(2), atol=1e-7)
    opt = OptimalDenoiser(x_tr, y_tr)
    gap = class_gap_by_sigma(opt, x_te, y_te, sig, torch.Generator().manual_seed(0))
    assert (gap > 0.01).all()
    # a denoiser is at distance 0 from itself, and the label-blind one is far from the optimal one
    assert torch.allclose(distance_to_optimal_by_sigma(opt, opt, x_te, y_te, sig), torch.zeros(2), atol=1e-10)
    assert (distance_to_optimal_by_sigma(_LabelBlind(), opt, x_te, y_te, sig) > 0.01).all()


@pytest.fixture(scope="module")
def digits_small():
    from rdc_lib.data import load_dataset

    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    return x_tr[:300], y_tr[:300], x_te[:40], y_te[:40]


# ------------------------------------------------------------------ study config and checkpoints


def _entry(**kw):
    return {"name": "a", "checkpoint": "a.safetensors", "factor": "baseline", "command": "rdc train ...", **kw}


@pytest.mark.parametrize(
    "config, match",
    [
        ({"denoisers": [_entry(factor="colour")]}, "unknown factor 'colour'"),
        ({"denoisers": [_entry(), _entry(name="b", factor="widht")]}, "unknown factor 'widht'"),
        ({"denoisers": [_entry(size=3)]}, r"unknown keys \['size'\]"),
        ({"denoisers": [_entry(factor="width")]}, "needs one entry with factor 'baseline'"),
        ({"denoisers": [_entry(), _entry()]}, "duplicate"),
        ({"denoisers": [_entry(), _entry(name="b", factor="width", parent="c")]}, "parent 'c'"),
        ({"rows": []}, "exactly one key 'denoisers'"),
        ({"denoisers": [{"name": "a", "factor": "baseline"}]}, "missing keys"),
    ],
)
def test_study_config_errors_name_the_problem(config, match):
    with pytest.raises(ValueError, match=match):
        load_study(config)


def test_study_config_accepts_every_factor_and_the_shipped_config():
    from pathlib import Path

    import yaml

    rows = [_entry()] + [_entry(name=f, factor=f) for f in FACTORS if f != "baseline"]
    assert [e.factor for e in load_study({"denoisers": rows})] == list(FACTORS)
    shipped = Path(__file__).resolve().parents[1] / "benchmarks" / "drivers" / "denoiser_study.yaml"
    assert len(load_study(yaml.safe_load(shipped.read_text()))) >= 4


def test_study_checkpoint_of_the_wrong_kind_or_shape_is_refused(tmp_path):
    from rdc_lib.core.paths import checkpoint_path

    with pytest.raises(ValueError, match="holds a 'classifier' checkpoint, expected a 'denoiser'"):
        check_study_checkpoint(checkpoint_path("digits_cnn"))
    cfg = DenoiserConfig(arch="film", img_resolution=16, backbone={"model_channels": 4})
    save_denoiser(tmp_path / "r16.safetensors", build_denoiser(cfg), cfg)
    with pytest.raises(ValueError, match=r"= \(10, 1, 16\); the digits study needs \(10, 1, 8\)"):
        check_study_checkpoint(tmp_path / "r16.safetensors")
    ok = DenoiserConfig(arch="film", backbone={"model_channels": 4})
    save_denoiser(tmp_path / "ok.safetensors", build_denoiser(ok), ok)
    assert check_study_checkpoint(tmp_path / "ok.safetensors").img_resolution == 8


def _row(name, factor, robust=None):
    return {
        "name": name,
        "factor": factor,
        "parent": "",
        "note": "n",
        "command": f"rdc train --out {name}",
        "sigmas": [0.1, 0.2],
        "gap_test": [0.001, 0.05],
        "gap_train": [0.002, 0.06],
        "error_train": [0.01, 0.1],
        "error_test": [0.012, 0.11],
        "dist_optimal_test": [0.003, 0.02],
        "dc_clean_correct": 350,
        "dc_clean_total": 360,
        "params": 200_000,
        "passes_per_image": 16,
        "dc_seconds_per_image": 0.01,
        "timesteps": 16,
        "measure_seconds": 3.0,
        "robust": robust,
    }


def test_report_is_generated_from_rows_with_intervals_and_commands():
    from rdc_lib.evaluation.stats import wilson

    rob = wilson(52, 100).as_dict()
    rows = [_row("b", "width", rob), _row("a", "baseline"), _row("c", "dropout", wilson(1, 3).as_dict())]
    rows[0]["robust_flags"] = [True, False] + [True] * 50 + [False] * 48
    rows[2]["robust_flags"] = [True, True, False]
    text = render_report(rows, notes="## Analysis\n\nhand-written")
    assert text == render_report(list(reversed(rows)), notes="## Analysis\n\nhand-written")  # deterministic
    assert "52.0% (52/100, 42-62)" in text and "97.2% (350/360" in text
    assert "`rdc train --out b`" in text and text.rstrip().endswith("hand-written")
    assert text.index("| a | baseline") < text.index("| b | width")
    assert "same first 3 test images" in text and "| b | 66.7% (2/3," in text and "| c | 66.7% (2/3," in text
    assert "| b | width (a) |" in text  # differs from the baseline row
    with pytest.raises(ValueError, match="no study rows"):
        render_report([])


# ------------------------------------------------------------------ rdc eval --denoiser


def test_eval_config_denoiser_field(tmp_path):
    assert "denoiser" not in EvalConfig(defense="cnn").identity()  # no denoiser: old records keep their keys
    assert (
        EvalConfig().identity()["denoiser"] == "digits_film_multi_distill9_h16_long_adv"
    )  # the default of heads, named
    assert EvalConfig(denoiser="digits_multi_h32").identity()["denoiser"] == "digits_multi_h32"
    with pytest.raises(ValueError, match="defense 'cnn' has none"):
        EvalConfig(defense="cnn", denoiser="digits_multi")
    with pytest.raises(FileNotFoundError, match="denoiser checkpoint not found"):
        resolve_denoiser(str(tmp_path / "missing.safetensors"))
    assert resolve_denoiser("digits_multi_h32").name == "digits_multi_h32.safetensors"


# ------------------------------------------------------------------ shipped checkpoints


def test_every_checkpoint_in_data_readme_exists_and_matches_its_sha256():
    import hashlib
    import re
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "data"
    rows = re.findall(
        r"^\| `checkpoints/([\w.]+\.safetensors)` \|.*\| `([0-9a-f]{16})…` \|$",
        (data / "README.md").read_text(),
        flags=re.M,
    )
    names = {name for name, _ in rows}
    assert {
        "digits_single.safetensors",
        "digits_multi.safetensors",
        "digits_multi_h32_distill.safetensors",
        "digits_film_single.safetensors",
    } <= names
    for name, prefix in rows:
        digest = hashlib.sha256((data / "checkpoints" / name).read_bytes()).hexdigest()
        assert digest.startswith(prefix), f"{name}: sha256 {digest[:16]} does not match data/README.md ({prefix})"


def test_robust_flags_come_from_complete_records_only(tmp_path):
    from rdc_lib.evaluation import evaluate
    from rdc_lib.evaluation.records import records_paths
    from rdc_lib.experiments.study import robust_flags

    cfg = EvalConfig(defense="cnn", attack="pgd", steps=2, n_images=4, chunk=2, run_checks=False)
    res = evaluate(cfg, records_dir=tmp_path, progress=False)
    flags = robust_flags(cfg, tmp_path)
    assert len(flags) == 4 and sum(flags) == res["robust"]["correct"]
    jsonl, _ = records_paths(tmp_path, cfg)
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match="incomplete run"):
        robust_flags(cfg, tmp_path)


def test_docs_denoisers_md_is_generated_from_the_raw_rows():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = [json.loads(l) for l in (root / "docs/raw/denoiser_study.jsonl").read_text().splitlines() if l.strip()]
    notes = (root / "docs/denoisers_notes.md").read_text()
    text = (root / "docs/denoisers.md").read_text()
    # the study's tables first, then its figures and the candidates' headline rows (issue 39), then the notes;
    # tests/test_docs_generated.py compares the whole page byte for byte with its doc mode
    assert text.startswith(render_report(rows, "").rstrip("\n")), (
        "docs/denoisers.md is stale: run `benchmarks/drivers/denoiser_study.py doc`"
    )
    assert text.endswith(notes.rstrip() + "\n")


def test_distance_to_teacher_is_zero_for_the_teacher_itself_and_positive_for_a_student():
    from rdc_lib.core.paths import checkpoint_path
    from rdc_lib.data import load_dataset
    from rdc_lib.experiments.study import distance_to_teacher_by_sigma

    x, _ = load_dataset("digits", "test")
    teacher = load_denoiser(checkpoint_path("digits_film_single"))
    student = load_denoiser(checkpoint_path("digits_film_multi_distill9"))
    sigmas = [0.2, 0.8]
    same = distance_to_teacher_by_sigma(teacher, teacher, x[:6], sigmas, torch.Generator().manual_seed(0))
    assert same.shape == (2,) and torch.all(same == 0)
    dist = distance_to_teacher_by_sigma(student, teacher, x[:6], sigmas, torch.Generator().manual_seed(0), batch_size=4)
    assert torch.all(dist > 1e-5) and dist[1] > dist[0]  # larger noise, more left to the model
    five = build_denoiser(DenoiserConfig(heads="single", num_classes=5, backbone=dict(TINY)))
    with pytest.raises(ValueError, match="student has 10 classes, the teacher 5"):
        distance_to_teacher_by_sigma(student, five, x[:2], sigmas)
