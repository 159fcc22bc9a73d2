"""docs/performance.md from docs/raw/performance.json: what the CIFAR-10 DDPM++ path costs.

    .venv/bin/python benchmarks/drivers/performance_report.py run -- --device cuda --T 126 --batch 8 --fp16 --tf32
    .venv/bin/python benchmarks/drivers/performance_report.py doc

``run`` measures with ``benchmarks/timing/gpu_ddpmpp.py`` (the arguments after ``--`` are its own) and appends
the result, with its provenance (commit, library versions, command), to ``gpu_runs`` of the raw file;
``doc`` writes the document from the raw file only (deterministic: no clock, no machine state), one
GPU section per stored run. The H200 figures of the first session were back-filled from the document
of commit a845259 (their provenance says so); the GPU cannot be rerun on the development machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAW = ROOT / "docs" / "raw" / "performance.json"
OUT = ROOT / "docs" / "performance.md"
APGD_STEPS_PAPER = 100 * 5  # APGD-DLR iterations x restarts of the released evaluation (docs/paper.md section 7)
PAPER_IMAGES = 512  # CIFAR-10 test images of the paper's evaluation (docs/paper.md section 1)
PAPER_T = 1000  # noise levels of the paper's experiments (docs/paper.md section 3)


def _gpu_module():
    """benchmarks/timing/gpu_ddpmpp.py, the measurement itself."""
    sys.path.insert(0, str(ROOT))  # the repository root: the benchmarks package
    from benchmarks.timing import gpu_ddpmpp

    return gpu_ddpmpp


def run(raw: Path, gpu_args: list[str]) -> dict:
    """Measure with gpu_ddpmpp.py and append {card, torch, python, command, result, provenance} to the raw file."""
    import platform

    import torch

    from rdc_lib.evaluation.provenance import provenance

    gpu = _gpu_module()
    args = gpu.parse_args(gpu_args)
    result = gpu.run(args)
    data = json.loads(raw.read_text())
    entry = {
        "card": result["device"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python benchmarks/timing/gpu_ddpmpp.py " + " ".join(gpu_args),
        "result": result,
        "provenance": provenance([args.checkpoint] if args.checkpoint else []),
    }
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        entry["card_memory_mib"] = torch.cuda.get_device_properties(0).total_memory // 2**20
    data["gpu_runs"].append(entry)
    raw.write_text(json.dumps(data, indent=1) + "\n")
    return entry


def _prov(block: dict) -> str:
    from rdc_lib.evaluation.provenance import describe

    return describe(block)


def _gpu_section(g: dict, net: dict) -> list[str]:
    r = g["result"]
    dc, lm, at, pr = r["dc"], r["lm"], r["attack"], r["precision"]
    strict = pr.get("fp32_strict_dc_seconds_one_call")
    fp16 = pr.get("fp16_dc")
    tflops = dc["passes_per_s"] * net["flops_per_pass_gflop"] / 1000
    precision = "TF32" if r.get("tf32") else "float32"
    card = g["card"] + (
        f" ({g['card_memory_mib']:,} MiB" + (f", driver {g['driver']}" if g.get("driver") else "") + ")"
        if g.get("card_memory_mib")
        else ""
    )
    weights = (
        "random weights, `--init " + r["init"] + "`" if not r.get("checkpoint") else f"weights `{r['checkpoint']}`"
    )
    L = [
        f"**Card: {card}**, PyTorch {g['torch']}, Python {g['python']}.",
        f"Command ({weights}):",
        "",
        "```",
        g["command"],
        "```",
        "",
        f"Provenance: {_prov(g)}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| DC forward, T = {dc['T']}, K = {dc['K']}, batch {dc['batch']}, {precision} | {dc['seconds']:.2f} s per "
        f"call: **{dc['images_per_s']:.2f} images/s**, {dc['passes_per_s']:,.0f} passes/s (~{tflops:.0f} TFLOP/s) |",
    ]
    if fp16:
        L.append(f"| same, fp16 autocast | {fp16['seconds']:.2f} s per call: **{fp16['images_per_s']:.2f} images/s** |")
    if strict is not None:
        L.append(
            f"| same, strict float32 (no TF32), one call | {strict:.1f} s ({strict / dc['seconds']:.0f}x slower "
            f"than {precision}) |"
        )
    L += [
        f"| DC at T = {PAPER_T}, extrapolated (linear in T), {precision} | "
        f"**{dc['seconds_per_image_T1000_extrapolated']:.1f} s per image** |",
        f"| LM step (rdc_lib.diffusion.lm, {lm['steps']} steps, batch {lm['batch']}) | "
        f"{lm['seconds_per_step']:.3f} s per step "
        f"for the batch ({1000 * lm['seconds_per_step_per_image']:.0f} ms per image) |",
        f"| exact-gradient attack step, T = {at['T']}, K = {at['K']}, batch {at['batch']}, grad chunk "
        f"{at['grad_chunk']} triples | {at['seconds']:.1f} s ({at['seconds_per_image']:.2f} s per image), gradient "
        + ("finite" if at["grad_finite"] else "**NOT finite**")
        + " |",
    ]
    if at.get("peak_gpu_memory_gib") is not None:
        L.append(
            f"| peak GPU memory of that attack step | **{at['peak_gpu_memory_gib']:.1f} GiB** "
            f"({at['peak_gpu_memory_above_weights_gib']:.1f} GiB above the weights) |"
        )
    for name, label in (("tf32", "TF32"), ("fp16", "fp16 autocast")):
        if name in pr:
            e = pr[name]
            n = dc["batch"]
            L.append(
                f"| logit error vs strict float32, {label} | max {e['max_abs_error']:.1e} absolute; centred "
                f"logits {e['max_error_of_centred_logits']:.1e} = {100 * e['relative_to_spread']:.2f}% of the "
                f"mean logit spread; argmax agreement {round(e['argmax_agreement'] * n)}/{n} |"
            )
    step_t1000 = at["seconds_per_image"] * PAPER_T / at["T"]
    hours = APGD_STEPS_PAPER * step_t1000 / 3600
    L += ["", "Reading:"]
    if fp16:
        L.append(
            f"- fp16 autocast buys only ~{100 * (dc['seconds'] / fp16['seconds'] - 1):.0f}% over {precision} "
            "here: GroupNorm and the elementwise work stay in float32 under autocast and dominate at 32x32"
            + (f"; TF32 is the cheap win over strict float32 ({strict / dc['seconds']:.0f}x)." if strict else ".")
        )
    L += [
        f"- Attack memory is set by `--grad-chunk` (triples recomputed at once), not by K x T: {at['grad_chunk']} "
        f"triples cost ~{at['peak_gpu_memory_gib']:.0f} GiB; it scales about linearly with that chunk."
        if at.get("peak_gpu_memory_gib") is not None
        else "- Peak GPU memory was not recorded.",
        f"- Paper scale, extrapolated from these figures (linear in T): one APGD-DLR run of 100 iterations x 5 "
        f"restarts at T = {PAPER_T} is ~{APGD_STEPS_PAPER} attack steps x ~{step_t1000:.1f} s = ~{hours:.1f} "
        f"GPU-hours per image and threat model on this card; {PAPER_IMAGES} images ~ "
        f"{round(hours * PAPER_IMAGES, -1):.0f} GPU-hours. Plan evaluations on subsets, smaller T for exploration "
        "(knowing that robust accuracy drops with T, docs/paper.md section 3), or multi-head.",
        "",
    ]
    caveat = (
        f"Caveats: random weights give a tiny logit spread ({pr['logit_spread_mean']:.3f} here) and "
        "unrepresentative activations, so the precision rows bound the arithmetic error of the kernels, not "
        "the error on the released weights; rerun with `--checkpoint` on an imported checkpoint (below)."
        if not r.get("checkpoint")
        else f"Logit spread with these weights: {pr['logit_spread_mean']:.3f}."
    )
    L += [caveat + (" " + g["notes"] if g.get("notes") else ""), ""]
    return L


def render(data: dict) -> str:
    """The whole document from the raw data (pure function of ``data``)."""
    net, cpu = data["network"], data["cpu"]
    passes = 10 * PAPER_T
    L = [
        "# Performance of the CIFAR-10 DDPM++ path",
        "",
        "Written by `benchmarks/drivers/performance_report.py doc` from `docs/raw/performance.json` (never edited "
        "by hand). "
        "What the paper-scale setting costs (docs/paper.md sections 2, 3 and 7), measured with "
        "`benchmarks/timing/gpu_ddpmpp.py` on a **randomly initialised** DDPM++ of the released size. Timing does not "
        "depend on the weights; the precision figures do (see the caveats).",
        "",
        "## The network",
        "",
        f"Provenance: {_prov(net)}.",
        "",
        "| | value | how |",
        "|---|---|---|",
        f"| parameters, conditional (K = 10) | {net['params_conditional']:,} ({net['params_conditional'] / 1e6:.1f}M) "
        f"| {net['params_how']} |",
        f"| parameters, unconditional | {net['params_unconditional']:,} | same |",
        f"| weights, float32 | {net['weights_gib_float32']:.2f} GiB | {net['weights_how']} |",
        f"| FLOPs per network pass (one 32x32 image) | {net['flops_per_pass_gflop']:.1f} GFLOP | {net['flops_how']} |",
        f"| state-dict keys | {net['state_dict_keys_conditional']} (cond), names = official `EDMPrecond` names with "
        f"`model.` -> `backbone.` | {net['state_dict_how']} |",
        "",
    ]
    g0 = data["gpu_runs"][0]["result"] if data["gpu_runs"] else None
    L += [
        f"Cost model of the diffusion classifier: K x T network passes per image with a single-head network "
        f"(10 x {PAPER_T} = {passes:,} passes, about {passes * net['flops_per_pass_gflop'] / 1000:.0f} TFLOP, per "
        f"CIFAR-10 image at the paper's T = {PAPER_T}), T with a multi-head network."
        + (
            " One exact-gradient attack step costs the forward plus a chunked backward that recomputes every pass "
            f"with its activations (measured: about {g0['attack']['seconds'] / g0['dc']['seconds']:.1f}x the forward)."
            if g0
            else ""
        ),
        "",
    ]
    L += [
        f"## CPU ({cpu['machine']})",
        "",
        f"Provenance: {_prov(cpu)}.",
        "",
        "| what | time | command |",
        "|---|---|---|",
    ]
    L += [f"| {r['what']} | {r['time']} | {r['command']} |" for r in cpu["rows"]]
    L += [
        "",
        f"A full-width DC forward at T = 126, K = 10 would take about {cpu['full_width_T126_minutes']} minutes on "
        "that CPU, so the tests run it with the same structure at width 8 and check the full-size network for one "
        "pass.",
        "",
        "## GPU: measured",
        "",
    ]
    for g in data["gpu_runs"]:
        L += _gpu_section(g, net)
    if data.get("open"):
        L += [
            "## Not measured yet",
            "",
            "The device time of the first session went to training the digits denoisers (about 7 minutes, "
            "`scripts/gpu_train_digits.sh`) and to the H200 run above. These figures are still open; each row is "
            "one command of `benchmarks/timing/gpu_ddpmpp.py` on a lent GPU (then `performance_report.py run`):",
            "",
            "| figure | command |",
            "|---|---|",
        ]
        L += [f"| {r['figure']} | {r['command']} |" for r in data["open"]]
    return "\n".join(L) + "\n"


def doc(raw: Path, out: Path) -> str:
    text = render(json.loads(Path(raw).read_text()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    gpu_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, gpu_args = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (gpu_ddpmpp.py arguments after --), append to the raw file, write the doc")
    d = sub.add_parser("doc", help="write the document from the raw file only")
    for p in (r, d):
        p.add_argument("--raw", type=Path, default=RAW)
        p.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.raw, gpu_args)
    doc(args.raw, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
