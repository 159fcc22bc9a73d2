"""The digits comparison table (docs/results.md): five defenses, clean / l_inf / l2, AutoAttack-style.

Run the cells (resumable: per-example records and finished cells are kept under --records), then
write the document from the stored results (never by hand):

    .venv/bin/python benchmarks/drivers/results_table.py run --defenses cnn at-cnn diffpure dc rdc
    .venv/bin/python benchmarks/drivers/results_table.py doc

The headline rows (the shipped single-head denoiser, >= 200 images, APGD >= 50 iterations) are long
``rdc eval --json`` runs; their JSON lines are checked and added to the headline store, and the doc
mode puts them first (shards of one run, e.g. images 0-99 with the sanity checks and 100-199 without, are
combined into one row, every count and rate recomputed from the shards' records files, which ``--per-image`` must
then name; shards of different commits, configurations or denoisers are refused: rdc_lib.evaluation.shards).
With ``--per-image`` the runs' records files give each row the images it left robust, and the doc mode compares
every two rows on the same images (paired counts, exact McNemar test):

    .venv/bin/python benchmarks/drivers/results_table.py import runs/headline_dc.out runs/headline_rdc_a.out \
        runs/headline_rdc_b.out \
        --per-image runs/headline_dc/*.jsonl runs/headline_rdc/*.jsonl

Each cell is ``rdc_lib.evaluation.evaluate`` with the AutoAttack-style ensemble (APGD-CE, APGD-DLR,
APGD-T, Square; worst case per example) and the sanity checks of ``rdc_lib.evaluation.checks``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rdc_lib.attacks import FULL_ENSEMBLE, is_full_ensemble, protocol_label
from rdc_lib.core.choices import CHOSEN_ON, GRID_SIGMA_MIN, HEADLINE_BUDGET, LEGACY_DENOISERS
from rdc_lib.core.paths import stored_denoiser_name
from rdc_lib.defenses import get_defense
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.checks import checks_protocol, trust_label
from rdc_lib.evaluation.provenance import describe, eval_provenance, mark
from rdc_lib.evaluation.shards import SHARD_FIELDS, ShardError, merge_shards, shard_records
from rdc_lib.evaluation.stats import paired_comparison
from rdc_lib.findings.data import is_shipped_row
from rdc_lib.findings.labels import defense_label, eta_text  # noqa: F401 (eta_text: the tables' name of a radius)
from rdc_lib.findings.svg import figure_lines, figures_of, write_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.common
from benchmarks.common import accuracy, append_row, interval, read_rows, table, table_row, write_rows  # noqa: E402

THREATS = {"linf": 0.1, "l2": 0.5}
DEFAULTS = dict(n=64, **HEADLINE_BUDGET, heads="multi", grad_mode="exact", chunk=32, seed=0)
# The five-defense table measures the multi-head denoiser digits_multi (the default of heads "multi" when it was
# measured; its raw rows store denoiser ""): named here so that a rerun measures the same network.
DENOISER = LEGACY_DENOISERS["multi"]


def cells(defenses: list[str], settings: dict) -> list[EvalConfig]:
    out = []
    for defense in defenses:
        named = {"denoiser": DENOISER} if get_defense(defense).needs_denoiser else {}
        for norm, eps in THREATS.items():
            out.append(EvalConfig(defense=defense, attack="autoattack", norm=norm, eps=eps, **named, **settings))
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    settings = {**DEFAULTS, **{k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}}
    store = Path(args.records) / "results.jsonl"
    store.parent.mkdir(parents=True, exist_ok=True)
    stored = read_rows(store)
    # a row stored before the denoiser was named (denoiser "") counts under the key of its meaning (digits_multi)
    done = {r["key"] for r in stored} | {EvalConfig.from_stored(r).key() for r in stored}
    for cfg in cells(args.defenses, settings):
        if cfg.key() in done:
            print(f"skip (done): {cfg.defense} {cfg.norm} {cfg.eps}", flush=True)
            continue
        t0 = time.perf_counter()
        res = evaluate(cfg, records_dir=Path(args.records) / "records", progress=True)
        res["key"] = cfg.key()
        res["command"] = command_for(cfg)
        res["provenance"] = eval_provenance(cfg)
        append_row(store, res)
        print(
            f"{cfg.defense:9s} {cfg.norm:4s} eps={cfg.eps:<5g} clean {res['clean_acc']:.3f} robust "
            f"{res['robust_acc']:.3f} trusted={res['trusted']} [{time.perf_counter() - t0:.0f}s]",
            flush=True,
        )


HEADLINE_MIN_IMAGES = 200  # a headline row rests on at least this many test images
HEADLINE_MIN_STEPS = 50  # ... and APGD with at least this many iterations


def import_rows(args: argparse.Namespace) -> None:
    """Combine the ``rdc eval --json`` outputs given (one run, or contiguous shards of one run) into headline
    rows and add them to ``headline.jsonl``; shards are merged from their per-image records (``--per-image``)."""
    store = Path(args.records) / "headline.jsonl"
    store.parent.mkdir(parents=True, exist_ok=True)
    kept = {r["key"]: r for r in read_rows(store)}
    groups: dict[str, list[dict]] = {}
    for name in args.files:
        row = read_result(Path(name))
        same = json.dumps(
            {k: v for k, v in row.items() if k in EvalConfig.flat_defaults() and k not in SHARD_FIELDS},
            sort_keys=True,
        )
        groups.setdefault(same, []).append(row)
    per_image = [Path(p) for p in args.per_image]
    for shards in groups.values():
        row = headline_row(shards, per_image)
        if per_image:
            row["robust_images"] = [
                i for s in sorted(shards, key=lambda r: r["offset"]) for i in robust_images(s, per_image)
            ]
        kept[row["key"]] = row
        print(
            f"{row['defense']} {row['norm']} {row['eps']:g} on {row['n']} images ({len(shards)} shard(s)): robust "
            f"{row['robust_acc']:.3f}, trusted={row['trusted']}",
            flush=True,
        )
    write_rows(store, kept.values())
    print(f"wrote {store} ({len(kept)} rows)")


def read_result(path: Path) -> dict:
    """The result dict on the last line of a file holding the output of ``rdc eval --json``."""
    lines = [l for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []
    if not lines:
        raise SystemExit(f"{path}: no output of `rdc eval --json` (expected its JSON result as the last line)")
    try:
        row = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: the last line is not the JSON result of `rdc eval --json` ({e})") from None
    if "provenance" not in row or "robust" not in row:
        raise SystemExit(f"{path}: the last line has no provenance or robust accuracy (expected `rdc eval --json`)")
    argv = row["provenance"]["command"].split()
    row["command"] = "rdc " + " ".join(argv[argv.index("eval") :]) if "eval" in argv else row["provenance"]["command"]
    return row


def robust_images(result: dict, records: list[Path]) -> list[int]:
    """Test-set indices of the images one run (its ``rdc eval --json`` result) left robust, read from the records
    file among ``records`` whose header holds the run's configuration; refused when none does or when the
    records disagree with the result's counts."""
    try:
        _, recs = shard_records(result, records)
    except ShardError as e:
        raise SystemExit(str(e)) from None
    return [r["index"] for r in recs if r["robust_first"]]


def headline_row(shards: list[dict], per_image: list[Path] = ()) -> dict:
    """One headline row from one run or from contiguous shards of it (the first, at the first image, carries
    the sanity checks), every count recomputed from the per-image records ``per_image`` (required for more than
    one shard; rdc_lib.evaluation.shards); refused unless it can carry a headline number."""
    shards = sorted(shards, key=lambda r: r["offset"])
    first, n = shards[0], sum(r["n"] for r in shards)
    cfg = EvalConfig.from_stored(first)
    problems = [
        msg
        for bad, msg in (
            (
                not is_full_ensemble(cfg.attack, first.get("attacks_dropped")),
                f"attack {cfg.attack!r}"
                f"{' without ' + ', '.join(first['attacks_dropped']) if first.get('attacks_dropped') else ''} "
                f"({protocol_label(cfg.attack, first.get('attacks_dropped') or ())}; expected the full ensemble "
                f"{FULL_ENSEMBLE!r}, every member run)",
            ),
            (n < HEADLINE_MIN_IMAGES, f"{n} images (expected >= {HEADLINE_MIN_IMAGES})"),
            (cfg.steps < HEADLINE_MIN_STEPS, f"{cfg.steps} APGD iterations (expected >= {HEADLINE_MIN_STEPS})"),
            (not first.get("checks"), "no sanity checks on the first shard (expected run_checks=True)"),
            (any(r.get("checks") for r in shards[1:]), "sanity checks on a later shard (expected on the first only)"),
        )
        if bad
    ]
    if problems:
        raise SystemExit("not a headline result: " + "; ".join(problems))
    try:
        row = merge_shards(shards, per_image)
    except ShardError as e:
        raise SystemExit(f"not one run: {e}") from None
    cfg = EvalConfig.from_stored(row)
    row["key"] = cfg.key()
    return row


def command_for(cfg: EvalConfig) -> str:
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in cfg.flat().items() if v != EvalConfig.flat_defaults().get(k)]
    return "rdc eval " + " ".join(flags) + " --records runs/results/records --json"


def chosen_on(row: dict) -> str:
    """The images the choices behind a row were made on (rdc_lib.core.choices.CHOSEN_ON: its denoiser, its grid's
    smallest level), e.g. 'test 0-199 + test 200-359'; 'none' when no shipped choice of the row was made on images."""
    settings = (("denoiser", row.get("denoiser")), ("grid_sigma_min", row.get("grid_sigma_min", GRID_SIGMA_MIN)))
    found = dict.fromkeys(CHOSEN_ON[s] for s in settings if s in CHOSEN_ON)
    return " + ".join(found) or "none"


def _checks(row: dict) -> list[list]:
    """The sanity checks of a row, one [check, passed, value, baseline, tolerance] per check."""
    return [
        [
            k,
            v["passed"],
            v.get("robust_acc", v.get("nonzero_fraction", v.get("max_rel_error", ""))),
            v.get("baseline", ""),
            v.get("tolerance", v.get("max_robust_acc", "")),
        ]
        for k, v in row["checks"].items()
    ]


def headline_lines(path: Path, candidates: bool = False) -> list[str]:
    """The headline table: long evaluations of the shipped default denoisers and the baselines (empty without the
    file); with ``candidates``, the same table of the denoiser study's other candidates (docs/denoisers.md)."""
    if not path.is_file():
        return []
    every = read_rows(path)
    rows = [r for r in every if is_shipped_row(r) != candidates]
    if not rows:
        return []
    moved = sum(not is_shipped_row(r) for r in every)
    title = (
        "## The study's candidates under the headline protocol"
        if candidates
        else "## Headline: the same test images, one protocol"
    )
    scope = (
        "Denoisers of the study that are not shipped defaults (rdc_lib.core.choices.DEFAULT_DENOISERS), measured "
        "exactly as the headline rows of docs/results.md. "
        if candidates
        else "The shipped default denoisers (rdc_lib.core.choices.DEFAULT_DENOISERS) and the baselines; the study's "
        f"{moved} rows of other candidate denoisers are in docs/denoisers.md (*The study's candidates under the "
        "headline protocol*). "
    )
    lines = [
        title,
        "",
        scope
        + f"At least {HEADLINE_MIN_IMAGES} test images, APGD with at least {HEADLINE_MIN_STEPS} iterations, every "
        "row with its sanity checks (section *Headline sanity checks*) and the command, commit and seconds that "
        "made it. *Chosen on*: the images the row's denoiser and noise grid were chosen on (a row chosen on "
        "the images it is measured on overstates); *(dirty)*: measured with uncommitted changes.",
        "",
        *table(
            ["defense", "denoiser", "threat", "images", "chosen on", "clean", "robust (95% interval)", "checks"]
            + ["seconds"]
        ),
    ]
    for r in rows:
        rob, clean = r["robust"], r["clean"]
        lines.append(
            f"| {defense_label(r)} | {r['denoiser'] or '—'} | {r['norm']} {r['eps']:g} | "
            f"{r['n']} (from {r['offset']}) | "
            f"{chosen_on(r)} | {100 * clean['value']:.1f}% ({clean['correct']}/{clean['total']}) | "
            f"**{100 * rob['value']:.1f}%** ({rob['correct']}/{rob['total']}, {interval(rob)})"
            f"{_mark(r.get('trusted'))}{_bound(r)}{mark(r)} | "
            f"{trust_label(r.get('trusted'))} | "
            f"{r['seconds']:.0f} |"
        )
    r0 = next((r for r in rows if r["denoiser"]), rows[0])  # the settings of the diffusion rows (CNNs ignore them)
    lines += [
        "",
        f"Attack: AutoAttack-style ensemble, worst case per image over APGD-CE, APGD-DLR, APGD-T "
        f"({r0['n_target_classes']} target classes), {r0['steps']} iterations each, then Square with "
        f"{r0['square_queries']} queries; exact gradients through the whole defense (RDC: through every LM "
        f"step). Diffusion defenses: T = {r0['timesteps']} noise levels, randomness `{r0['noise_mode']}` (the "
        "same noise on every call, known to the attacker).",
        "",
    ]
    if not candidates:
        lines += [l for fd in figures_of("results.md", path.parent) for l in figure_lines(fd)]
    lines += [
        "### Headline sanity checks",
        "",
        *table(["defense", "check", "passed", "value", "baseline", "tolerance"]),
    ]
    lines += [table_row([f"{defense_label(r)} ({r['denoiser'] or '—'})", *c]) for r in rows for c in _checks(r)]
    lines += paired_lines(
        every,
        (lambda a, b: not (is_shipped_row(a) and is_shipped_row(b)))
        if candidates
        else (lambda a, b: is_shipped_row(a) and is_shipped_row(b)),
    )
    if not candidates:
        lines += crosscheck_lines(path.with_name("crosscheck_torchattacks.jsonl"))
    lines += ["", "### Headline commands and provenance", ""]
    for r in rows:
        lines += [
            f"- {defense_label(r)} ({r['denoiser'] or '—'}), images {s['offset']}-{s['offset'] + s['n'] - 1}"
            f"{' (with the sanity checks)' if s['run_checks'] else ''}: `{s['command']}` ({describe(s)}, "
            f"{s['seconds']:.0f} s)"
            for s in r.get("shards", [r])
        ]
    return lines + [""]


def paired_lines(rows: list[dict], keep=lambda a, b: True) -> list[str]:
    """Every two headline rows (that ``keep`` accepts) with per-image outcomes on the same images and threat,
    compared image by image."""
    same = lambda a, b: all(a[k] == b[k] for k in ("offset", "n", "norm", "eps"))
    pairs = [
        (a, b)
        for i, a in enumerate(rows)
        for b in rows[i + 1 :]
        if "robust_images" in a and "robust_images" in b and same(a, b) and keep(a, b)
    ]
    if not pairs:
        return []
    lines = [
        "",
        "### Paired on the same images",
        "",
        "Per image: kept by both, by one only, by neither; p: two-sided exact McNemar test on the images one "
        "keeps alone (rdc_lib.evaluation.stats.paired_comparison). Overlapping intervals above do not mean "
        "no difference; a small p does.",
        "",
        *table(["A", "B", "images", "both", "A only", "B only", "neither", "p"]),
    ]
    for a, b in pairs:
        images = range(a["offset"], a["offset"] + a["n"])
        ka, kb = set(a["robust_images"]), set(b["robust_images"])
        c = paired_comparison([i in ka for i in images], [i in kb for i in images])
        name = lambda r: f"{defense_label(r)} ({r['denoiser']})" if r["denoiser"] else r["defense"]
        lines.append(
            f"| {name(a)} | {name(b)} | {a['n']} | {c.both} | {c.a_only} | {c.b_only} | {c.neither} | {c.p_value:.2g} |"
        )
    return lines


def crosscheck_lines(path: Path) -> list[str]:
    """Attacks written by someone else (torchattacks) on the images a headline run left robust
    (``benchmarks/drivers/crosscheck_torchattacks.py``); empty without the file."""
    if not path.is_file():
        return []
    rows = read_rows(path)
    lines = [
        "",
        "### Outside attacks on the survivors (torchattacks)",
        "",
        "Each attack runs on the images the earlier ones left robust; an image broken here is one our ensemble missed.",
        "",
        *table(
            ["defense", "denoiser", "survivors (of the first N)", "attacks", "broken by", "still robust", "seconds"]
        ),
    ]
    for r in rows:
        c = r["config"]
        broken = ", ".join(f"{k} {v}" for k, v in r["broken_by"].items())
        budget = ", ".join(
            ([f"{r['steps']} APGD iterations"] if any(a.startswith("apgd") for a in r["attacks"]) else [])
            + ([f"{r['square_queries']} Square queries"] if "square" in r["attacks"] else [])
        )
        lines.append(
            f"| {defense_label(c)} | {stored_denoiser_name(c)} | {r['survivors']} (of {r['first']}) | "
            f"{', '.join(r['attacks'])}: {budget} | {broken} | {r['still_robust']} | {r['seconds']:.0f} |"
        )
    lines += [""] + [f"- `{r['provenance']['command']}` ({describe(r)})" for r in rows]
    return lines


def doc(args: argparse.Namespace) -> None:
    store = Path(args.records) / "results.jsonl"
    rows = read_rows(store, missing_ok=False)
    by = {(r["defense"], r["norm"]): r for r in rows}
    order = [d for d in ("cnn", "at-cnn", "diffpure", "dc", "rdc") if any(k[0] == d for k in by)]
    lines = [
        "# Digits robustness comparison",
        "",
        "Written by `benchmarks/drivers/results_table.py doc` from the stored results; every number below comes "
        "from the command that made it.",
        "",
    ]
    lines += headline_lines(Path(args.records) / "headline.jsonl")
    lines += [
        "## Five defenses on the multi-head denoiser (digits_multi)",
        "",
        f"Accuracies on the first {rows[0]['n']} digits test images with 95% Wilson intervals; the diffusion "
        "defenses use the multi-head denoiser `digits_multi`, whose class heads barely use the label "
        "(docs/denoisers.md).",
        "",
        *table(["defense", "clean", "l_inf 0.1 robust", "l2 0.5 robust", "checks"]),
    ]
    for d in order:
        cells_ = [by.get((d, "linf")), by.get((d, "l2"))]
        ref = next(c for c in cells_ if c)
        fmt = lambda c: "—" if c is None else accuracy(c["robust"]) + _mark(c.get("trusted")) + _bound(c) + mark(c)
        clean = ref["clean"]
        flags = [c.get("trusted") for c in cells_ if c]
        status = (
            "UNTRUSTED: "
            + ", ".join(f"{c['norm']}:{k}" for c in cells_ if c for k, v in c["checks"].items() if not v["passed"])
            if False in flags
            else "not checked"
            if None in flags
            else "all passed"
        )
        lines.append(
            f"| {d} | {100 * clean['value']:.1f}% ({clean['correct']}/{clean['total']}) | {fmt(cells_[0])} | "
            f"{fmt(cells_[1])} | {status} |"
        )
    lines += ["", "### Protocol", ""]
    r0 = rows[0]
    lines += [
        f"- Attack: AutoAttack-style ensemble, worst case per example over APGD-CE, APGD-DLR, APGD-T "
        f"({r0['n_target_classes']} target classes) with {r0['steps']} iterations each and Square with "
        f"{r0['square_queries']} queries; restarts {r0['restarts']}; exact gradients through the whole "
        f"defense (RDC: through every LM step, `grad_mode={r0['grad_mode']}`).",
        f"- Diffusion defenses: multi-head denoiser, T = {r0['timesteps']} noise levels (paper grid), "
        f"randomness `{r0['noise_mode']}` (fixed = the same noise on every call, known to the attacker: "
        "a deterministic white-box defense). Stochastic-mode protocols are in docs/evaluation.md.",
        *[f"- {line}" for line in checks_protocol([r["checks"] for r in rows])],
        "",
    ]
    lines += [
        "### Seconds per cell and attack effort",
        "",
        "*Broken by Square*: images that survived the three gradient attacks and that Square then broke "
        "(the ensemble runs Square last); above 0: Square found adversarial examples the gradient attacks "
        "missed.",
        "",
        *table(["defense", "norm", "seconds", "queries spent / budget", "broken by Square"]),
    ]
    for r in rows:
        spent = sum(s.get("queries_spent", 0) for s in r["attack_stats"])
        budget = sum(s.get("queries_budget", 0) for s in r["attack_stats"])
        square = sum(s.get("attacks", {}).get("square", {}).get("broken", 0) for s in r["attack_stats"])
        lines.append(f"| {r['defense']} | {r['norm']} | {r['seconds']:.0f} | {spent} / {budget} | {square} |")
    lines += [
        "",
        "### Sanity checks per cell",
        "",
        *table(["defense", "norm", "check", "passed", "value", "baseline", "tolerance"]),
    ]
    lines += [table_row([r["defense"], r["norm"], *c]) for r in rows for c in _checks(r)]
    lines += ["", "### Commands", ""] + [f"- `{r['command']}`" for r in rows]
    lines += [
        "",
        "### Provenance",
        "",
        "Commit (and whether the working tree had uncommitted changes) of the code that "
        "measured each cell; checkpoint hashes, library versions and the full command are in the raw rows "
        "(docs/raw/results.jsonl).",
        "",
        *table(["defense", "norm", "provenance"]),
    ]
    lines += [f"| {r['defense']} | {r['norm']} | {describe(r)} |" for r in rows]
    if args.notes and Path(args.notes).is_file():
        lines += ["", Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    if (Path(args.records) / "headline.jsonl").is_file():  # the figures draw the headline rows, as the table does
        write_figures("results.md", Path(args.records), Path(args.out).parent / "figures")
    print(f"wrote {args.out}")


def _mark(trusted: bool | None) -> str:
    """Suffix of a robust-accuracy cell: nothing when its checks passed, else the trust label."""
    return "" if trusted else (" **UNTRUSTED**" if trusted is False else f" ({trust_label(None)})")


def _bound(row: dict) -> str:
    """Suffix of a robust-accuracy cell: nothing for the full ensemble, else its label (an upper bound)."""
    return (
        ""
        if is_full_ensemble(row["attack"], row.get("attacks_dropped"))
        else f" ({protocol_label(row['attack'], row.get('attacks_dropped') or ())})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--defenses", nargs="+", default=["cnn", "at-cnn", "diffpure", "dc", "rdc"])
    for k, v in DEFAULTS.items():
        r.add_argument("--" + k.replace("_", "-"), dest=k, type=type(v), default=None)
    r.add_argument("--records", default="runs/results")
    r.add_argument("--threads", type=int, default=1)
    i = sub.add_parser("import", help="add long `rdc eval --json` runs to the headline rows")
    i.add_argument("files", nargs="+", help="files holding the output of `rdc eval ... --json`")
    i.add_argument("--records", default="runs/results")
    i.add_argument(
        "--per-image",
        nargs="*",
        default=[],
        help="the runs' records files (.jsonl under their --records folders): store the robust images",
    )
    d = sub.add_parser("doc")
    d.add_argument("--records", default="runs/results")
    d.add_argument("--out", default="docs/results.md")
    d.add_argument("--notes", default="docs/results_notes.md", help="hand-written analysis appended verbatim")
    args = ap.parse_args()
    {"run": run, "import": import_rows, "doc": doc}[args.cmd](args)


if __name__ == "__main__":
    main()
