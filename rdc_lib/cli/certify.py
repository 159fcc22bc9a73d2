"""``rdc certify``: its flags (one per ``CertifyConfig`` field) and its handler.

``rdc certify ... --json`` prints, as its last line, one JSON object with ``certified`` / ``certified_acc`` per
radius, ``empirical``, ``abstain_rate``, ``draws_per_image``, ``seconds``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields

from ..core.paths import denoiser_flags_help

__all__ = ["add_certify_parser", "cmd_certify"]


def add_certify_parser(sub) -> None:
    """Add ``rdc certify`` and its flags to the ``sub`` parsers of ``rdc``."""
    from ..certify.runner import CertifyConfig  # kept as it was in cli/main.py, so the certify flag rename merges

    p = sub.add_parser(
        "certify",
        help="randomized-smoothing certification (Cohen et al.) of a smoothed classifier, "
        "with the empirical robust accuracy at the same l2 radii (pixel space)",
    )
    aliases = {"n_draws": "--n", "pixel_sigma": "--sigma", "draw_batch": "--batch"}  # the flags before issue 38
    for f in fields(CertifyConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "radii":
            p.add_argument(
                flag,
                dest=f.name,
                type=float,
                nargs="+",
                default=list(f.default),
                help="pixel-space l2 radii (images in [0, 1])",
            )
        else:
            typ = {"int": int, "float": float, "str": str}.get(str(f.type), str)
            p.add_argument(
                flag,
                *([aliases[f.name]] if f.name in aliases else []),
                dest=f.name,
                type=typ,
                default=f.default,
                help=denoiser_flags_help().get(f.name),
            )
    p.add_argument("--device", default="cpu")
    p.add_argument("--records", default=None, help="folder for per-image records (resumable)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (last line)")
    p.add_argument("--no-progress", action="store_true")


def cmd_certify(args) -> int:
    """``rdc certify``: certify, warn when inconsistent; print the result (``--json``: one JSON line)."""
    from ..certify.runner import CertifyConfig, run_certify  # as in cli/main.py, so the certify rename merges

    cfg = CertifyConfig.from_params({f.name: getattr(args, f.name) for f in fields(CertifyConfig)})
    result = run_certify(cfg, device=args.device, records_dir=args.records, progress=not args.no_progress)
    if result.get("consistent") is False:
        print(
            "WARNING: INCONSISTENT: certified accuracy above the empirical robust accuracy at some radius",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result))
    else:
        cert = ", ".join(f"r={r}: {100 * v:.1f}%" for r, v in result["certified_acc"].items())
        print(
            f"{cfg.label()}: certified {cert}; abstain {100 * result['abstain_rate']:.1f}% [{result['seconds']:.1f}s]"
        )
        if "empirical_acc" in result:
            emp = ", ".join(f"r={r}: {100 * v:.1f}%" for r, v in result["empirical_acc"].items())
            print(f"  empirical (attacked, EOT): {emp}")
    return 0
