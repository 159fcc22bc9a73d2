"""The controlled denoiser study (docs/denoisers.md): which denoiser makes the diffusion classifier robust.

    .venv/bin/python benchmarks/drivers/denoiser_study.py run [--only NAME ...]
        [--config benchmarks/drivers/denoiser_study.yaml] [--split val|test]
    .venv/bin/python benchmarks/drivers/denoiser_study.py doc [--raw docs/raw/denoiser_study.jsonl]

``run`` measures every denoiser of the study config that has no row yet in docs/raw/denoiser_study.jsonl
(per-sigma errors and class gaps, distance to the optimal denoiser, DC clean accuracy, robust accuracy under the
fixed-noise AutoAttack-style ensemble) and appends its row. It is resumable: finished rows are skipped (a row is
redone when its checkpoint file changed), and the robust column keeps per-example records under --records, so an
interrupted evaluation continues where it stopped. The robust column, which ranks the denoisers, reads the first
``n_robust`` images of the validation split (rdc_lib.experiments.selection; rows in docs/raw/denoiser_study_val.jsonl);
``--split test`` reads test images (docs/raw/denoiser_study.jsonl: the rows measured before the validation split).
The clean columns (errors, class gaps, DC clean accuracy) describe generalisation on the test images whatever the
split. ``doc`` writes docs/denoisers.md from the raw rows only, with
docs/denoisers_notes.md (the hand-written analysis) appended verbatim.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

from rdc_lib.evaluation import evaluate
from rdc_lib.evaluation.provenance import file_sha256, provenance
from rdc_lib.experiments.selection import add_split_argument
from rdc_lib.experiments.study import (
    check_study_checkpoint,
    entry_dict,
    eval_command,
    load_study,
    measure_denoiser,
    robust_config,
    robust_flags,
)
from rdc_lib.experiments.study_report import render_report
from rdc_lib.findings.svg import figure_lines, figures_of, write_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the benchmarks package
from benchmarks.common import read_rows, write_rows  # noqa: E402


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    entries = load_study(yaml.safe_load(Path(args.config).read_text()))
    if args.only:
        unknown = sorted(set(args.only) - {e.name for e in entries})
        if unknown:
            raise SystemExit(f"--only names unknown entries {unknown}; the study has {[e.name for e in entries]}")
        entries = [e for e in entries if e.name in args.only]
    raw = Path(args.raw)
    for entry in entries:
        sha = file_sha256(entry.checkpoint) if Path(entry.checkpoint).is_file() else None
        prev = next(
            (
                r
                for r in read_rows(raw)
                if r["name"] == entry.name and r["sha256"] == sha and r.get("robust_split", "test") == args.split
            ),
            None,
        )
        if prev is not None and not args.redo and (entry.n_robust == 0 or "robust_flags" in prev):
            print(f"skip (done): {entry.name}", flush=True)
            continue
        denoiser = check_study_checkpoint(entry.checkpoint)
        if prev is not None and not args.redo:
            row = prev  # clean columns done; only the robust column (resumed from its records) is missing
            if "provenance" in prev:
                row["clean_provenance"] = prev["provenance"]  # the process that measured the clean columns
        else:
            print(f"measuring {entry.name} ...", flush=True)
            row = {**entry_dict(entry), "sha256": sha, "heads": denoiser.heads, **_split_field(args.split)}
            row.update(measure_denoiser(denoiser, timesteps=args.timesteps))
            print(
                f"  DC clean {row['dc_clean_correct']}/{row['dc_clean_total']}, gap test "
                f"{[round(g, 4) for g in row['gap_test']]} [{row['measure_seconds']:.0f}s]",
                flush=True,
            )
        if entry.n_robust > 0:
            cfg = robust_config(entry, denoiser.heads, split=args.split, timesteps=args.timesteps, steps=args.steps)
            t0 = time.perf_counter()
            res = evaluate(cfg, records_dir=args.records, progress=True)
            stats = res["attack_stats"]
            if stats or "robust_run" not in row:
                broken: dict[str, int] = {}
                for s in stats:
                    for name, a in s["attacks"].items():
                        broken[name] = broken.get(name, 0) + a["broken"]
                row["robust_run"] = {
                    "n": cfg.n_images,
                    "seconds": time.perf_counter() - t0,
                    "broken_by": broken,
                    "queries_spent": sum(s["queries_spent"] for s in stats),
                    "queries_budget": sum(s["queries_budget"] for s in stats),
                }
            row["robust"] = res["robust"]
            row["robust_flags"] = robust_flags(cfg, args.records)
            row["robust_command"] = eval_command(cfg, args.records)
            print(
                f"  robust {res['robust']['correct']}/{res['robust']['total']} [{time.perf_counter() - t0:.0f}s]",
                flush=True,
            )
        row["provenance"] = provenance([entry.checkpoint])
        rows = [r for r in read_rows(raw) if r["name"] != entry.name] + [row]
        write_rows(raw, rows, sort_keys=True)
    print(f"raw rows: {raw}")


def _split_field(split: str) -> dict:
    """The row's ``robust_split``: the images of its robust column (absent in rows measured before it: test)."""
    return {} if split == "test" else {"robust_split": split}


def raw_path(split: str) -> str:
    """The raw rows of a split: the validation rows apart from the test rows measured before them."""
    return "docs/raw/denoiser_study.jsonl" if split == "test" else f"docs/raw/denoiser_study_{split}.jsonl"


def doc(args: argparse.Namespace) -> None:
    """docs/denoisers.md: the study's table, its figures, the candidates' headline rows (headline.jsonl beside the
    study's raw rows, rendered by results_table.py), then the notes."""
    raw = Path(args.raw)
    rows = read_rows(raw)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else ""
    figures = [line for fd in figures_of("denoisers.md", raw.parent) for line in figure_lines(fd)]
    from benchmarks.drivers import results_table  # the one renderer of headline rows

    candidates = results_table.headline_lines(raw.with_name("headline.jsonl"), candidates=True)
    text = render_report(rows, "").rstrip("\n") + "\n\n" + "\n".join(figures + candidates) + "\n"
    Path(args.out).write_text(text + (notes.rstrip() + "\n" if notes else ""))
    write_figures("denoisers.md", raw.parent, Path(args.out).parent / "figures")
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (``run`` reads the validation split unless --split test)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", default="benchmarks/drivers/denoiser_study.yaml")
    r.add_argument("--only", nargs="+", default=None, metavar="NAME")
    add_split_argument(r)
    r.add_argument(
        "--raw",
        default=None,
        help="raw rows (default: docs/raw/denoiser_study_val.jsonl for --split "
        "val, docs/raw/denoiser_study.jsonl for --split test)",
    )
    r.add_argument("--records", default="runs/denoiser_study/records")
    r.add_argument("--timesteps", type=int, default=16)
    r.add_argument("--steps", type=int, default=25, help="APGD iterations of the robust column")
    r.add_argument("--redo", action="store_true", help="measure again even if a row exists")
    r.add_argument("--threads", type=int, default=1)
    d = sub.add_parser("doc")
    d.add_argument("--raw", default="docs/raw/denoiser_study.jsonl")
    d.add_argument("--out", default="docs/denoisers.md")
    d.add_argument("--notes", default="docs/denoisers_notes.md", help="hand-written analysis appended verbatim")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.cmd == "run" and args.raw is None:
        args.raw = raw_path(args.split)
    run(args) if args.cmd == "run" else doc(args)


if __name__ == "__main__":
    main()
