"""Try to break a headline number with attacks written by someone else (torchattacks).

Reads the records of a finished ``rdc eval`` run (the headline of docs/results.md), rebuilds the same defense
from the configuration in the records' header, and attacks every image our ensemble left robust with
torchattacks' APGD-CE, APGD-DLR, APGD-T and Square (worst case per image). An image broken here was missed
by our ensemble: a finding against our number, not a new number (the outside attacks only see the survivors).

    .venv/bin/python benchmarks/drivers/crosscheck_torchattacks.py run RECORDS.jsonl --first 64 --steps 100
    .venv/bin/python benchmarks/drivers/crosscheck_torchattacks.py run RECORDS.jsonl --first 64 \\
        --out docs/raw/crosscheck.jsonl

torchattacks seeds the global torch RNG itself (its ``seed`` argument); this script is a benchmark, not
library code, and runs nothing else in the process that depends on that RNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rdc_lib.data import load_dataset
from rdc_lib.defenses import build_defense, get_defense
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.provenance import eval_provenance
from rdc_lib.evaluation.records import read_outcomes
from rdc_lib.evaluation.runner import defense_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.common
from benchmarks.common import append_row  # noqa: E402

TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}


def survivors(records: Path, first: int) -> tuple[EvalConfig, list[int]]:
    """(configuration, test-set indices our ensemble left robust among the first ``first`` records)."""
    try:
        head, robust = read_outcomes(records)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    cfg = EvalConfig.from_stored(head)  # a header stored with denoiser "" meant digits_<heads>
    if cfg.noise_mode != "fixed" and get_defense(cfg.defense).stochastic:
        raise SystemExit(
            f"{records}: noise_mode {cfg.noise_mode!r}; the cross-check needs a deterministic defense "
            "(noise_mode fixed) so that one call decides"
        )
    first_images = sorted(robust)[:first]
    if len(first_images) < first:
        raise SystemExit(f"{records}: only {len(first_images)} records, asked for the first {first}")
    return cfg, [i for i in first_images if robust[i]]


def outside_attacks(model: torch.nn.Module, cfg: EvalConfig, steps: int, queries: int) -> dict:
    import torchattacks

    norm = TORCHATTACKS_NORMS[cfg.norm]
    return {
        "apgd-ce": torchattacks.APGD(model, norm=norm, eps=cfg.eps, steps=steps, n_restarts=1, seed=0, loss="ce"),
        "apgd-dlr": torchattacks.APGD(model, norm=norm, eps=cfg.eps, steps=steps, n_restarts=1, seed=0, loss="dlr"),
        "apgd-t": torchattacks.APGDT(model, norm=norm, eps=cfg.eps, steps=steps, n_restarts=1, seed=0, n_classes=10),
        "square": torchattacks.Square(model, norm=norm, eps=cfg.eps, n_queries=queries, n_restarts=1, seed=0),
    }


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    cfg, idx = survivors(Path(args.records), args.first)
    x_all, y_all = load_dataset(cfg.dataset, "test")
    x, y = x_all[idx], y_all[idx]
    model = build_defense(defense_spec(cfg))
    t0 = time.perf_counter()
    robust = torch.ones(len(idx), dtype=torch.bool)
    broken_by = {}
    chosen = outside_attacks(model, cfg, args.steps, args.queries)
    unknown = sorted(set(args.attacks) - set(chosen))
    if unknown:
        raise SystemExit(f"unknown outside attack(s) {unknown}; valid: {', '.join(chosen)}")
    for name in args.attacks:
        attack = chosen[name]
        keep = robust.nonzero().flatten()
        if keep.numel() == 0:
            broken_by[name] = 0
            continue
        adv = attack(x[keep], y[keep])
        if cfg.norm == "linf":
            assert (adv - x[keep]).abs().max() <= cfg.eps + 1e-5, "torchattacks left the l_inf ball"
        with torch.no_grad():
            still = model(adv).argmax(1) == y[keep]
        broken_by[name] = int((~still).sum())
        robust[keep[~still]] = False
        print(f"{name}: broke {broken_by[name]} of {keep.numel()} survivors", flush=True)
    row = {
        "records": Path(args.records).name,
        "config": cfg.flat(),
        "first": args.first,
        "attacks": args.attacks,
        "survivors": len(idx),
        "still_robust": int(robust.sum()),
        "broken_by": broken_by,
        "steps": args.steps,
        "square_queries": args.queries,
        "seconds": time.perf_counter() - t0,
        "provenance": eval_provenance(cfg),
    }
    print(json.dumps(row), flush=True)
    if args.out:
        append_row(args.out, row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("records", help="the .jsonl records file of a finished `rdc eval --records DIR` run")
    r.add_argument("--first", type=int, default=64, help="cross-check the survivors among the first N images")
    r.add_argument("--steps", type=int, default=100, help="APGD iterations of the outside attacks")
    r.add_argument("--queries", type=int, default=1000, help="Square queries of the outside attack")
    r.add_argument(
        "--attacks",
        nargs="+",
        default=["apgd-ce", "apgd-dlr", "apgd-t", "square"],
        help="torchattacks attacks to run, in this order, each on the images the earlier ones left robust",
    )
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--out", default="", help="append the result row to this JSON-lines file")
    args = ap.parse_args()
    run(args)


if __name__ == "__main__":
    main()
