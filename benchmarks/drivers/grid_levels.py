"""Which noise levels the diffusion classifier reads, and how that decides its robustness (docs/grid_levels.md).

    .venv/bin/python benchmarks/drivers/grid_levels.py run [--denoisers digits_film_multi_distill9 ...]
        [--sigma-mins 0.0001 0.3 0.45 0.6 0.75 0.9] [--split val] [--n 160] [--offset 0] [--steps 50] [--timesteps 16]
        [--records runs/grid_levels] [--raw docs/raw/grid_levels.jsonl] [--threads 1]
    .venv/bin/python benchmarks/drivers/grid_levels.py doc [--raw docs/raw/grid_levels.jsonl]
        [--notes docs/grid_levels_notes.md] [--out docs/grid_levels.md]

``run``: for every denoiser and every smallest level ``sigma_min`` (``--grid-sigma-min`` of ``rdc eval``: the
paper grid's T levels spread over [sigma_min, 3) instead of [1e-4, 3)), the DC's robust accuracy under the
fixed-noise AutoAttack-style ensemble of the denoiser study (rdc_lib.experiments.study.ROBUST_SETTINGS, with
``--steps`` APGD iterations), on images ``offset .. offset + n - 1`` of ``--split``: the validation split by default
(rdc_lib.experiments.selection: sigma_min is a choice), the test images with ``--split test`` (default offset 200
there). Each cell is one ``rdc eval`` configuration with resumable records under ``--records``; a finished cell
appends one row (its per-image outcomes, the grid's levels and weights, seconds, the command) to ``--raw``, and a
rerun skips cells already there. The rows measured before the validation split read test images 200-359, the ones
the headline table (the first 200) does not use. ``doc``: the report, from the raw rows only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from rdc_lib.core.choices import DEFAULT_DENOISERS, GRID_KIND, GRID_SIGMA_MIN
from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.diffusion.schedules import check_grid_sigma_min, make_grid
from rdc_lib.evaluation.provenance import mark, provenance
from rdc_lib.evaluation.runner import EvalConfig, evaluate
from rdc_lib.experiments.selection import add_split_argument
from rdc_lib.experiments.study import ROBUST_SETTINGS, eval_command, robust_flags
from rdc_lib.findings.svg import figure_lines, figures_of, write_figures
from rdc_lib.models.checkpoints import load_denoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.common
from benchmarks.common import accuracy, append_row, read_rows, table  # noqa: E402

RAW = Path("docs/raw/grid_levels.jsonl")


TEST_OFFSET = 200  # --split test: the test images the headline table (the first 200) does not use


def cell_config(
    denoiser: str, heads: str, sigma_min: float, *, n: int, offset: int, steps: int, timesteps: int, split: str
) -> EvalConfig:
    """One cell: the DC of ``denoiser`` (of kind ``heads``) on the grid from ``sigma_min``, the study's ensemble,
    on images ``offset .. offset + n - 1`` of ``split``."""
    settings = {**ROBUST_SETTINGS, "steps": steps, "timesteps": timesteps}
    return EvalConfig(
        defense="dc",
        heads=heads,
        denoiser=denoiser,
        n=n,
        offset=offset,
        grid_sigma_min=sigma_min,
        split=split,
        **settings,
    )


def _passes_per_image(den, timesteps: int) -> int:
    """Network passes one DC forward costs per image: T levels times the passes that score every class."""
    return timesteps * den.passes_per_denoise_all(den.num_classes)


def _done(raw: Path) -> set[str]:
    return {r["key"] for r in read_rows(raw)}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    raw = Path(args.raw)
    raw.parent.mkdir(parents=True, exist_ok=True)
    done = _done(raw)
    for denoiser in args.denoisers:
        den = load_denoiser(resolve_checkpoint(denoiser))  # once per denoiser: its kind and its cost
        for sigma_min in args.sigma_mins:
            cfg = cell_config(
                denoiser,
                den.heads,
                sigma_min,
                n=args.n,
                offset=args.offset,
                steps=args.steps,
                timesteps=args.timesteps,
                split=args.split,
            )
            if cfg.key() in done:
                print(f"{denoiser} sigma_min {sigma_min:g}: stored, skipped", flush=True)
                continue
            t0 = time.perf_counter()
            res = evaluate(cfg, records_dir=args.records, progress=not args.no_progress)
            flags = robust_flags(cfg, args.records)
            grid = make_grid(cfg.timesteps, cfg.grid, sigma_min=sigma_min)
            row = {
                "key": cfg.key(),
                "denoiser": denoiser,
                "heads": cfg.heads,
                "sigma_min": sigma_min,
                **({} if cfg.split == "test" else {"split": cfg.split}),
                "offset": cfg.offset,
                "n": cfg.n_images,
                "steps": cfg.steps,
                "timesteps": cfg.timesteps,
                "clean": res["clean"],
                "robust": res["robust"],
                "robust_flags": flags,
                "levels": grid.sigmas.tolist(),
                "weights": grid.weights.tolist(),
                "passes_per_image": _passes_per_image(den, cfg.timesteps),
                "seconds": time.perf_counter() - t0,
                "command": eval_command(cfg, args.records),
                "provenance": provenance([resolve_checkpoint(denoiser)]),
            }
            append_row(raw, row)
            r = res["robust"]
            print(
                f"{denoiser} sigma_min {sigma_min:g}: robust {r['correct']}/{r['total']} "
                f"({100 * r['value']:.1f}%, {100 * r['low']:.0f}-{100 * r['high']:.0f}), "
                f"{row['seconds']:.0f} s",
                flush=True,
            )


def _cell(row: dict) -> str:
    return accuracy(row["robust"])


def render(rows: list[dict], notes: str = "", figures: list[str] = ()) -> str:
    """The report (markdown) from the raw rows; ``figures``: markdown lines showing its figures, before the notes."""
    lines = [
        "# Which noise levels the diffusion classifier reads",
        "",
        "Generated by `benchmarks/drivers/grid_levels.py doc` from docs/raw/grid_levels.jsonl; the analysis after the "
        "tables is hand-written (docs/grid_levels_notes.md). Do not edit the tables by hand.",
        "",
        f"DC robust accuracy at l_inf 0.1 under the fixed-noise AutoAttack-style ensemble of the denoiser study "
        f"(APGD-CE, APGD-DLR, APGD-T with 3 targets, Square 500; fixed noise), with the paper grid's T levels "
        f"spread over [sigma_min, 3) (the `--grid-sigma-min` flag of rdc eval; "
        f"the paper's sigma_min is {GRID_SIGMA_MIN:g}). "
        "Cells: robust accuracy (robust/images, 95% Wilson interval).",
        "",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(
            (row.get("split", "test"), row["offset"], row["n"], row["steps"], row["timesteps"]), []
        ).append(row)
    for (split, offset, n, steps, timesteps), group in groups.items():
        sigmas = sorted({r["sigma_min"] for r in group})
        denoisers = list(dict.fromkeys(r["denoiser"] for r in group))
        images = "Test images" if split == "test" else f"Images of the {split} split"
        lines += [
            f"## {images} {offset}-{offset + n - 1}, APGD {steps} iterations, T = {timesteps}",
            "",
            *table(["denoiser"] + [f"sigma_min {s:g}" for s in sigmas]),
        ]
        for d in denoisers:
            by = {r["sigma_min"]: r for r in group if r["denoiser"] == d}
            lines.append(
                f"| `{d}` | " + " | ".join(_cell(by[s]) + mark(by[s]) if s in by else "—" for s in sigmas) + " |"
            )
        lines += [
            "",
            "Clean accuracy of the same cells: "
            + "; ".join(
                f"`{r['denoiser']}` at {r['sigma_min']:g}: {r['clean']['correct']}/{r['clean']['total']}" for r in group
            )
            + ".",
            "",
            "The grid's smallest two levels and their weights (of T), per sigma_min: "
            + "; ".join(
                f"{s:g}: "
                + ", ".join(
                    f"{l:.3f} (w {w:.2f})"
                    for l, w in zip(
                        next(r for r in group if r["sigma_min"] == s)["levels"][:2],
                        next(r for r in group if r["sigma_min"] == s)["weights"][:2],
                    )
                )
                for s in sigmas
            )
            + ".",
            "",
            "Commands (one per cell; seconds on a shared two-core CPU):",
            "",
        ]
        lines += [
            f"- `{r['denoiser']}`, sigma_min {r['sigma_min']:g}: `{r['command']}` ({r['seconds']:.0f} s, commit "
            f"{r['provenance'].get('commit', '?')[:7]})"
            for r in group
        ]
        lines.append("")
    lines += list(figures)
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)


def doc(args: argparse.Namespace) -> None:
    raw = Path(args.raw)
    rows = read_rows(raw)
    notes = Path(args.notes).read_text() if args.notes and Path(args.notes).is_file() else ""
    drawn = bool(rows) and raw.name == "grid_levels.jsonl"  # the figure reads the raw folder's grid_levels.jsonl
    figures = [line for fd in figures_of("grid_levels.md", raw.parent) for line in figure_lines(fd)] if drawn else []
    Path(args.out).write_text(render(rows, notes, figures))
    if drawn:
        write_figures("grid_levels.md", raw.parent, Path(args.out).parent / "figures")


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (``run`` reads the validation split unless --split test)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run")
    r.add_argument("--denoisers", nargs="+", default=[DEFAULT_DENOISERS["multi"]])
    r.add_argument("--sigma-mins", type=float, nargs="+", default=[GRID_SIGMA_MIN, 0.3, 0.45, 0.6, 0.75, 0.9])
    add_split_argument(r)
    r.add_argument("--n", type=int, default=160)
    r.add_argument(
        "--offset",
        type=int,
        default=None,
        help=f"first image (default 0 of the validation split, {TEST_OFFSET} of the test split)",
    )
    r.add_argument("--steps", type=int, default=50)
    r.add_argument("--timesteps", type=int, default=ROBUST_SETTINGS["timesteps"])
    r.add_argument("--records", default="runs/grid_levels")
    r.add_argument("--raw", default=str(RAW))
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("doc")
    d.add_argument("--raw", default=str(RAW))
    d.add_argument("--notes", default="docs/grid_levels_notes.md")
    d.add_argument("--out", default="docs/grid_levels.md")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.mode == "run":
        if args.offset is None:
            args.offset = TEST_OFFSET if args.split == "test" else 0
        for s in args.sigma_mins:
            try:
                check_grid_sigma_min(s, GRID_KIND)
            except ValueError as e:
                ap.error(str(e))
        run(args)
    else:
        doc(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
