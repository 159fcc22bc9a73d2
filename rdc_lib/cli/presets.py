"""``rdc presets`` (the named presets and the files they still need) and ``rdc import-edm`` (EDM pickles)."""

from __future__ import annotations

import json

from ..core.choices import HEADS
from ..defenses.presets import get_preset, preset_names, required_files
from ..models.edm_import import import_edm_pickle

__all__ = ["add_import_edm_parser", "add_presets_parser", "cmd_import_edm", "cmd_presets"]


def add_import_edm_parser(sub) -> None:
    """Add ``rdc import-edm`` and its flags to the ``sub`` parsers of ``rdc``."""
    p = sub.add_parser("import-edm", help="convert an official EDM network pickle into a safe checkpoint")
    p.add_argument("src", help="official EDM .pkl file")
    p.add_argument("out", help="output .safetensors path")
    p.add_argument("--heads", default="single", choices=HEADS)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--key", default="ema", help="which network of the pickle's dict to import")
    p.add_argument("--any-size", action="store_true", help="accept any DDPM++ size, not only the CIFAR-10 preset")


def add_presets_parser(sub) -> None:
    """Add ``rdc presets`` and its flags to the ``sub`` parsers of ``rdc``."""
    p = sub.add_parser("presets", help="show the named presets; with --check, which files a preset still needs")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--check", action="store_true", help="list missing data/checkpoint files and where to put them")
    p.add_argument("--data-root", default=None)
    p.add_argument("--ckpt-dir", default="data/checkpoints")


def cmd_import_edm(args) -> int:
    """``rdc import-edm``: write the safe checkpoint; prints ``{"out": path}``."""
    kwargs = {"heads": args.heads, "num_classes": args.num_classes, "key": args.key}
    if args.any_size:
        kwargs["expected"] = None
    out = import_edm_pickle(args.src, args.out, **kwargs)
    print(json.dumps({"out": str(out)}))
    return 0


def cmd_presets(args) -> int:
    """``rdc presets``: print each preset as JSON, or with ``--check`` the files it lacks (exit code 1 if any)."""
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
