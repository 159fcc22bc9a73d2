"""Issue 11: the optimal diffusion classifier vs the learned one on digits, measured; writes docs/theory.md.

    python benchmarks/drivers/theory_report.py run      # defaults: ~15-20 min on one loaded CPU core; writes
                                                # docs/raw/theory.json, then docs/theory.md from it
    python benchmarks/drivers/theory_report.py doc      # docs/theory.md from docs/raw/theory.json only
    python benchmarks/drivers/theory_report.py run --n 16 --T 4 --steps 2 --square-queries 20 \\
        --raw /tmp/t.json --out /tmp/t.md       # smoke run

What it measures (docs/paper.md sections 6 and 7), for the optimal DC (``OptimalDenoiser`` of the digits
training split) and the learned DC (multi-head checkpoint), both on the same paper grid of T levels:

1. Clean and robust accuracy on the first ``n`` test images AND the first ``n`` training images (the
   images the optimum was built from), l_inf 0.1 and l2 0.5, with fixed noise (deterministic classifier):
   PGD / APGD-CE / APGD-DLR with exact gradients, Square (score-based), transfer from the standard CNN,
   the closed-form nearest-neighbour attack, and gradient transfer from a smoothed surrogate (the same
   DC on levels sigma >= sigma_min, BPDA-style); worst case per example over all of them.
2. Stochastic noise mode: the fixed-mode worst-case images and APGD-DLR with EOT, each image
   re-classified 3 times (robust = correct every time).
3. Sanity checks on ``--checks-n`` test images: input gradients finite/non-zero (CE and margin losses),
   CE saturation, finite differences, gradient cosine across noise draws, the surrogate transfer, and the
   library's checks (rdc_lib.evaluation.checks: large budget, 2x steps, Square with 2x queries, transfer from
   the CNN, paired image by image against the white box). Raw files written before the library's checks were
   called here carry the report's earlier versions of the last four (``more_steps``, tolerance 0.125).
4. 1-NN agreement, which training image dominates D*'s softmax per level, the per-level denoising-error
   gap learned - optimal (``gap_by_sigma``) on test and training images, and each level's share of the
   logit margin.

Accuracies are counts with 95% Wilson intervals. Every number in the output file comes from the raw JSON
of one run (its provenance: commit, checkpoint hashes, library versions, command).
The last printed line is a JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from rdc_lib.core.paths import checkpoint_path
from rdc_lib.data import load_dataset
from rdc_lib.defenses.baselines import load_classifier
from rdc_lib.defenses.classifier import DiffusionClassifier
from rdc_lib.diffusion.schedules import make_grid
from rdc_lib.evaluation import EvalConfig
from rdc_lib.evaluation.checks import run_sanity_checks
from rdc_lib.evaluation.grad import check_gradients_finite_nonzero, finite_difference_check, gradient_cosine_similarity
from rdc_lib.evaluation.protocol import robustness_protocol
from rdc_lib.evaluation.provenance import describe, provenance, relative_to_repo
from rdc_lib.evaluation.stats import wilson
from rdc_lib.experiments.nearest_neighbour import (
    nearest_neighbour_agreement,
    nearest_neighbour_predict,
    nn_certified_radius,
)
from rdc_lib.experiments.theory import dominant_training_image, gap_by_sigma, margin_by_sigma, smoothed_surrogate
from rdc_lib.models import load_denoiser
from rdc_lib.models.optimal import OptimalDenoiser

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the repository root: benchmarks.common
from benchmarks.common import Notes, counted, measured_on, pct, table  # noqa: E402

ATTACK_ORDER = ("cnn", "surrogate", "neighbour", "pgd", "apgd-ce", "apgd-dlr", "square")
# the learned DC breaks under the first gradient attack; the expensive extras then run only on survivors
LEARNED_ORDER = ("apgd-dlr", "apgd-ce", "pgd", "cnn", "neighbour", "surrogate", "square")
LEARNED_ON_SURVIVORS = ("neighbour", "surrogate", "square")
ATTACK_LABELS = {
    "cnn": "transfer CNN",
    "surrogate": "surrogate",
    "neighbour": "neighbour",
    "pgd": "PGD",
    "apgd-ce": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "square": "Square",
    "fixed-worst": "fixed-mode worst",
}
TOLERANCE = 0.125  # accuracy noise allowed by the surrogate check (and the earlier comparative checks)
RAW = ROOT / "docs" / "raw" / "theory.json"
NOTES = ROOT / "docs" / "theory_notes.md"  # the hand-written words of docs/theory.md


def parse_args(argv=None) -> argparse.Namespace:
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="measure, write the raw JSON (with provenance), then the document from it")
    p.add_argument("--n", type=int, default=100, help="test images and training images (each)")
    p.add_argument("--T", type=int, default=16, help="levels of the paper grid (both classifiers)")
    p.add_argument("--steps", type=int, default=10, help="iterations of PGD / APGD")
    p.add_argument("--square-queries", type=int, default=500, help="Square's query budget")
    p.add_argument("--transfer-steps", type=int, default=20, help="PGD steps on the CNN and the surrogate")
    p.add_argument("--stochastic-eot", type=int, default=2, help="EOT draws of APGD-DLR in the stochastic mode")
    p.add_argument("--n-eval", type=int, default=3, help="re-classifications in the stochastic mode")
    p.add_argument("--checks-n", type=int, default=16, help="test images used by the sanity checks")
    p.add_argument("--gap-levels", type=int, default=16, help="log-spaced levels of the gap curves")
    p.add_argument(
        "--surrogate-sigma-min",
        type=float,
        default=None,
        help="surrogate keeps levels sigma >= this (default: first level where D*'s largest softmax "
        "weight on test images drops below 0.9)",
    )
    p.add_argument("--threats", default="linf:0.1,l2:0.5", help="comma list of norm:eps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None, help="multi-head denoiser (default: shipped digits_multi)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "theory.md")
    p.add_argument("--raw", type=Path, default=RAW, help="every figure of the run as JSON (the doc's only source)")
    d = sub.add_parser("doc", help="write the document from the raw JSON only")
    d.add_argument("--raw", type=Path, default=RAW)
    d.add_argument("--out", type=Path, default=ROOT / "docs" / "theory.md")
    d.add_argument("--notes", type=Path, default=NOTES, help="the hand-written words (a notes template)")
    return top.parse_args(argv)


def doc(raw: Path, out: Path, notes: Path = NOTES) -> str:
    """The document generated from the raw JSON and the notes template alone (deterministic: no clock, no
    machine state)."""
    R = json.loads(Path(raw).read_text())
    text = render(R, R.get("argv", []), notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


# ------------------------------------------------------------------------------------------ checks
def _frac_saturated(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(fraction with 1 - p(y|x) < 1e-6, median cross-entropy) on clean images."""
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    return float((ce < 1e-6).float().mean()), float(ce.median())


def _white_box_images(main, n: int) -> torch.Tensor:
    """(n, C, H, W): per check image the first of PGD, APGD-CE, APGD-DLR's images that broke it, else APGD-DLR's."""
    out = main.x_adv["apgd-dlr"][:n].clone()
    done = ~main.robust["apgd-dlr"][:n]
    for name in ("pgd", "apgd-ce"):
        take = ~main.robust[name][:n] & ~done
        out[take] = main.x_adv[name][:n][take]
        done |= take
    return out


def sanity_checks(
    fixed, stochastic, x, y, main, *, norm, eps, steps, square_queries, seed, defense="optimal-dc"
) -> dict:
    """Masking checks on (x, y) (the first checks-n test images); ``main`` = the fixed-mode ProtocolResult.

    The report's own diagnostics (gradient details, float64 finite differences over all check images, gradient
    cosine in the stochastic mode, the surrogate transfer) plus the library's checks (``run_sanity_checks``:
    ``large_budget``, ``convergence``, ``black_box``, ``transfer``; ``defense`` names the evaluated model there)."""
    n = x.shape[0]
    out: dict = {}
    g_ce = check_gradients_finite_nonzero(fixed, x, y, loss="ce")
    g_m = check_gradients_finite_nonzero(fixed, x, y, loss="margin")
    sat, ce_med = _frac_saturated(fixed, x, y)
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(fixed(xg), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    out["gradients"] = {
        "passed": g_ce.passed and g_m.passed,
        "ce": g_ce.message,
        "margin": g_m.message,
        "ce_grad_mean_abs": float(grad.abs().mean()),
        "ce_saturated_fraction": sat,
        "ce_median": ce_med,
        "margin_grad_norm_median": float(g_m.grad_norm.median()),
    }
    with torch.no_grad():
        logits = fixed(x)
    margin = logits.gather(1, y[:, None]).squeeze(1) - logits.scatter(1, y[:, None], float("-inf")).amax(1)
    radius = margin / g_m.grad_norm.to(margin.device).clamp_min(1e-12)
    out["gradients"]["first_order_l2_radius_median"] = float(radius[margin > 0].median()) if (margin > 0).any() else 0.0
    # finite differences in float64 (a float64 copy of the classifier: float32 rounding would dominate the
    # central differences where a directional derivative is small)
    fixed64 = copy.deepcopy(fixed).double()
    fd = finite_difference_check(
        fixed64, x.double(), y, n_directions=4, eps=1e-4, loss="margin", generator=torch.Generator().manual_seed(seed)
    )
    out["finite_differences"] = {
        "passed": fd.passed,
        "max_rel_error": fd.max_rel_error,
        "median_rel_error": float(fd.rel_error.median()),
        "eps": fd.eps,
        "tol": fd.tol,
    }
    cos = gradient_cosine_similarity(stochastic, x, y, n_samples=4, loss="margin")
    out["gradient_cosine"] = {
        "mean": cos.mean,
        "min": float(cos.per_example.min()),
        "detail": "stochastic mode, 4 draws, margin loss",
    }
    # large budget, convergence, black box and transfer: the library's checks (rdc_lib.evaluation.checks), with
    # the white-box result of the protocol (per image the worst of PGD, APGD-CE and APGD-DLR) as the baseline
    cfg = EvalConfig(
        defense=defense,
        attack="apgd-dlr",
        norm=norm,
        eps=eps,
        steps=steps,
        n=n,
        seed=seed,
        square_queries=2 * square_queries,
        noise_mode="fixed",
    )
    library = run_sanity_checks(cfg, fixed, x, y, _white_box_images(main, n), device=x.device, n_check=n)
    out.update({k: v for k, v in library.items() if k not in ("gradients", "finite_difference")})
    wb_all = float((main.robust["apgd-dlr"] & main.robust["apgd-ce"] & main.robust["pgd"]).float().mean())
    sur = float(main.robust["surrogate"].float().mean())
    out["surrogate"] = {"passed": sur >= wb_all - TOLERANCE, "robust_acc": sur, "baseline": wb_all}
    out["trusted"] = all(v["passed"] for v in out.values() if isinstance(v, dict) and "passed" in v)
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cmd == "doc":
        doc(args.raw, args.out, args.notes)
        print(f"wrote {args.out}")
        return json.loads(args.raw.read_text())
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    threats = []
    for item in args.threats.split(","):
        norm, eps = item.split(":")
        threats.append((norm.strip(), float(eps)))

    x_tr, y_tr = load_dataset("digits", "train")
    x_te, y_te = load_dataset("digits", "test")
    n = min(args.n, x_te.shape[0])
    sets = {"test": (x_te[:n], y_te[:n]), "train": (x_tr[:n], y_tr[:n])}
    grid = make_grid(args.T)
    ckpt = args.checkpoint or checkpoint_path("digits_multi")
    prov = provenance([ckpt, checkpoint_path("digits_cnn")])
    opt_den = OptimalDenoiser(x_tr, y_tr)
    learned_den = load_denoiser(ckpt)
    denoisers = {"optimal": opt_den, "learned": learned_den}
    fixed = {k: DiffusionClassifier(d, grid, noise_mode="fixed", seed=args.seed).eval() for k, d in denoisers.items()}
    stoch = {
        k: DiffusionClassifier(d, grid, noise_mode="stochastic", seed=args.seed + 1).eval()
        for k, d in denoisers.items()
    }
    cnn = load_classifier(checkpoint_path("digits_cnn"))
    R: dict = {
        "settings": {
            "n": n,
            "T": args.T,
            "grid": "paper",
            "steps": args.steps,
            "square_queries": args.square_queries,
            "transfer_steps": args.transfer_steps,
            "stochastic_eot": args.stochastic_eot,
            "n_eval": args.n_eval,
            "checks_n": args.checks_n,
            "seed": args.seed,
            "threats": threats,
            "checkpoint": relative_to_repo(ckpt),
        }
    }

    # --- nearest-neighbour behaviour (needed first: it sets the surrogate's sigma_min) -------------
    gen = torch.Generator().manual_seed(args.seed)
    dom = {s: dominant_training_image(opt_den, x, grid, y, gen) for s, (x, y) in sets.items()}
    R["dominance"] = {
        s: {
            "sigmas": d.sigmas.tolist(),
            "top_weight": d.top_weight.mean(0).tolist(),
            "matches_nn": d.matches_nn.float().mean(0).tolist(),
            "effective_count": d.effective_count.mean(0).tolist(),
        }
        for s, d in dom.items()
    }
    if args.surrogate_sigma_min is None:
        soft = [float(s) for s, w in zip(dom["test"].sigmas, dom["test"].top_weight.mean(0)) if w < 0.9]
        sigma_min = soft[0] if soft else float(grid.sigmas[len(grid) // 2])
    else:
        sigma_min = args.surrogate_sigma_min
    R["settings"]["surrogate_sigma_min"] = sigma_min
    surrogates = {k: smoothed_surrogate(m, sigma_min) for k, m in fixed.items()}

    with torch.no_grad():
        logits = {(m, s): fixed[m](x) for m in fixed for s, (x, _) in sets.items()}
    nn_acc = {
        s: wilson(int((nearest_neighbour_predict(x, x_tr, y_tr, exclude_exact=(s == "train")) == y).sum()), n)
        for s, (x, y) in sets.items()
    }
    agree = {}
    for m in fixed:
        for s, (x, _y) in sets.items():
            agree[f"{m}/{s}"] = nearest_neighbour_agreement(logits[(m, s)], x, x_tr, y_tr).agreement
            if s == "train":
                agree[f"{m}/{s} (leave-one-out 1-NN)"] = nearest_neighbour_agreement(
                    logits[(m, s)], x, x_tr, y_tr, exclude_exact=True
                ).agreement
    R["nn"] = {"nn_accuracy": {s: a.as_dict() for s, a in nn_acc.items()}, "agreement": agree, "certified": {}}
    for norm, eps in threats:
        for s, (x, y) in sets.items():
            radius = nn_certified_radius(x, y, x_tr, y_tr, norm)
            R["nn"]["certified"][f"{norm} {eps:g}|{s}"] = {
                **wilson(int((radius > eps).sum()), n).as_dict(),
                "median_radius": float(radius.median()),
            }

    # --- robustness, fixed noise ------------------------------------------------------------------
    R["fixed"], R["stochastic"], R["checks"], R["adv_agreement"] = {}, {}, {}, {}
    results = {}
    for norm, eps in threats:
        tkey = f"{norm} {eps:g}"
        for m, model in fixed.items():
            for s, (x, y) in sets.items():
                t0 = time.perf_counter()
                order = LEARNED_ORDER if m == "learned" else ATTACK_ORDER
                res = robustness_protocol(
                    model,
                    x,
                    y,
                    norm=norm,
                    eps=eps,
                    attacks=order,
                    steps=args.steps,
                    square_queries=args.square_queries,
                    seed=args.seed,
                    transfer_from={"cnn": cnn, "surrogate": surrogates[m]},
                    transfer_steps=args.transfer_steps,
                    neighbours=(x_tr, y_tr),
                    on_survivors=LEARNED_ON_SURVIVORS if m == "learned" else (),
                )
                results[(tkey, m, s)] = res
                R["fixed"][f"{tkey}|{m}|{s}"] = res.to_dict()
                print(
                    f"[{time.perf_counter() - t_start:6.0f}s] fixed {tkey} {m:8s} {s:5s} clean "
                    f"{res.accuracy('clean').value:.2f} worst {res.accuracy('worst').value:.2f} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                if m == "optimal":
                    xw = res.x_worst()
                    with torch.no_grad():
                        lw = model(xw)
                    broken = res.clean_correct & ~res.worst
                    if broken.any():
                        a = nearest_neighbour_agreement(lw[broken], xw[broken], x_tr, y_tr)
                        R["adv_agreement"][f"{tkey}|{s}"] = {"agreement": a.agreement, "n": int(broken.sum())}
        # --- stochastic mode
        for m in fixed:
            for s, (x, y) in sets.items():
                t0 = time.perf_counter()
                res = robustness_protocol(
                    stoch[m],
                    x,
                    y,
                    norm=norm,
                    eps=eps,
                    attacks=("fixed-worst", "apgd-dlr"),
                    steps=args.steps,
                    eot=args.stochastic_eot,
                    n_eval=args.n_eval,
                    seed=args.seed,
                    precomputed={"fixed-worst": results[(tkey, m, s)].x_worst()},
                    on_survivors=("apgd-dlr",),
                )
                R["stochastic"][f"{tkey}|{m}|{s}"] = res.to_dict()
                print(
                    f"[{time.perf_counter() - t_start:6.0f}s] stochastic {tkey} {m:8s} {s:5s} worst "
                    f"{res.accuracy('worst').value:.2f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
        # --- sanity checks
        xc, yc = x_te[: args.checks_n], y_te[: args.checks_n]
        for m in fixed:
            t0 = time.perf_counter()
            R["checks"][f"{tkey}|{m}"] = sanity_checks(
                fixed[m],
                stoch[m],
                xc,
                yc,
                results[(tkey, m, "test")],
                norm=norm,
                eps=eps,
                steps=args.steps,
                square_queries=args.square_queries,
                seed=args.seed,
                defense="optimal-dc" if m == "optimal" else "dc",
            )
            print(
                f"[{time.perf_counter() - t_start:6.0f}s] checks {tkey} {m} trusted="
                f"{R['checks'][f'{tkey}|{m}']['trusted']} ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )

    # --- gap and margins --------------------------------------------------------------------------
    gap_sigmas = torch.logspace(math.log10(0.002), math.log10(3.0), args.gap_levels)
    R["gap"] = {
        s: gap_by_sigma(learned_den, opt_den, x, y, gap_sigmas, torch.Generator().manual_seed(args.seed)).to_dict()
        for s, (x, y) in sets.items()
    }
    R["margin"] = {}
    for m, model in fixed.items():
        for s, (x, y) in sets.items():
            R["margin"][f"{m}|{s}|clean"] = margin_by_sigma(model, x, y).to_dict()
        tkey = f"{threats[0][0]} {threats[0][1]:g}"
        res = results[(tkey, m, "test")]
        ok = res.clean_correct
        x, y = sets["test"]
        if ok.any():
            R["margin"][f"{m}|test|adversarial {tkey}"] = margin_by_sigma(model, res.x_worst()[ok], y[ok]).to_dict()
    R["seconds"] = time.perf_counter() - t_start
    R["environment"] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": 1,
        "machine": platform.machine(),
    }

    R["argv"] = list(argv if argv is not None else sys.argv[1:])
    R["provenance"] = prov
    args.raw.parent.mkdir(parents=True, exist_ok=True)
    args.raw.write_text(json.dumps(R, indent=1) + "\n")
    doc(args.raw, args.out)
    headline = headline_numbers(R)
    print(json.dumps(headline))
    return R


def headline_numbers(R: dict) -> dict:
    out = {"seconds": round(R["seconds"], 1), "n": R["settings"]["n"], "T": R["settings"]["T"]}
    for key, res in R["fixed"].items():
        out[f"fixed|{key}|clean"] = res["clean"]["value"]
        out[f"fixed|{key}|worst"] = res["worst"]["value"]
    for key, res in R["stochastic"].items():
        out[f"stochastic|{key}|worst"] = res["worst"]["value"]
    return out


# ------------------------------------------------------------------------------------------ report text
def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def render(R: dict, argv: list[str], notes: Path = NOTES) -> str:
    """docs/theory.md from the raw results ``R``: the numbers from ``R``, the words from the notes template."""
    N = Notes(notes)
    st = R["settings"]
    threats = [f"{n} {e:g}" for n, e in st["threats"]]
    cmd = "python benchmarks/drivers/theory_report.py" + ("" if not argv else " " + " ".join(argv))
    env = R["environment"]
    L: list[str] = []
    header = N(
        "header",
        command=cmd,
        minutes=R["seconds"] / 60,
        torch=env["torch"],
        python=env["python"],
        machine=env["machine"],
        provenance=describe(R),
        measured_on=measured_on([Path(st["checkpoint"]).stem]),
    )
    L.append(header + "\n")
    L.append(N("setup", **{**st, "checkpoint": Path(st["checkpoint"]).name, "threats": ", ".join(threats)}))
    L.append("")
    L.append(N("order") + "\n")

    # clean
    rows = []
    for m in ("optimal", "learned"):
        for s in ("test", "train"):
            res = R["fixed"][f"{threats[0]}|{m}|{s}"]
            rows.append([f"{m} DC", s, counted(res["clean"])])
    for s in ("test", "train"):
        rows.append(["1-NN (l2)" + (" leave-one-out" if s == "train" else ""), s, counted(R["nn"]["nn_accuracy"][s])])
    L.append(_table(["classifier", "images", "clean accuracy"], rows))
    L.append("")

    # robust tables
    for t in threats:
        L.append(f"## Robust accuracy, {t}, fixed noise\n")
        rows = []
        for m in ("optimal", "learned"):
            for s in ("test", "train"):
                res = R["fixed"][f"{t}|{m}|{s}"]
                cells = [f"{m} DC", s, counted(res["clean"])]
                for a in ATTACK_ORDER:
                    cells.append(counted(res["attacks"][a], "†" if a in res["on_survivors"] else ""))
                cells.append("**" + counted(res["worst"]) + "**")
                rows.append(cells)
        L.append(_table(["model", "images", "clean"] + [ATTACK_LABELS[a] for a in ATTACK_ORDER] + ["worst case"], rows))
        L.append("")
        secs = []
        for m in ("optimal", "learned"):
            for s in ("test", "train"):
                sec = R["fixed"][f"{t}|{m}|{s}"]["seconds"]
                secs.append(f"{m}/{s} " + ", ".join(f"{ATTACK_LABELS[k]} {v:.0f}s" for k, v in sec.items()))
        L.append("Attack times: " + "; ".join(secs) + ".\n")

    L.append(N("nn_bound") + "\n")
    rows = []
    for t in threats:
        for s in ("test", "train"):
            c = R["nn"]["certified"][f"{t}|{s}"]
            rows.append(
                [t, s, counted(c), f"{c['median_radius']:.3f}", counted(R["fixed"][f"{t}|optimal|{s}"]["worst"])]
            )
    L.append(
        _table(
            [
                "threat",
                "images",
                "1-NN certified (radius > eps)",
                "median certified radius",
                "optimal DC, empirical worst case",
            ],
            rows,
        )
    )
    L.append("")

    L.append("## Stochastic noise mode\n")
    rows = []
    for t in threats:
        for m in ("optimal", "learned"):
            for s in ("test", "train"):
                res = R["stochastic"][f"{t}|{m}|{s}"]
                rows.append(
                    [
                        t,
                        f"{m} DC",
                        s,
                        counted(res["clean"]),
                        counted(res["attacks"]["fixed-worst"]),
                        counted(res["attacks"]["apgd-dlr"], "†"),
                        "**" + counted(res["worst"]) + "**",
                    ]
                )
    L.append(
        _table(
            [
                "threat",
                "model",
                "images",
                "clean (1 draw)",
                "fixed-mode worst-case images",
                f"+ APGD-DLR EOT {st['stochastic_eot']}",
                "worst case",
            ],
            rows,
        )
    )
    L.append("")

    # checks
    L.append(f"## Sanity checks (first {st['checks_n']} test images, fixed noise unless stated)\n")
    legacy = all("more_steps" in c for c in R["checks"].values())  # raw written before the library's checks
    steps_key = "more_steps" if legacy else "convergence"

    def check(c: dict, detail: str) -> str:
        return ("pass" if c["passed"] else "FAIL") + detail

    rows = []
    for t in threats:
        for m in ("optimal", "learned"):
            c = R["checks"][f"{t}|{m}"]
            g, fd = c["gradients"], c["finite_differences"]
            rows.append(
                [
                    t,
                    f"{m} DC",
                    check(g, f" (CE: {g['ce']}; margin: {g['margin']})"),
                    f"{g['ce_grad_mean_abs']:.2e}",
                    f"{pct(g['ce_saturated_fraction'])} (median CE {g['ce_median']:.2e})",
                    f"{g['margin_grad_norm_median']:.3g}",
                    f"{g['first_order_l2_radius_median']:.3g}",
                    check(fd, f" (max {fd['max_rel_error']:.2g}, median {fd['median_rel_error']:.2g})"),
                    f"{c['gradient_cosine']['mean']:.3f} (min {c['gradient_cosine']['min']:.3f})",
                    check(
                        c["large_budget"],
                        f" ({pct(c['large_budget']['robust_acc'])} at {c['large_budget']['eps']:g})",
                    ),
                    *[
                        check(c[k], f" ({pct(c[k]['robust_acc'])} vs {pct(c[k]['baseline'])})")
                        for k in (steps_key, "black_box", "transfer", "surrogate")
                    ],
                    "**yes**" if c["trusted"] else "**NO**",
                ]
            )
    L.append(
        _table(
            [
                "threat",
                "model",
                "gradients finite, non-zero",
                "mean abs CE gradient",
                "CE saturated",
                "median margin-gradient norm",
                "median first-order l2 radius",
                "finite differences (float64 copy, margin, rel. error < 0.05)",
                "gradient cosine, stochastic",
                "large budget (APGD-DLR) <= 10%",
                f"APGD-DLR 2x steps vs {st['steps']}",
                f"Square {2 * st['square_queries']} queries vs white box",
                "transfer CNN vs white box (all images)" if legacy else "transfer CNN vs white box (check images)",
                "surrogate vs white box (all images)",
                "trusted",
            ],
            rows,
        )
    )
    L.append("")
    note = N("checks.gradient_note")
    if legacy:
        L.append(N("checks.legacy", tolerance=TOLERANCE, gradient_note=note) + "\n")
    else:
        entry = next(c["convergence"] for c in R["checks"].values())
        L.append(N("checks.library", **entry, tolerance=TOLERANCE, gradient_note=note) + "\n")

    # NN
    L.append("## Nearest-neighbour behaviour\n")
    rows = [[k, pct(v)] for k, v in R["nn"]["agreement"].items()]
    for k, v in R["adv_agreement"].items():
        t, s = k.split("|")
        rows.append([f"optimal/{s} at its broken worst-case images, {t} (n = {v['n']})", pct(v["agreement"])])
    L.append(_table(["DC / images", "prediction = 1-NN prediction"], rows))
    L.append("")
    L.append(N("dominance") + "\n")
    d_te, d_tr = R["dominance"]["test"], R["dominance"]["train"]
    rows = [
        [f"{s:.3g}", f"{a:.3f}", pct(b), f"{c:.1f}", f"{d:.3f}", pct(e)]
        for s, a, b, c, d, e in zip(
            d_te["sigmas"],
            d_te["top_weight"],
            d_te["matches_nn"],
            d_te["effective_count"],
            d_tr["top_weight"],
            d_tr["matches_nn"],
        )
    ]
    L.append(
        _table(
            [
                "sigma",
                "test: largest weight",
                "test: = nearest",
                "test: effective # images",
                "train: largest weight",
                "train: = itself",
            ],
            rows,
        )
    )
    L.append("")

    # gap
    L.append(N("gap") + "\n")
    g_te, g_tr = R["gap"]["test"], R["gap"]["train"]
    rows = [
        [f"{s:.3g}", f"{a:.4f}", f"{b:.4f}", f"{c:+.4f}", f"{d:.4f}", f"{e:.4f}", f"{f:+.4f}"]
        for s, a, b, c, d, e, f in zip(
            g_te["sigmas"], g_te["learned"], g_te["optimal"], g_te["gap"], g_tr["learned"], g_tr["optimal"], g_tr["gap"]
        )
    ]
    L.append(
        _table(
            ["sigma", "test: learned", "test: optimal", "test: gap", "train: learned", "train: optimal", "train: gap"],
            rows,
        )
    )
    L.append("")
    L.append(N("margin") + "\n")
    keys = list(R["margin"])
    sig = R["margin"][keys[0]]["sigmas"]
    rows = [[f"{s:.3g}"] + [f"{R['margin'][k]['mean_per_level'][i]:+.3f}" for k in keys] for i, s in enumerate(sig)]
    rows.append(["**sum (= mean margin)**"] + [f"{sum(R['margin'][k]['mean_per_level']):+.3f}" for k in keys])
    L.append(_table(["sigma"] + [k.replace("|", " / ") for k in keys], rows))
    L.append("")
    L.append("## Analysis\n")
    L.extend(analysis(R, threats, N))
    return "\n".join(L) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(table(header, rows))


def analysis(R: dict, threats: list[str], N: Notes) -> list[str]:
    """Paragraphs whose numbers and direction words are computed from R (no hand-written figures): the notes
    template's words, the variant each measured comparison selects."""
    out = []
    st = R["settings"]

    def w(m, s, t):
        return R["fixed"][f"{t}|{m}|{s}"]["worst"]

    for t in threats:
        ot, otr, lt, ltr = (
            w("optimal", "test", t),
            w("optimal", "train", t),
            w("learned", "test", t),
            w("learned", "train", t),
        )
        optimal_gap, learned_gap = otr["value"] - ot["value"], ltr["value"] - lt["value"]
        out.append(
            N(
                "memorised",
                threat=t,
                optimal_train=counted(otr),
                optimal_test=counted(ot),
                optimal_reading=N(f"memorised.optimal.{_yes_no(optimal_gap > 0.05)}", points=100 * optimal_gap),
                learned_test=counted(lt),
                learned_train=counted(ltr),
                learned_reading=N(f"memorised.learned.{_yes_no(abs(learned_gap) > 0.1)}", points=100 * learned_gap),
                difference=100 * (ot["value"] - lt["value"]),
            )
        )
    # masking
    for t in threats:
        c = R["checks"][f"{t}|optimal"]
        learned = R["checks"][f"{t}|learned"]
        res = R["fixed"][f"{t}|optimal|test"]["attacks"]
        best = min(ATTACK_ORDER, key=lambda a: res[a]["value"])
        g = c["gradients"]
        failed = ", ".join(k for k, v in c.items() if isinstance(v, dict) and v.get("passed") is False)
        free = min(res["square"]["value"], res["neighbour"]["value"], res["cnn"]["value"], res["surrogate"]["value"])
        white = min(res["apgd-dlr"]["value"], res["pgd"]["value"], res["apgd-ce"]["value"])
        out.append(
            N(
                "masking",
                threat=t,
                verdict=N(f"masking.verdict.{_yes_no(c['trusted'])}", failed=failed),
                finite=N(f"masking.finite.{_yes_no(g['passed'])}"),
                grad=g["ce_grad_mean_abs"],
                checks_n=st["checks_n"],
                grad_batch=g["ce_grad_mean_abs"] / st["checks_n"],
                saturated=pct(g["ce_saturated_fraction"]),
                differences=N(f"masking.differences.{_yes_no(c['finite_differences']['passed'])}"),
                fd_error=c["finite_differences"]["max_rel_error"],
                large_budget=pct(c["large_budget"]["robust_acc"]),
                strongest=ATTACK_LABELS[best],
                strongest_cell=counted(res[best]),
                square=counted(res["square"]),
                neighbour=counted(res["neighbour"]),
                cnn=counted(res["cnn"]),
                surrogate=counted(res["surrogate"]),
                ce_median=g["ce_median"],
                margin_gradient=N(
                    "masking.margin_gradient."
                    + _yes_no(g["margin_grad_norm_median"] > learned["gradients"]["margin_grad_norm_median"])
                ),
                margin_norm=g["margin_grad_norm_median"],
                learned_margin_norm=learned["gradients"]["margin_grad_norm_median"],
                masked=N(f"masking.masked.{_yes_no(free < white - 0.05)}"),
                variation=N(f"masking.variation.{_yes_no(c['gradient_cosine']['mean'] < 0.95)}"),
                cosine=c["gradient_cosine"]["mean"],
                learned_cosine=learned["gradient_cosine"]["mean"],
            )
        )
    for t in threats:
        c, o = R["nn"]["certified"][f"{t}|test"], R["fixed"][f"{t}|optimal|test"]["worst"]
        close = o["value"] - c["value"] <= 0.10
        reading = N(f"certificate.close.{_yes_no(close)}", points=100 * (o["value"] - c["value"]))
        out.append(N("certificate", threat=t, certified=counted(c), empirical=counted(o), reading=reading))
    # gap
    g_te, g_tr = R["gap"]["test"], R["gap"]["train"]
    small = [i for i, s in enumerate(g_te["sigmas"]) if s < 0.1]
    mid = [i for i, s in enumerate(g_te["sigmas"]) if 0.1 <= s <= 1.0]

    def mean(v, idx):
        return sum(v[i] for i in idx) / max(1, len(idx))

    gs_te, gs_tr, gm_te = mean(g_te["gap"], small), mean(g_tr["gap"], small), mean(g_te["gap"], mid)
    out.append(
        N(
            "gap_per_level",
            train_sign="positive" if gs_tr > 0 else "negative",
            train_gap=gs_tr,
            test_sign="negative" if gs_te < 0 else "positive",
            test_gap=gs_te,
            test_reading=N(f"gap_per_level.better.{_yes_no(gs_te < 0)}"),
            mid_gap=gm_te,
        )
    )
    # margin
    mo, ml = R["margin"]["optimal|test|clean"], R["margin"]["learned|test|clean"]
    lo = [i for i, s in enumerate(mo["sigmas"]) if s < st["surrogate_sigma_min"]]
    share_o = sum(mo["mean_per_level"][i] for i in lo) / max(1e-12, sum(mo["mean_per_level"]))
    share_l = sum(ml["mean_per_level"][i] for i in lo) / max(1e-12, sum(ml["mean_per_level"]))
    ratio = sum(mo["mean_per_level"]) / max(1e-12, abs(sum(ml["mean_per_level"])))
    out.append(
        N(
            "margin_share",
            optimal_margin=sum(mo["mean_per_level"]),
            optimal_share=pct(share_o),
            sigma_min=st["surrogate_sigma_min"],
            learned_margin=sum(ml["mean_per_level"]),
            learned_share=pct(share_l),
            optimal_reading=N("margin_share.optimal", ratio=ratio) + " " if share_o > 0.5 else "",
            learned_reading=N("margin_share.learned") + " " if share_l < 0.5 and gs_te < 0 else "",
            threat=threats[0],
            optimal_radius=R["checks"][f"{threats[0]}|optimal"]["gradients"]["first_order_l2_radius_median"],
            learned_radius=R["checks"][f"{threats[0]}|learned"]["gradients"]["first_order_l2_radius_median"],
        )
    )
    out.append(N("caveats", **st))
    return out


if __name__ == "__main__":
    main()
