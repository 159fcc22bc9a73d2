"""The adaptive evaluation of full RDC on digits (docs/evaluation.md), protocol by protocol.

    .venv/bin/python benchmarks/drivers/evaluation_report.py run  [--n 32] [--steps 20] [--n-eval 10] [--chunk 40]
    .venv/bin/python benchmarks/drivers/evaluation_report.py doc
    .venv/bin/python benchmarks/drivers/evaluation_report.py merge runs/eval_a runs/eval_b --records runs/evaluation

For DiffPure, DC, RDC and the CNN baselines: clean accuracy and robust accuracy under each protocol:
- gradients: exact through every LM step vs BPDA (identity backward through LM);
- randomness: stochastic (fresh per call) vs fixed (known to the attacker);
- EOT: 1 vs the size picked by the gradient-cosine diagnostic (a choice: it reads the validation split unless
  ``run --split test``, rdc_lib.experiments.selection);
- reading: single call vs average vs worst case over N re-classifications of the final example;
- majority vote over M stochastic calls as a defense variant.
"Overstatement" = how far a protocol's number sits above the strongest protocol for the same
defense variant. A check fails loudly if the designated strongest protocol (exact gradients, EOT,
worst-of-N) is above any weaker protocol. Every number comes from ``rdc_lib.evaluation.evaluate``;
the per-cell commands are listed in the document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from rdc_lib.attacks import is_full_ensemble, protocol_label
from rdc_lib.core.choices import DEFAULT_DENOISERS, SELECTION_SPLIT
from rdc_lib.core.paths import checkpoint_path, stored_denoiser_name
from rdc_lib.data import load_dataset
from rdc_lib.defenses import DefenseSpec, build_defense, checkpoint_files, get_defense
from rdc_lib.evaluation import EvalConfig, evaluate
from rdc_lib.evaluation.checks import MIN_CHECK_IMAGES, checks_protocol, trust_label
from rdc_lib.evaluation.grad import EOT_TARGET, gradient_cosine_similarity, suggest_eot
from rdc_lib.evaluation.provenance import describe, eval_provenance, mark, provenance
from rdc_lib.evaluation.shards import SUMMARY_FIELDS
from rdc_lib.experiments.selection import add_split_argument

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: benchmarks.common
from benchmarks.common import accuracy, append_row, pct, read_rows, table, write_rows  # noqa: E402

STRONGEST = "exact+EOT, verified stop"
VERIFY = 4  # calls that must all misclassify before the strongest protocol stops attacking an image
EOT_CAP = 8  # largest EOT size used here (CPU time); the rule's own suggestion is reported beside it
LEGACY_EOT_TARGET = 0.8  # the rule's target in diagnostics written before the target was recorded with them


# The multi-head denoiser a run evaluates: the shipped default of heads "multi" unless --denoiser names another.
DENOISER = DEFAULT_DENOISERS["multi"]


def row_denoiser(row: dict) -> str:
    """The denoiser a stored row or diagnostic measured ("" for a defense without one, e.g. the CNNs); every
    row here is multi-head, so a row stored before the denoiser was named means heads "multi"'s legacy one."""
    if not get_defense(row["defense"]).needs_denoiser:
        return ""
    return stored_denoiser_name({"heads": "multi", **row})


def eot_diagnostic(
    defense: str, n: int, timesteps: int, denoiser: str = DENOISER, samples: int = 4, split: str = SELECTION_SPLIT
) -> dict:
    """Cosine similarity of input gradients across stochastic draws on the first ``n`` images of ``split``, and
    the EOT size it suggests (a diagnostic without "split" read test images: it predates the validation split)."""
    x, y = load_dataset("digits", split)
    spec = DefenseSpec(
        name=defense,
        heads="multi",
        timesteps=timesteps,
        noise_mode="stochastic",
        denoiser_path=str(checkpoint_path(denoiser)),
    )
    model = build_defense(spec)
    cos = gradient_cosine_similarity(model, x[:n], y[:n], n_samples=samples)
    sug = suggest_eot(cos, target=EOT_TARGET)
    return {
        "defense": defense,
        "denoiser": denoiser,
        "mean_cosine": cos.mean,
        "eot": min(sug.eot, EOT_CAP),
        "eot_rule": sug.eot,
        "cosine_used": sug.cosine,
        "n": n,
        "samples": samples,
        "target": sug.target,
        "cap": EOT_CAP,
        "provenance": provenance(checkpoint_files(spec)),
        "split": split,
    }


def protocols(defense: str, eot: int, verify: int = VERIFY) -> list[tuple[str, str, dict]]:
    """(variant, protocol name, EvalConfig overrides).

    Stochastic variants: 'exact, EOT=1' and 'exact+EOT, one-call stop' stop attacking an image at its first
    misclassified call (often a lucky draw); the strongest protocol also averages ``eot`` draws per
    gradient but stops only when ``verify`` fresh calls all misclassify (``EvalConfig.verify``).
    """
    if defense in ("cnn", "at-cnn"):
        return [("deterministic", "white-box", {})]
    rows = [
        ("fixed randomness", "exact gradients", dict(noise_mode="fixed")),
        ("stochastic", "exact, EOT=1", dict(noise_mode="stochastic", eot=1)),
        ("stochastic", STRONGEST, dict(noise_mode="stochastic", eot=eot, verify=verify)),
    ]
    if defense == "diffpure":
        rows.insert(1, ("fixed randomness", "BPDA through purification", dict(noise_mode="fixed", grad_mode="bpda")))
    if defense == "rdc":
        rows.insert(1, ("fixed randomness", "BPDA through LM", dict(noise_mode="fixed", grad_mode="bpda")))
        rows.insert(
            2, ("fixed randomness", "Lagrangian APGD (lam 1), exact", dict(noise_mode="fixed", attack="apgd-lagrange"))
        )
        rows.insert(4, ("stochastic", "exact+EOT, one-call stop", dict(noise_mode="stochastic", eot=eot)))
        rows.append(
            (
                "stochastic",
                "BPDA through LM, EOT, verified stop",
                dict(noise_mode="stochastic", eot=eot, verify=verify, grad_mode="bpda"),
            )
        )
        rows.append(
            (
                "majority vote (M=3)",
                "exact, EOT=1, verified stop",
                dict(noise_mode="stochastic", vote=3, eot=1, verify=verify),
            )
        )
    return rows


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.records)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "evaluation.jsonl"
    stored = read_rows(store)
    # a row stored before the denoiser was named (denoiser "") counts under the key of its meaning (digits_multi)
    done = {r["key"] for r in stored} | {EvalConfig.from_stored(r).key() for r in stored}
    diag_path = out / "eot_diagnostic.json"
    diag = json.loads(diag_path.read_text()) if diag_path.is_file() else {}
    for defense in args.defenses:
        if defense in ("dc", "rdc", "diffpure") and (
            defense not in diag
            or row_denoiser(diag[defense]) != args.denoiser
            or diag[defense].get("split", "test") != args.split
        ):
            diag[defense] = eot_diagnostic(
                defense, n=8, timesteps=args.timesteps, denoiser=args.denoiser, split=args.split
            )
            diag_path.write_text(json.dumps(diag, indent=2))
            print(f"EOT diagnostic {defense}: {diag[defense]}", flush=True)
        eot = diag.get(defense, {}).get("eot", 1)
        base = EvalConfig(
            defense=defense,
            attack="apgd-ce",
            norm="linf",
            eps=args.eps,
            n=args.n,
            steps=args.steps,
            timesteps=args.timesteps,
            heads="multi",
            n_eval=args.n_eval,
            chunk=args.chunk or args.n,
            run_checks=True,
            denoiser=args.denoiser if get_defense(defense).needs_denoiser else "",
        )
        for variant, name, over in protocols(defense, eot, args.verify):
            if args.only and name not in args.only:
                continue
            cfg = base.replace(**over)
            if cfg.noise_mode == "fixed" or defense in ("cnn", "at-cnn"):
                cfg = cfg.replace(n_eval=1)
            key = cfg.key()
            if key in done:
                continue
            t0 = time.perf_counter()
            res = evaluate(cfg, records_dir=out / "records", progress=True)
            res.update(key=key, variant=variant, protocol=name, command=_command(cfg), provenance=eval_provenance(cfg))
            append_row(store, res)
            print(
                f"{defense:7s} {variant:22s} {name:26s} robust {res['robust_acc']:.3f} avg {res['robust_acc_avg']:.3f} "
                f"worst {res['robust_acc_worst']:.3f} trusted={res['trusted']} [{time.perf_counter() - t0:.0f}s]",
                flush=True,
            )


DEFENSE_ORDER = ("cnn", "at-cnn", "diffpure", "dc", "rdc")


def merge(sources: list[Path], out: Path) -> tuple[list[dict], dict]:
    """Join the stored rows and EOT diagnostics of runs split across record folders (e.g. one per core) into
    ``out``, rows in the document's order (defense, then protocol). Each row is a whole cell (its own counts and
    provenance; cells split by images are merged by rdc_lib.evaluation.shards). A cell stored twice with different
    results (any count or rate),
    or a defense whose diagnostics disagree on the EOT size, is refused: the folders did not run one evaluation."""
    rows: dict[str, dict] = {}
    diag: dict[str, dict] = {}
    for src in sources:
        store = src / "evaluation.jsonl"
        if not store.is_file():
            raise FileNotFoundError(f"{store}: no stored rows (expected a --records folder of `run`)")
        for r in read_rows(store):
            differ = [k for k in SUMMARY_FIELDS if r["key"] in rows and rows[r["key"]].get(k) != r.get(k)]
            if differ:  # every count and rate, not only the robust one
                raise ValueError(
                    f"{r['defense']} / {r['protocol']} is stored in two folders with different results "
                    f"(" + "; ".join(f"{k}: {rows[r['key']].get(k)} and {r.get(k)}" for k in differ) + "); keep one"
                )
            rows.setdefault(r["key"], r)
        g = src / "eot_diagnostic.json"
        for d, v in (json.loads(g.read_text()) if g.is_file() else {}).items():
            if d in diag and diag[d]["eot"] != v["eot"]:
                raise ValueError(
                    f"EOT diagnostics of {d} disagree ({diag[d]['eot']} and {v['eot']}): the folders "
                    "ran different protocols"
                )
            diag.setdefault(d, v)

    def place(r: dict) -> tuple[int, int]:
        names = [name for _, name, _ in protocols(r["defense"], diag.get(r["defense"], {}).get("eot", 1))]
        return DEFENSE_ORDER.index(r["defense"]), names.index(r["protocol"]) if r["protocol"] in names else len(names)

    merged = sorted(rows.values(), key=place)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "evaluation.jsonl", merged)
    (out / "eot_diagnostic.json").write_text(json.dumps(diag, indent=2))
    return merged, diag


def _command(cfg: EvalConfig) -> str:
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in cfg.flat().items() if v != EvalConfig.flat_defaults().get(k)]
    return "rdc eval " + " ".join(flags) + " --json"


def _bound(row: dict) -> str:
    """Suffix of a row's protocol: nothing for the full ensemble, else its attack's label (an upper bound)."""
    return (
        ""
        if is_full_ensemble(row["attack"], row.get("attacks_dropped"))
        else f" ({protocol_label(row['attack'], row.get('attacks_dropped') or ())})"
    )


def doc(args: argparse.Namespace) -> int:
    out = Path(args.records)
    rows = read_rows(out / "evaluation.jsonl", missing_ok=False)
    diag = json.loads((out / "eot_diagnostic.json").read_text()) if (out / "eot_diagnostic.json").is_file() else {}
    r0 = rows[0]
    denoisers = {row_denoiser(r) for r in rows} - {""}
    if len(denoisers) > 1:
        raise ValueError(
            f"{out / 'evaluation.jsonl'} mixes rows of denoisers {sorted(denoisers)}; one document "
            "evaluates one denoiser (run each into its own --records folder)"
        )
    lines = [
        "# Adaptive evaluation of full RDC on digits",
        "",
        "Written by `benchmarks/drivers/evaluation_report.py doc` from stored results (never edited by hand). "
        f"First {r0['n']} digits test images, l_inf eps {r0['eps']}, APGD-CE with {r0['steps']} iterations, "
        f"multi-head denoiser `{''.join(denoisers) or '-'}`, T = {r0['timesteps']}. "
        "N-evaluation: each final adversarial example is "
        f"re-classified N = {args.n_eval} times (stochastic variants).",
        "",
        "Reading the columns: *single* is the usual one-call robust accuracy; *avg* the mean over the N "
        "re-classifications; *worst* counts an image robust only if all N calls are right. Overstatement = "
        "this protocol's single-call number minus the strongest protocol's worst-of-N number for the same "
        "defense variant. 95% Wilson intervals on the single-call number.",
        "",
        "Stopping rule on stochastic variants: *one-call stop* attacks stop on an image at its first "
        "misclassified call, which against a stochastic defense is often a lucky draw; *verified stop* "
        f"(`--verify {VERIFY}`) stops only when {VERIFY} fresh calls all misclassify the candidate "
        "(rdc_lib.attacks.base.AttackContext).",
        "",
        *table(
            ["defense", "variant", "protocol", "clean", "single (95% CI)", "avg of N", "worst of N"]
            + ["overstatement", "checks"]
        ),
    ]
    failures = []
    for defense in DEFENSE_ORDER:
        mine = [r for r in rows if r["defense"] == defense]
        for variant in dict.fromkeys(r["variant"] for r in mine):
            group = [r for r in mine if r["variant"] == variant]
            strongest = min(r["robust_acc_worst"] for r in group)
            for r in group:
                rob = r["robust"]
                over = r["robust_acc"] - strongest
                ci = f"{accuracy(rob)}{mark(r)}"
                checks = (
                    trust_label(r.get("trusted"))
                    if r.get("trusted") is not False
                    else "**UNTRUSTED**: " + ", ".join(k for k, v in r["checks"].items() if not v["passed"])
                )
                lines.append(
                    f"| {defense} | {variant} | {r['protocol']}{_bound(r)} | {pct(r['clean_acc'])} | {ci} | "
                    f"{pct(r['robust_acc_avg'])} | {pct(r['robust_acc_worst'])} | {100 * over:+.1f} | {checks} |"
                )
            named = [r for r in group if r["protocol"] == STRONGEST]
            if named:
                s = named[0]["robust_acc_worst"]
                weaker = [r for r in group if r is not named[0] and min(r["robust_acc"], r["robust_acc_worst"]) < s]
                if weaker:
                    failures.append(
                        f"{defense} / {variant}: the strongest protocol ({pct(s)}) is above "
                        + ", ".join(
                            f"{r['protocol']} ({pct(min(r['robust_acc'], r['robust_acc_worst']))})" for r in weaker
                        )
                    )
    for paragraph in checks_protocol([r["checks"] for r in rows]):
        lines += ["", paragraph]
    lines += ["", "## Strongest-protocol check", ""]
    if failures:
        lines += [
            "**FAILED** — a weaker protocol found more adversarial examples than the designated strongest one:",
            "",
        ]
        lines += [f"- {f}" for f in failures]
        print("STRONGEST-PROTOCOL CHECK FAILED:\n" + "\n".join(failures), file=sys.stderr)
    else:
        lines += [f"Passed: for every defense variant, '{STRONGEST}' is at or below every other protocol."]
    if any(_bound(r) for r in rows):
        lines += [
            "",
            "The rows marked *an upper bound* ran one attack, not the full ensemble (APGD-CE, APGD-DLR, "
            "APGD-T, Square): the strongest protocol above is the strongest of these protocols for that attack, "
            "not the strongest attack, and its robust accuracy is an upper bound.",
        ]
    lines += [
        "",
        "## Gradient-variance diagnostic (picks the EOT size)",
        "",
        "Rule (rdc_lib.evaluation.grad.suggest_eot): the smallest EOT size M at which two independent "
        "M-draw averages of "
        "the gradient reach the target cosine, from the 10th percentile of the per-image cosines of repeated "
        f"gradients; the library's target is EOT_TARGET = {EOT_TARGET}. The size used is capped for CPU time.",
        "",
        *table(
            ["defense", "mean cosine of repeated gradients", "cosine used (10th pct.)", "target", "EOT by rule"]
            + ["EOT used (cap)"]
        ),
    ]
    for d, v in diag.items():
        target = v.get("target", f"{LEGACY_EOT_TARGET} (before the target was recorded)")
        on = f" ({v['split']} images 0-{v['n'] - 1})" if "split" in v else ""
        lines.append(
            f"| {d}{on} | {v['mean_cosine']:.3f} | {v['cosine_used']:.3f} | {target} | {v['eot_rule']} | "
            f"{v['eot']} ({v.get('cap', EOT_CAP)}) |"
        )
    lines += [
        "",
        "## Seconds per cell",
        "",
        "Wall seconds of the whole cell (sanity checks included: a fixed cost on the check images, "
        "whatever n is) and per "
        "image; a resumed cell counts only its last run.",
        "",
        *table(["defense", "variant", "protocol", "seconds", "seconds per image"]),
    ]
    lines += [
        f"| {r['defense']} | {r['variant']} | {r['protocol']} | {r['seconds']:.0f} | {r['seconds'] / r['n']:.1f} |"
        for r in rows
    ]
    lines += ["", "## Commands", ""]
    if any(r["n"] < MIN_CHECK_IMAGES and r.get("run_checks", True) for r in rows):
        lines += [
            f"Rows on fewer than {MIN_CHECK_IMAGES} images ran the earlier sanity checks on 16 images; `rdc eval` "
            f"now refuses checks on fewer than {MIN_CHECK_IMAGES} images (with a message), so rerun such a "
            f"command with `--n {MIN_CHECK_IMAGES}` or more.",
            "",
        ]
    lines += [f"- {r['defense']} / {r['variant']} / {r['protocol']}: `{r['command']}`" for r in rows]
    lines += [
        "",
        "## Provenance",
        "",
        "Commit (and whether the working tree had uncommitted changes) of the code that "
        "measured each cell; checkpoint hashes, library versions and the full command are in the raw rows "
        "(docs/raw/evaluation.jsonl, docs/raw/eot_diagnostic.json).",
        "",
        *table(["defense", "variant", "protocol", "provenance"]),
    ]
    lines += [f"| {r['defense']} | {r['variant']} | {r['protocol']} | {describe(r)} |" for r in rows]
    lines += [f"| {d} | EOT diagnostic | gradient cosine | {describe(v)} |" for d, v in diag.items()]
    if args.notes and Path(args.notes).is_file():
        lines += ["", Path(args.notes).read_text()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (``run``'s EOT diagnostic reads the validation split unless told otherwise)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--defenses", nargs="+", default=["cnn", "at-cnn", "dc", "rdc"])
    r.add_argument("--n", type=int, default=32)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--eps", type=float, default=0.1)
    r.add_argument("--timesteps", type=int, default=16)
    r.add_argument("--n-eval", type=int, default=10)
    r.add_argument("--records", default="runs/evaluation")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="images per chunk (records saved after each, so a killed run resumes there; default: n)",
    )
    r.add_argument("--denoiser", default=DENOISER, help=f"multi-head checkpoint to evaluate (default {DENOISER})")
    r.add_argument("--only", nargs="*", default=None, help="run only these protocol names")
    r.add_argument("--verify", type=int, default=VERIFY, help="calls that must all misclassify (strongest protocol)")
    add_split_argument(r)  # the EOT diagnostic's images (the protocols themselves are measured on test images)
    d = sub.add_parser("doc")
    d.add_argument("--records", default="runs/evaluation")
    d.add_argument("--n-eval", type=int, default=10)
    d.add_argument("--out", default="docs/evaluation.md")
    d.add_argument("--notes", default="docs/evaluation_notes.md")
    m = sub.add_parser("merge", help="join runs split across record folders into one (then `doc` it)")
    m.add_argument("sources", nargs="+", type=Path, help="--records folders of `run`")
    m.add_argument(
        "--records", default="runs/evaluation", help="folder to write (evaluation.jsonl, eot_diagnostic.json)"
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "merge":
        rows, diag = merge(args.sources, Path(args.records))
        print(f"{len(rows)} rows, EOT { ({d: v['eot'] for d, v in diag.items()}) } -> {args.records}")
        return 0
    if args.cmd == "run":
        run(args)
        return 0
    return doc(args)


if __name__ == "__main__":
    sys.exit(main())
