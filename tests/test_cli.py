import json
import subprocess
import sys

import pytest

from rdc_lib.cli import main


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_eval_json_contract_dc():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rdc_lib.cli",
            "eval",
            "--defense",
            "dc",
            "--attack",
            "none",
            "--n",
            "8",
            "--seed",
            "0",
            "--timesteps",
            "4",
            "--heads",
            "multi",
            "--json",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = _last_json(proc.stdout)
    for key in ("defense", "attack", "n", "clean_acc", "robust_acc", "norm", "eps", "seconds", "checks"):
        assert key in res
    assert res["defense"] == "dc" and res["n"] == 8 and 0.5 <= res["clean_acc"] <= 1


def test_eval_json_contract_attack(capsys):
    assert (
        main(["eval", "--defense", "cnn", "--attack", "fgsm", "--n", "32", "--eps", "0.1", "--json", "--no-progress"])
        == 0
    )
    res = _last_json(capsys.readouterr().out)
    assert res["robust_acc"] <= res["clean_acc"] and res["norm"] == "linf" and res["eps"] == 0.1
    assert set(res["checks"]) >= {"gradients", "large_budget", "transfer"} or res["defense"] == "cnn"
    assert res["max_linf"] <= 0.1 + 1e-6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--defense", "svm"], "valid choices: cnn, at-cnn"),
        (["--attack", "cw"], "valid choices: none, fgsm"),
        (["--eps", "-0.1"], "eps must be >= 0"),
        (["--eps", "2", "--norm", "linf"], "l_inf eps above 1"),
        (["--norm", "l1"], "valid choices: linf, l2"),
        (["--n", "0"], "n must be >= 1"),
        (["--n-eval", "0"], "n_eval must be >= 1"),
        (["--eot", "0"], "eot must be >= 1"),
        (["--noise-mode", "chaotic"], "noise_mode"),
        (["--attack", "stadv"], "norm 'flow'"),
        (["--attack", "pgd-lagrange", "--defense", "cnn", "--n", "2"], "needs a diffusion defense"),
    ],
)
def test_eval_bad_input(args, message, capsys):
    assert main(["eval", *args, "--json", "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_cifar10_without_files_says_what_to_put_where(tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--dataset",
                "cifar10",
                "--defense",
                "dc",
                "--data-root",
                str(tmp_path),
                "--ckpt-dir",
                str(tmp_path),
                "--json",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "data_batch_1" in err and "test_batch" in err and "rdc import-edm" in err


def test_presets_command(capsys):
    assert main(["presets", "digits", "--check"]) == 0
    assert "all files present" in capsys.readouterr().out
    assert main(["presets", "nonexistent"]) == 2


def test_stadv_unseen_threat(capsys):
    assert (
        main(
            [
                "eval",
                "--defense",
                "cnn",
                "--attack",
                "stadv",
                "--norm",
                "flow",
                "--eps",
                "0.05",
                "--steps",
                "10",
                "--n",
                "32",
                "--json",
                "--no-progress",
            ]
        )
        == 0
    )
    res = _last_json(capsys.readouterr().out)
    assert res["robust_acc"] <= res["clean_acc"] and "large_budget" in res["checks"]


def test_eval_accepts_the_british_spelling_of_defense_and_the_papers_T():
    from rdc_lib.cli import build_parser

    args = build_parser().parse_args(["eval", "--defence", "cnn", "--T", "8"])
    assert (args.defense, args.timesteps) == ("cnn", 8)


def test_eval_takes_the_image_count_as_n_images_or_n():
    from rdc_lib.cli import build_parser, eval_config

    for flag in ("--n-images", "--n"):
        args = build_parser().parse_args(["eval", "--defense", "cnn", flag, "7"])
        assert eval_config(args).n_images == 7


def test_attack_none_is_accepted_with_every_dataset_preset(capsys):
    """Issue 38: `rdc eval --dataset cifar10 --attack none` failed with "unknown attack 'none'" (a list without
    'none') while the digits accepted it; now the preset only reads registry facts of registered attacks."""
    from rdc_lib.defenses.presets import PRESETS, attack_settings

    for name in PRESETS:
        assert attack_settings(name, "linf", "none")["steps"] >= 1
    assert main(["eval", "--dataset", "cifar10", "--defense", "dc", "--attack", "none"]) == 2
    err = capsys.readouterr().err
    assert "unknown attack" not in err and "data_root" in err
