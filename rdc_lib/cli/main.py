"""The ``rdc`` command line: train, evaluate, certify, import EDM checkpoints, run sweeps.

This is the only module that prints. ``rdc eval ... --json`` prints, as its last line, one JSON
object with at least ``defense, attack, n, clean_acc, robust_acc, norm, eps, seconds``;
``rdc certify ... --json`` one with ``certified`` / ``certified_acc`` per radius, ``empirical``,
``abstain_rate``, ``draws_per_image``, ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..core.choices import DATASETS, HEADS, SPLITS
from ..core.paths import denoiser_flags_help
from ..defenses.baselines import BASELINE_KINDS
from .train import add_train_parser

if TYPE_CHECKING:
    from ..evaluation.runner import EvalConfig
    from ..sweep import SlurmOptions


def _add_train_baseline(sub) -> None:
    p = sub.add_parser("train-baseline", help="train the digits CNN or PGD-adversarially-trained CNN")
    p.add_argument("--kind", required=True, choices=tuple(BASELINE_KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)


def _eval_choices() -> dict[str, tuple[str, ...]]:
    """The valid values of the choice fields of ``rdc eval``, read from the registries and rdc_lib.core.choices."""
    from ..core.choices import GRAD_MODES, GRID_KINDS, HEADS, NOISE_MODES, SPLITS, THREAT_NORMS
    from ..defenses import defense_names
    from ..evaluation.attacking import eval_attack_names

    return {"defense": defense_names(), "attack": eval_attack_names(), "norm": THREAT_NORMS, "heads": HEADS,
            "noise_mode": NOISE_MODES, "grad_mode": GRAD_MODES, "dataset": DATASETS, "grid": GRID_KINDS,
            "split": SPLITS}


FLAG_ALIASES = {"timesteps": "--T", "defense": "--defence"}  # rdc eval: field -> accepted second flag


def _add_eval(sub) -> None:
    from ..evaluation.runner import EvalConfig

    p = sub.add_parser("eval", help="evaluate a defense under an attack on the digits test split "
                                     "(--split val: the validation split)")
    choices = _eval_choices()
    # default None: the flags given on the command line are known, so a --preset can refuse a conflicting one
    for f in EvalConfig.flat_fields():
        flag = "--" + f.name.replace("_", "-")
        helptext = "; ".join(filter(None, (f"default {f.default!r}", denoiser_flags_help().get(f.name))))
        if f.name in choices:  # listed, not enforced by argparse: EvalConfig names the valid choices itself
            helptext += f"; one of: {', '.join(choices[f.name])}"
        typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
        if f.name == "eot":  # an int, or "auto": the gradient-variance rule (rdc_lib.evaluation.eot_rule)
            typ = _eot_flag
            helptext += "; or 'auto': the size the gradient-variance rule asks for on the first images"
        if f.name in FLAG_ALIASES:  # a second spelling users type (the British "defence", the paper's "T")
            p.add_argument(flag, FLAG_ALIASES[f.name], dest=f.name, type=typ, default=None, help=helptext)
        elif f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, default=None, type=lambda s: s.lower() in ("1", "true", "yes"),
                           help=helptext)
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=None, help=helptext)
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", default=None, help="folder for per-example records (resumable)")
    p.add_argument("--restart", action="store_true",
                   help="move this configuration's stored records aside (renamed, never deleted) and start afresh")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    p.add_argument("--no-progress", action="store_true")


def _eot_flag(text: str) -> int | str:
    """``--eot``: an int, or 'auto' (resolved by the gradient-variance rule before the evaluation)."""
    from ..evaluation.eot_rule import AUTO

    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eot takes an int >= 1 or {AUTO!r}, got {text!r}") from None


def _add_certify(sub) -> None:
    from ..certify.runner import CertifyConfig

    p = sub.add_parser("certify", help="randomized-smoothing certification (Cohen et al.) of a smoothed classifier, "
                                       "with the empirical robust accuracy at the same l2 radii (pixel space)")
    for f in fields(CertifyConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "radii":
            p.add_argument(flag, dest=f.name, type=float, nargs="+", default=list(f.default),
                           help="pixel-space l2 radii (images in [0, 1])")
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=typ, default=f.default, help=denoiser_flags_help().get(f.name))
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", default=None, help="folder for per-image records (resumable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    p.add_argument("--no-progress", action="store_true")


def _add_import_edm(sub) -> None:
    p = sub.add_parser("import-edm", help="convert an official EDM network pickle into a safe checkpoint")
    p.add_argument("src", help="official EDM .pkl file")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--heads", default="single", choices=HEADS)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--key", default="ema", help="which network of the pickle's dict to import")
    p.add_argument("--any-size", action="store_true", help="accept any DDPM++ size, not only the CIFAR-10 preset")


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="show the named presets; with --check, which files a preset still needs")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="list missing data/checkpoint files and where to put them")
    p.add_argument("--data-root", default=None)
    p.add_argument("--ckpt-dir", default="data/checkpoints")


# ------------------------------------------------------------- run-notebooks (rdc_lib.jobs.main_job)

def add_run_notebooks_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``rdc run-notebooks`` to the ``rdc`` parser's sub-commands; returns its parser."""
    p = subparsers.add_parser("run-notebooks", help="execute every notebook (papermill) into a run folder with a "
                                                    "summary table")
    p.add_argument("--out", default="runs/latest", metavar="DIR", help="run folder (default runs/latest)")
    p.add_argument("--params", default=None, metavar="FILE.yaml",
                   help="parameters file, e.g. notebooks/params/small.yaml (flat name: value; per_notebook overrides)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only these notebooks (stem, file name or NN prefix)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="one more parameter for every notebook that declares it (VALUE parsed as YAML)")
    p.add_argument("--notebooks-dir", default=None, metavar="DIR",
                   help="folder of the NN_*.ipynb notebooks (default: the repository's notebooks/)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' kernelspec)")
    p.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cli_run_notebooks(args: argparse.Namespace) -> int:
    """``rdc run-notebooks``: run, print the summary table and where the outputs are; last line JSON.

    Exit code 0 when every notebook succeeded, 1 when any failed, 2 for bad arguments.
    """
    import yaml

    from ..jobs.main_job import run_notebooks

    try:
        extra = {name: yaml.safe_load(value) for name, value in (args.parameter or [])}
        summary = run_notebooks(args.out, args.params, args.only, progress=not args.no_progress,
                                notebooks_dir=args.notebooks_dir, kernel_name=args.kernel,
                                cell_timeout=args.cell_timeout, parameters=extra)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rdc run-notebooks: error: {exc}", file=sys.stderr)
        return 2
    print(summary.markdown())
    out = Path(summary.run_dir)
    print(f"outputs: {out.resolve()} (summary: {out / 'summary.md'}, {out / 'summary.json'})")
    print(json.dumps({"run_dir": str(out), "summary": str(out / "summary.json"), "notebooks": len(summary.notebooks),
                      "failed": summary.failed}))
    return 0 if summary.ok else 1


# ------------------------------------------------------------------ sweep / report (rdc_lib.sweep)

def add_sweep_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` and ``report`` sub-commands to the ``rdc`` parser."""
    p = subparsers.add_parser("sweep", help="run a YAML sweep on Dask; resumes, records every cell in SQLite")
    p.add_argument("sweep_file", metavar="SWEEP.yaml")
    p.add_argument("--status", action="store_true", help="print done/failed/pending counts and exit")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed cells again (default: keep them); a cell that failed on damaged stored state "
                        "has its folder moved aside first")
    p.add_argument("--restart-store", action="store_true",
                   help="move the result store aside (renamed, never deleted) and start a fresh one")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per GPU, else min(4, cpus); 0 = no Dask)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="use a running Dask scheduler")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads per cell")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true", help="write the report next to the store when done")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="eval sweeps: run the cells on this split instead of the file's (a selection sweep reads "
                        "'val'; --split test reads test images, into <name>_test)")
    s = p.add_argument_group("Slurm (dask-jobqueue)")
    s.add_argument("--slurm", action="store_true", help="run the workers as Slurm jobs")
    s.add_argument("--slurm-jobs", type=int, default=1, help="worker jobs (one single-threaded worker each)")
    s.add_argument("--slurm-partition", default=None)
    s.add_argument("--slurm-account", default=None)
    s.add_argument("--slurm-cores", type=int, default=4, help="--cpus-per-task of each job")
    s.add_argument("--slurm-memory", default="16GB")
    s.add_argument("--slurm-walltime", default="01:00:00")
    s.add_argument("--slurm-gpus", type=int, default=1, help="--gres=gpu:N per job (0 for CPU jobs)")
    s.add_argument("--slurm-directive", action="append", default=[], help="extra #SBATCH line (repeatable)")
    s.add_argument("--slurm-prologue", action="append", default=[],
                   help="shell line run before the worker, e.g. 'source .venv/bin/activate' (repeatable)")
    s.add_argument("--slurm-log-dir", default=None)

    r = subparsers.add_parser("report", help="tables and plots (report.md, report.html, cells.csv) of a sweep store")
    r.add_argument("store", metavar="STORE", help="the sweep's results.sqlite")
    r.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    r.add_argument("--x", default="eps", help="x axis parameter")
    r.add_argument("--y", default="robust_acc", help="y axis result field")
    r.add_argument("--sweep", default=None, help="only rows of this sweep name")


def run_sweep_command(args: argparse.Namespace) -> int:
    """Dispatch ``rdc sweep`` / ``rdc report``; returns the exit code (1: failed cells, 2: bad input)."""
    from ..sweep import SweepSpecError

    try:
        if args.command == "report":
            return cli_report(args)
        return cli_sweep(args)
    except (SweepSpecError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _slurm_options(args: argparse.Namespace) -> "SlurmOptions | None":
    from ..sweep import SlurmOptions

    if not args.slurm:
        return None
    return SlurmOptions(jobs=args.slurm_jobs, partition=args.slurm_partition, account=args.slurm_account,
                        cores=args.slurm_cores, memory=args.slurm_memory, walltime=args.slurm_walltime,
                        gpus=args.slurm_gpus, directives=tuple(args.slurm_directive),
                        prologue=tuple(args.slurm_prologue), log_directory=args.slurm_log_dir)


def cli_sweep(args: argparse.Namespace) -> int:
    """``rdc sweep``: validate, then print the status or run; the last line is the status as JSON."""
    from ..sweep import load_sweep, run_sweep, sweep_status, write_report

    spec = load_sweep(args.sweep_file)
    if args.split is not None:
        from ..experiments.selection import with_split

        spec = with_split(spec, args.split)
    if args.status:
        status = sweep_status(spec)
        for key in status.failed_keys:
            print(f"failed: {key[:12]}")
        print(json.dumps({"sweep": spec.name, "store": str(spec.store), **status.as_dict()}))
        return 0
    res = run_sweep(spec, workers=args.workers, scheduler_address=args.scheduler, slurm=_slurm_options(args),
                    retry_failed=args.retry_failed, threads_per_cell=args.threads, progress=not args.no_progress,
                    restart_store=args.restart_store)
    if args.report:
        rep = write_report(spec.store, sweep=spec.name)
        print(f"report: {rep.markdown} {rep.html}")
    print(json.dumps({"sweep": spec.name, "store": str(spec.store), "ran": res.ran, "skipped": res.skipped,
                      "seconds": round(res.seconds, 1), **res.status.as_dict()}))
    return 1 if res.status.failed else 0


def cli_report(args: argparse.Namespace) -> int:
    """``rdc report``: write the report files; the last line lists them as JSON."""
    from ..sweep import write_report

    rep = write_report(args.store, args.out, x=args.x, y=args.y, sweep=args.sweep)
    print(json.dumps({"markdown": str(rep.markdown), "html": str(rep.html), "csv": str(rep.cells_csv),
                      "done": rep.done, "failed": rep.failed, "untrusted": rep.untrusted}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdc", description="Robust Diffusion Classifier research companion")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    _add_train_baseline(sub)
    _add_eval(sub)
    _add_certify(sub)
    _add_import_edm(sub)
    _add_presets(sub)
    add_run_notebooks_arguments(sub)
    add_sweep_arguments(sub)
    return parser


def _cmd_train(args) -> int:
    from ..recipe import recipe_command
    from ..train import train_denoiser
    from .train import train_config_from_args

    if args.recipe:
        def on_stage(plan, status: str) -> None:
            print(f"stage {plan.stage.name}: {'done, skipped' if status == 'skip' else 'training'} -> {plan.out} "
                  f"(recipe hash {plan.hash})", flush=True)

        for summary in recipe_command(args, on_stage):
            print(json.dumps(summary), flush=True)
        return 0
    if args.out is None or args.out_dir is not None:
        raise ValueError("rdc train needs --out FILE (or --recipe FILE, with --out-dir DIR)")
    cfg = train_config_from_args(args)
    summary = train_denoiser(cfg, args.out, device=args.device, resume=not args.no_resume, restart=args.restart)
    print(json.dumps(summary))
    return 0


def _cmd_train_baseline(args) -> int:
    from ..defenses.baselines import train_baseline_kind

    torch.set_num_threads(args.threads)  # 1 thread reproduces the shipped files bit for bit
    print(json.dumps(train_baseline_kind(args.kind, args.out, seed=args.seed)))
    return 0


def eval_config(args: argparse.Namespace) -> "EvalConfig":
    """The ``EvalConfig`` of parsed ``rdc eval`` flags; with a preset, the attack flags and the image count not
    given take the preset's values (``rdc_lib.defenses.presets.eval_defaults``) and a flag the preset fixes is refused."""
    from ..evaluation.runner import EvalConfig

    given = {f.name: getattr(args, f.name) for f in EvalConfig.flat_fields() if getattr(args, f.name) is not None}
    explicit = set(given)
    preset = given.get("preset") or ("cifar10-paper" if given.get("dataset") == "cifar10" else "")
    if preset:
        from ..defenses.presets import eval_defaults

        for name, value in eval_defaults(preset, given.get("norm", "linf"), given.get("attack", "")).items():
            given.setdefault(name, value)
    return EvalConfig.from_params(given, explicit=explicit)


def _cmd_eval(args) -> int:
    from ..attacks.registry import protocol_label
    from ..evaluation.checks import failed_checks, trust_label
    from ..evaluation.eot_rule import AUTO, resolve_auto_eot
    from ..evaluation.provenance import eval_provenance
    from ..evaluation.runner import evaluate

    auto = args.eot == AUTO
    if auto:
        args.eot = None
    cfg = eval_config(args)
    model, rule = None, None
    if auto:
        cfg, model, rule = resolve_auto_eot(cfg, args.device)
    result = evaluate(cfg, device=args.device, records_dir=args.records, progress=not args.no_progress,
                      restart=args.restart, model=model)
    if rule is not None:
        result["eot_rule"] = rule
    result["provenance"] = eval_provenance(cfg)
    if result["trusted"] is False:
        print(f"WARNING: UNTRUSTED robust accuracy: sanity checks failed: {'; '.join(failed_checks(result['checks']))}",
              file=sys.stderr)
    elif result["trusted"] is None and cfg.attack != "none":
        print(f"WARNING: robust accuracy not checked ({result['checks_skipped'].get('all', '')})", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        label = "" if cfg.attack == "none" else f" [{protocol_label(cfg.attack, result.get('attacks_dropped', {}))}]"
        print(f"{cfg.defense} / {cfg.attack}{label} ({cfg.norm}, eps={cfg.eps}): clean {100 * result['clean_acc']:.1f}%, "
              f"robust {100 * result['robust_acc']:.1f}%, checks {trust_label(result['trusted'])} "
              f"[{result['seconds']:.1f}s]")
    return 0


def _cmd_certify(args) -> int:
    from ..certify.runner import CertifyConfig, run_certify

    cfg = CertifyConfig.from_params({f.name: getattr(args, f.name) for f in fields(CertifyConfig)})
    result = run_certify(cfg, device=args.device, records_dir=args.records, progress=not args.no_progress)
    if result.get("consistent") is False:
        print("WARNING: INCONSISTENT: certified accuracy above the empirical robust accuracy at some radius",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        cert = ", ".join(f"r={r}: {100 * v:.1f}%" for r, v in result["certified_acc"].items())
        print(f"{cfg.label()}: certified {cert}; abstain {100 * result['abstain_rate']:.1f}% "
              f"[{result['seconds']:.1f}s]")
        if "empirical_acc" in result:
            emp = ", ".join(f"r={r}: {100 * v:.1f}%" for r, v in result["empirical_acc"].items())
            print(f"  empirical (attacked, EOT): {emp}")
    return 0


def _cmd_import_edm(args) -> int:
    from ..models.edm_import import import_edm_pickle

    kwargs = {"heads": args.heads, "num_classes": args.num_classes, "key": args.key}
    if args.any_size:
        kwargs["expected"] = None
    out = import_edm_pickle(args.src, args.out, **kwargs)
    print(json.dumps({"out": str(out)}))
    return 0


def _cmd_presets(args) -> int:
    from ..defenses.presets import get_preset, preset_names, required_files

    names = [args.name] if args.name else preset_names()
    for name in names:
        preset = get_preset(name)
        if args.check:
            need = required_files(preset, args.data_root, args.ckpt_dir)
            print(need.message)
            if not need.ok:
                return 1
        else:
            print(json.dumps(preset.to_dict(), indent=2))
    return 0


COMMANDS = {"train": _cmd_train, "train-baseline": _cmd_train_baseline, "eval": _cmd_eval, "certify": _cmd_certify,
            "import-edm": _cmd_import_edm, "presets": _cmd_presets}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        if args.command == "run-notebooks":
            return cli_run_notebooks(args)
        return run_sweep_command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rdc {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
