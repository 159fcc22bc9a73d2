"""Every choice is made on the validation split: the registry of the scripts and sweeps that choose something.

A selection script (the denoiser study, the grid levels, the EOT diagnostic of the evaluation report) or an
(eps, eta) sweep reads ``SELECTION_SPLIT`` ("val": ``load_dataset(name, "val")``, a fixed stratified subset of
the training split) unless told ``--split test`` explicitly, e.g. to reproduce a row measured before the
validation split existed. tests/test_selection.py fails when one of them reads the test images by default.
The shipped denoisers were trained on the full training split (data/README.md): for them the validation images
are held out from the choices only, not from the weights; ``rdc train --exclude-val`` holds them out from both.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from types import MappingProxyType

from ..core.choices import SELECTION_SPLIT

__all__ = ["SELECTION_SCRIPTS", "SELECTION_SPLITS", "SELECTION_SWEEPS", "add_split_argument", "with_split"]

# script (from the repository root) -> what it chooses
SELECTION_SCRIPTS = MappingProxyType(
    {
        "benchmarks/drivers/denoiser_study.py": "the denoiser of each kind (its robust column ranks the candidates)",
        "benchmarks/drivers/grid_levels.py": "the diffusion classifier grid's smallest level sigma_min",
        "benchmarks/drivers/evaluation_report.py": (
            "the EOT size of the strongest protocol (the gradient-cosine diagnostic)"
        ),
    }
)
# sweep file -> what it chooses
SELECTION_SWEEPS = MappingProxyType(
    {
        "examples/sweeps/digits_rdc_eps_eta.yaml": "RDC's LM ball eta on the single-head default",
        "examples/sweeps/digits_rdc_multi_eps_eta.yaml": "RDC's LM ball eta on the previous multi-head default",
        "examples/sweeps/digits_rdc_multi_h16_long_adv_eps_eta.yaml": "RDC's LM ball eta on the multi-head default",
    }
)
SELECTION_SPLITS = (SELECTION_SPLIT, "test")  # what --split of a selection script accepts


def add_split_argument(parser: argparse.ArgumentParser) -> None:
    """``--split`` of a selection script: the validation images by default, the test images only when asked."""
    parser.add_argument(
        "--split",
        default=SELECTION_SPLIT,
        choices=SELECTION_SPLITS,
        help=f"images the choice is made on (default {SELECTION_SPLIT!r}: the validation split, "
        "rdc_lib.experiments.selection); 'test' reads test images, e.g. to reproduce a row measured before "
        "the validation split",
    )


def with_split(spec, split: str):
    """An eval sweep ``spec`` (rdc_lib.sweep.SweepSpec) on ``split``. A split other than the file's gets its own
    name, output folder and store (``<name>_<split>``), so the two never mix in one report; "test" is the
    evaluation's default and is left out of the cells' parameters (as in files written before the split)."""
    if spec.target_kind != "function" or spec.target != "eval":
        raise ValueError(f"--split applies to eval sweeps; {spec.source} runs {spec.target!r}")
    current = spec.fixed.get("split", "test")
    if split == current:
        return spec
    fixed = {k: v for k, v in spec.fixed.items() if k != "split"}
    if split != "test":
        fixed["split"] = split
    output = spec.output.with_name(f"{spec.output.name}_{split}")
    store = (
        output / spec.store.name
        if spec.store.parent == spec.output
        else spec.store.with_name(f"{spec.store.stem}_{split}{spec.store.suffix}")
    )
    return replace(spec, name=f"{spec.name}_{split}", fixed=fixed, output=output, store=store)
