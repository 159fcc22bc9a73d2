"""``rdc eval``: its flags (one per ``EvalConfig`` field), the ``EvalConfig`` they make, and its handler.

``rdc eval ... --json`` prints, as its last line, one JSON object with at least ``defense, attack, n, clean_acc,
robust_acc, norm, eps, seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..attacks.registry import protocol_label
from ..core.choices import DATASETS, GRAD_MODES, GRID_KINDS, HEADS, NOISE_MODES, SPLITS, THREAT_NORMS
from ..core.paths import denoiser_flags_help
from ..defenses import defense_names
from ..defenses.presets import eval_defaults
from ..evaluation.attacking import eval_attack_names
from ..evaluation.checks import failed_checks, trust_label
from ..evaluation.eot_rule import AUTO, resolve_auto_eot
from ..evaluation.provenance import eval_provenance
from ..evaluation.runner import EvalConfig, evaluate

__all__ = ["FLAG_ALIASES", "add_eval_parser", "cmd_eval", "eval_config"]

# rdc eval: field -> a second accepted flag. --n-images is the glossary's name for the image count (docs/paper.md
# section 9); --n stays the primary spelling because records and every documented command use it.
FLAG_ALIASES = {"timesteps": "--T", "defense": "--defence", "n": "--n-images"}


def _eval_choices() -> dict[str, tuple[str, ...]]:
    """The valid values of the choice fields of ``rdc eval``, read from the registries and rdc_lib.core.choices."""
    return {
        "defense": defense_names(),
        "attack": eval_attack_names(),
        "norm": THREAT_NORMS,
        "heads": HEADS,
        "noise_mode": NOISE_MODES,
        "grad_mode": GRAD_MODES,
        "dataset": DATASETS,
        "grid": GRID_KINDS,
        "split": SPLITS,
    }


def add_eval_parser(sub) -> None:
    """Add ``rdc eval`` and its flags to the ``sub`` parsers of ``rdc``."""
    p = sub.add_parser(
        "eval", help="evaluate a defense under an attack on the digits test split (--split val: the validation split)"
    )
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
        if f.name in FLAG_ALIASES:  # a second spelling ("defence", the paper's "T", the glossary's n-images)
            p.add_argument(flag, FLAG_ALIASES[f.name], dest=f.name, type=typ, default=None, help=helptext)
        elif f.type in ("bool", bool):
            p.add_argument(
                flag, dest=f.name, default=None, type=lambda s: s.lower() in ("1", "true", "yes"), help=helptext
            )
        else:
            p.add_argument(flag, dest=f.name, type=typ, default=None, help=helptext)
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", default=None, help="folder for per-example records (resumable)")
    p.add_argument(
        "--restart",
        action="store_true",
        help="move this configuration's stored records aside (renamed, never deleted) and start afresh",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    p.add_argument("--no-progress", action="store_true")


def _eot_flag(text: str) -> int | str:
    """``--eot``: an int, or 'auto' (resolved by the gradient-variance rule before the evaluation)."""
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eot takes an int >= 1 or {AUTO!r}, got {text!r}") from None


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The ``EvalConfig`` of parsed ``rdc eval`` flags; with a preset, the attack flags and the image count not
    given take the preset's values (``rdc_lib.defenses.presets.eval_defaults``); a flag the preset fixes is
    refused."""
    given = {f.name: getattr(args, f.name) for f in EvalConfig.flat_fields() if getattr(args, f.name) is not None}
    explicit = set(given)
    preset = given.get("preset") or ("cifar10-paper" if given.get("dataset") == "cifar10" else "")
    if preset:
        for name, value in eval_defaults(preset, given.get("norm", "linf"), given.get("attack", "")).items():
            given.setdefault(name, value)
    return EvalConfig.from_params(given, explicit=explicit)


def cmd_eval(args) -> int:
    """``rdc eval``: evaluate, warn when untrusted or unchecked; print the result (``--json``: one JSON line)."""
    auto = args.eot == AUTO
    if auto:
        args.eot = None
    cfg = eval_config(args)
    model, rule = None, None
    if auto:
        cfg, model, rule = resolve_auto_eot(cfg, args.device)
    result = evaluate(
        cfg,
        device=args.device,
        records_dir=args.records,
        progress=not args.no_progress,
        restart=args.restart,
        model=model,
    )
    if rule is not None:
        result["eot_rule"] = rule
    result["provenance"] = eval_provenance(cfg)
    if result["trusted"] is False:
        print(
            f"WARNING: UNTRUSTED robust accuracy: sanity checks failed: {'; '.join(failed_checks(result['checks']))}",
            file=sys.stderr,
        )
    elif result["trusted"] is None and cfg.attack != "none":
        print(f"WARNING: robust accuracy not checked ({result['checks_skipped'].get('all', '')})", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        label = "" if cfg.attack == "none" else f" [{protocol_label(cfg.attack, result.get('attacks_dropped', {}))}]"
        print(
            f"{cfg.defense} / {cfg.attack}{label} ({cfg.norm}, eps={cfg.eps}): clean {100 * result['clean_acc']:.1f}%, "
            f"robust {100 * result['robust_acc']:.1f}%, checks {trust_label(result['trusted'])} "
            f"[{result['seconds']:.1f}s]"
        )
    return 0
