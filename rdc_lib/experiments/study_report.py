"""docs/denoisers.md from the raw rows of the denoiser study (``benchmarks/drivers/denoiser_study.py doc``).

Deterministic: the same rows give the same text. The rows are measured by rdc_lib.experiments.study.
"""

from __future__ import annotations

from typing import Any

from ..evaluation.provenance import mark
from ..evaluation.stats import wilson
from .study import FACTORS

__all__ = ["render_report"]


def _pct(acc: dict | None) -> str:
    if not acc or not acc.get("total"):
        return "—"
    return (
        f"{100 * acc['value']:.1f}% ({acc['correct']}/{acc['total']}, {100 * acc['low']:.0f}-{100 * acc['high']:.0f})"
    )


def _curve(values: list[float]) -> str:
    return " / ".join(f"{v:+.4f}" if abs(v) < 0.01 else f"{v:+.3f}" for v in values)


def render_report(rows: list[dict[str, Any]], notes: str = "") -> str:
    """docs/denoisers.md from the raw study rows (deterministic: same rows, same text)."""
    if not rows:
        raise ValueError("no study rows to report: run `benchmarks/drivers/denoiser_study.py run` first")
    rows = sorted(rows, key=lambda r: (FACTORS.index(r["factor"]), r["name"]))
    sig = rows[0]["sigmas"]
    lines = [
        "# Which denoiser makes a diffusion classifier robust (denoiser study)",
        "",
        "Written by `benchmarks/drivers/denoiser_study.py doc` from `docs/raw/denoiser_study.jsonl` (never by hand); "
        "every row was measured by `benchmarks/drivers/denoiser_study.py run` and each checkpoint was trained by the "
        "command in the last table. Digits (8x8), diffusion classifier with T = "
        f"{rows[0]['timesteps']} noise levels (paper grid), fixed noise (a deterministic white-box model). "
        "Accuracies with counts and 95% Wilson intervals.",
        "",
        "## Accuracy and cost",
        "",
        "Passes: single-image network evaluations per DC call (K x T single-head, T multi-head). DC s / image: one "
        "DC forward, one CPU thread on a shared machine under varying load (a rough guide; the passes are exact).",
        "",
        "| denoiser | factor | params | passes / image | DC s / image | DC clean (360 test) | robust l_inf 0.1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        clean = wilson(r["dc_clean_correct"], r["dc_clean_total"]).as_dict()
        rob = r.get("robust")
        lines.append(
            f"| {r['name']} | {r['factor']} | {r['params'] / 1e6:.2f}M | {r['passes_per_image']} | "
            f"{r['dc_seconds_per_image']:.4f} | {_pct(clean)} | {_pct(rob)}{mark(r)} |"
        )
    flagged = [r for r in rows if r.get("robust_flags")]
    if len(flagged) > 1:
        m = min(len(r["robust_flags"]) for r in flagged)
        lines += [
            "",
            f"Paired, on the same first {m} test images (the largest set every robust row shares):",
            "",
            "| denoiser | robust l_inf 0.1, first " + str(m) + " images |",
            "|---|---|",
        ]
        for r in flagged:
            lines.append(f"| {r['name']} | {_pct(wilson(sum(r['robust_flags'][:m]), m).as_dict())} |")
    lines += [
        "",
        f"## Class gap per noise level (sigma = {', '.join(f'{s:g}' for s in sig)})",
        "",
        "Mean over images of (smallest wrong-class denoising error) - (true-class error), model space, one "
        "eps per image and level shared by the classes. Positive: the label helps the denoiser.",
        "",
        "| denoiser | gap, test images | gap, train images |",
        "|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {_curve(r['gap_test'])} | {_curve(r['gap_train'])} |")
    lines += [
        "",
        "## Denoising error and distance to the optimal denoiser",
        "",
        "True-class denoising error E(D(x + sigma eps; sigma, y) - x)^2 (model space) on train and test "
        "images, and the mean squared distance to the closed-form optimal denoiser of the training set "
        "(rdc_lib/models/optimal.py) on test images.",
        "",
        "| denoiser | error, train | error, test | distance to optimal, test |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {' / '.join(f'{v:.4f}' for v in r['error_train'])} | "
            f"{' / '.join(f'{v:.4f}' for v in r['error_test'])} | "
            f"{' / '.join(f'{v:.4f}' for v in r['dist_optimal_test'])} |"
        )
    lines += ["", "## Robust column: protocol, effort and seconds", ""]
    lines += [
        "| denoiser | images | seconds (last run) | queries spent / budget | broken by |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        rob = r.get("robust_run")
        if not rob:
            lines.append(f"| {r['name']} | 0 | — | — | — |")
            continue
        broken = ", ".join(f"{k} {v}" for k, v in rob["broken_by"].items())
        lines.append(
            f"| {r['name']} | {rob['n']} | {rob['seconds']:.0f} | {rob['queries_spent']} / "
            f"{rob['queries_budget']} | {broken} |"
        )
    lines += [
        "",
        "Robust accuracy: AutoAttack-style ensemble (rdc_lib/attacks/ensemble.py), worst case per image "
        "over APGD-CE, APGD-DLR, APGD-T and Square on the first n test images, exact gradients through the DC. "
        "The study runs without the evaluation's sanity checks (cost); the shipped default's headline "
        "evaluation runs them.",
        "",
        "## Commands",
        "",
        "| denoiser | factor (differs from) | what | train | robust column |",
        "|---|---|---|---|---|",
    ]
    base = next((r["name"] for r in rows if r["factor"] == "baseline"), "baseline")
    for r in rows:
        parent = "—" if r["factor"] == "baseline" else (r.get("parent") or base)
        lines.append(
            f"| {r['name']} | {r['factor']} ({parent}) | {r.get('note', '')} | "
            f"`{r['command']}` | `{r.get('robust_command', '—')}` |"
        )
    lines += [
        "",
        "Study wall time: "
        + ", ".join(
            f"{r['name']} {r['measure_seconds'] + r.get('robust_run', {}).get('seconds', 0):.0f} s" for r in rows
        )
        + " (one CPU thread, shared machine).",
    ]
    if notes:
        lines += ["", notes.rstrip()]
    return "\n".join(lines) + "\n"
