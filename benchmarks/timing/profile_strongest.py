"""Where the seconds of the strongest protocol go (docs/speed.md), and the doc generator for it.

    .venv/bin/python benchmarks/timing/profile_strongest.py run [--n 3] [--steps 20] [--threads 1] [--no-checks]
        [--heads multi|single] [--commit LABEL] [--out docs/raw/profile_strongest.json]
    .venv/bin/python benchmarks/timing/profile_strongest.py doc

``run`` evaluates the strongest protocol of docs/evaluation.md (stochastic RDC, APGD-CE, exact
gradients through LM, EOT 2, verified stop 4, N-evaluation 10, T = 16; ``--heads multi``: the retired
multi-head ``digits_multi``, ``--heads single``: the single-head default, written to
docs/raw/profile_strongest_single.json) on the first ``n`` digits test images through
``rdc_lib.evaluation.evaluate`` and splits its CPU time (one thread: what an idle core would take, robust to other
jobs on the machine) two ways:

- phase: the attack's gradient steps (EOT draws batched into them), verification calls, the
  attack's clean call, the runner's clean classification, the N-evaluation, the sanity checks
  (a fixed cost on the first images, whatever ``n``), everything else;
- component: LM forward (first-order steps), LM backward (second-order, per-step recomputation),
  DC forward, DC chunked backward, noise draws, the rest (Python, loss, bookkeeping). The DC's backward is its
  custom autograd functions' backward (rdc_lib.defenses.dc_backward: the chunked recomputation, and for a
  single-head network the sparse backward, kept graph included); a backward that runs inside plain autograd
  (the unrolled LM graph of small inputs, the multi-head DC's kept graph) counts as the rest.

Timers wrap library functions from this script only (the library is unchanged); time is given to
the innermost phase (the sanity checks absorb everything inside them) and the outermost component.
The component split follows the code paths of the code before the issue-19 speed-ups (profile it
with ``PYTHONPATH`` pointing at an extract of that commit, as docs/raw/profile_strongest.json was):
with the speed-ups, small inputs skip the per-step LM recomputation and the chunked DC backward, and
their backward runs inside plain autograd, which this split counts as "rest".
A torch.profiler pass over one gradient step gives the top aten operators' shares of the
operator time. Writes docs/raw/profile_strongest.json.

``doc`` writes docs/speed.md from docs/raw/profile_strongest.json, docs/raw/bench_strongest.json and
docs/raw/bench_strongest_*.json (benchmarks/timing/bench_strongest.py --out ...) and the hand-written
docs/speed_notes.md only: deterministic, no computation.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

RAW = Path("docs/raw/profile_strongest.json")
RAW_SINGLE = Path("docs/raw/profile_strongest_single.json")  # the same profile on the single-head default
BENCH_RAW = Path("docs/raw/bench_strongest.json")
DOC = Path("docs/speed.md")

STRONGEST = dict(
    defense="rdc",
    attack="apgd-ce",
    norm="linf",
    eps=0.1,
    eot=2,
    verify=4,
    n_eval=10,
    noise_mode="stochastic",
    grad_mode="exact",
    timesteps=16,
    heads="multi",
)
STRONGEST_CLI = (
    "rdc eval --defense rdc --attack apgd-ce --eps 0.1 --eot 2 --verify 4 --n-eval 10 "
    "--noise-mode stochastic --timesteps 16 --heads {heads}"
)  # + --denoiser NAME when the raw row names one


def _denoiser(heads: str) -> dict:
    """The denoiser profiled for ``heads``: multi, the retired digits_multi (:func:`_multi_denoiser`); single, the
    shipped single-head default."""
    if heads == "multi":
        return _multi_denoiser()
    from rdc_lib.core.choices import DEFAULT_DENOISERS

    return {"denoiser": DEFAULT_DENOISERS[heads]}


def _multi_denoiser() -> dict:
    """The denoiser docs/speed.md measures, digits_multi, by name ({"denoiser": ...}) for a library whose heads
    "multi" loads another default; {} for a library from before the default denoisers (heads "multi" loaded it)."""
    try:
        from rdc_lib.core.choices import LEGACY_DENOISERS
    except ImportError:
        return {}
    return {"denoiser": LEGACY_DENOISERS["multi"]}


_CPU_MEASURE = (
    "CPU seconds: far less disturbed by other jobs than wall seconds, though identical runs still differed by up to "
    "~30% on this shared machine"
)

PHASES = (
    "attack: gradient steps",
    "attack: verification calls",
    "attack: clean call",
    "runner: clean classification",
    "runner: N-evaluation",
    "sanity checks",
    "other",
)
COMPONENTS = (
    "LM forward",
    "LM backward (2nd order)",
    "DC forward",
    "DC chunked backward",
    "noise draws",
    "rest (Python, loss, bookkeeping)",
)


class Split:
    """Wall-time accounting by (phase, component) through wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.phases: list[str] = ["other"]
        self.components: list[str] = [COMPONENTS[-1]]
        self.mark = time.process_time()

    def _flush(self) -> None:
        now = time.process_time()
        phase = "sanity checks" if "sanity checks" in self.phases else self.phases[-1]
        comp = self.components[1] if len(self.components) > 1 else self.components[0]
        self.seconds[(phase, comp)] += now - self.mark
        self.mark = now

    def wrap(self, fn, *, phase: str | None = None, component: str | None = None):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            self._flush()
            if phase:
                self.phases.append(phase)
                self.calls[phase] += 1
            if component:
                self.components.append(component)
                self.calls[component] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._flush()
                if phase:
                    self.phases.pop()
                if component:
                    self.components.pop()

        return inner


def _instrument(split: Split) -> None:
    """Wrap the hot functions of the library (this process only)."""
    from rdc_lib.attacks import base
    from rdc_lib.defenses import classifier, rdc
    from rdc_lib.diffusion import lm, lm_grad
    from rdc_lib.evaluation import checks, runner
    from rdc_lib.evaluation import prediction as predict_module

    ctx = base.AttackContext
    ctx.loss_grad = split.wrap(ctx.loss_grad, phase="attack: gradient steps")
    ctx._confirm = split.wrap(ctx._confirm, phase="attack: verification calls")
    orig_run = base.Attack.run

    def run_with_clean_phase(self, x, y):
        orig_logits = ctx._logits
        first = {"done": False}

        def logits(ctx_self, idx, x_in, copies):
            if not first["done"]:
                first["done"] = True
                return split.wrap(orig_logits, phase="attack: clean call")(ctx_self, idx, x_in, copies)
            return orig_logits(ctx_self, idx, x_in, copies)

        ctx._logits = logits
        try:
            return orig_run(self, x, y)
        finally:
            ctx._logits = orig_logits

    base.Attack.run = run_with_clean_phase
    checks.run_sanity_checks = split.wrap(checks.run_sanity_checks, phase="sanity checks")
    orig_predict = runner.predict
    clean_predict = split.wrap(orig_predict, phase="runner: clean classification")
    neval_predict = split.wrap(orig_predict, phase="runner: N-evaluation")
    state = {"attacked": False}

    def predict(model, x, batch=64):
        return (neval_predict if state["attacked"] else clean_predict)(model, x, batch)

    orig_run_attack = runner.run_attack

    def run_attack(*a, **k):
        try:
            return orig_run_attack(*a, **k)
        finally:
            state["attacked"] = True

    runner.predict = predict
    predict_module.predict = predict  # N-evaluation and the checks' reads call it there
    runner.run_attack = run_attack
    # components
    f = lm_grad._LMRecompute
    f.forward = staticmethod(split.wrap(f.forward, component="LM forward"))
    f.backward = staticmethod(split.wrap(f.backward, component="LM backward (2nd order)"))
    rdc.likelihood_maximization = split.wrap(lm.likelihood_maximization, component="LM forward")
    # exact gradients of small inputs keep LM's unrolled graph (lm_grad.lm_exact): its forward is LM forward, its
    # second-order backward runs inside plain autograd (the rest)
    lm_grad.likelihood_maximization = split.wrap(lm.likelihood_maximization, component="LM forward")
    try:  # the DC's custom backward: in rdc_lib.defenses.dc_backward since issue 41, in the classifier before
        from rdc_lib.defenses import dc_backward

        functions = [dc_backward.ChunkedELBOSum, dc_backward.SparseELBOSum]
    except ImportError:
        functions = [classifier._ChunkedELBOSum]
    for c in functions:
        c.forward = staticmethod(split.wrap(c.forward, component="DC forward"))
        c.backward = staticmethod(split.wrap(c.backward, component="DC chunked backward"))
    classifier.elbo_terms = split.wrap(classifier.elbo_terms, component="DC forward")
    rdc.RobustDiffusionClassifier.draw_noise = split.wrap(
        rdc.RobustDiffusionClassifier.draw_noise, component="noise draws"
    )


def _op_share(n: int, seed: int, heads: str = "multi") -> dict:
    """torch.profiler over one EOT-2 gradient step of the stochastic RDC on ``n`` images."""
    from torch.profiler import ProfilerActivity, profile

    from rdc_lib.attacks.base import AttackContext
    from rdc_lib.attacks.losses import ce_loss
    from rdc_lib.core.paths import checkpoint_path
    from rdc_lib.data import load_dataset
    from rdc_lib.defenses import DefenseSpec, build_defense

    x, y = load_dataset("digits", "test")
    x, y = x[:n], y[:n]
    name = _denoiser(heads).get("denoiser")
    named = {} if name is None else {"denoiser_path": str(checkpoint_path(name))}
    model = build_defense(
        DefenseSpec(name="rdc", heads=heads, timesteps=16, noise_mode="stochastic", seed=seed, **named)
    )
    ctx = AttackContext(model, x, y, eot=2, generator=torch.Generator().manual_seed(seed), verify=1)
    idx = torch.arange(n)
    ctx.loss_grad(idx, x, ce_loss)  # warm-up
    t0 = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ctx.loss_grad(idx, x, ce_loss)
    cpu = time.process_time() - t0
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    self_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "images": n,
        "cpu_s": cpu,
        "aten_self_s": self_us / 1e6,
        "top_ops": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in top],
    }


def _provenance(cfg) -> dict:
    """Provenance of the run; with an older library extract on PYTHONPATH (no rdc_lib.evaluation.provenance) an explicit
    marker naming what was not recorded (``commit`` above labels the profiled code)."""
    try:
        from rdc_lib.evaluation.provenance import eval_provenance
    except ImportError:
        return {
            "commit": "not recorded",
            "dirty": "not recorded",
            "checkpoints": "not recorded",
            "versions": "not recorded",
            "command": " ".join(sys.argv),
            "utc": "not recorded",
            "note": "profiled with a library extract that predates rdc_lib.evaluation.provenance; see commit",
        }
    return eval_provenance(cfg)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    from rdc_lib.evaluation import EvalConfig, evaluate

    split = Split()
    _instrument(split)
    strongest = {**STRONGEST, "heads": args.heads}
    cfg = EvalConfig(
        **strongest,
        **_denoiser(args.heads),
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        chunk=args.n,
        run_checks=not args.no_checks,
    )
    t_wall = time.perf_counter()
    split.mark = time.process_time()
    t0 = split.mark
    res = evaluate(cfg, progress=False)
    split._flush()
    cpu = time.process_time() - t0
    wall = time.perf_counter() - t_wall
    table = {p: {c: split.seconds.get((p, c), 0.0) for c in COMPONENTS} for p in PHASES}
    out = {
        "config": {
            **strongest,
            **_denoiser(args.heads),
            "n": args.n,
            "steps": args.steps,
            "seed": args.seed,
            "threads": args.threads,
            "run_checks": not args.no_checks,
        },
        "command": f".venv/bin/python benchmarks/timing/profile_strongest.py run --n {args.n} --steps {args.steps} "
        f"--threads {args.threads}"
        + (" --no-checks" if args.no_checks else "")
        + (f" --heads {args.heads} --out {args.out}" if args.heads != "multi" else ""),
        "commit": args.commit or _commit(),
        "wall_s": wall,
        "cpu_s": cpu,
        "seconds": table,
        "calls": dict(split.calls),
        "check_images": min(16, args.n) if not args.no_checks else 0,
        "robust_acc_worst": res["robust_acc_worst"],
        "attack_stats": res["attack_stats"],
        "ops": _op_share(args.op_images, args.seed, args.heads),
        "library": "extract" if args.commit else "checkout",
        "provenance": _provenance(cfg),
    }
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(
        json.dumps({"wall_s": wall, "cpu_s": cpu, "by_phase": {p: sum(v.values()) for p, v in table.items()}}, indent=2)
    )
    print(f"wrote {dest}")
    return 0


def _fmt_s(v: float) -> str:
    return f"{v:.1f}"


def _denoiser_flag(cfg: dict) -> str:
    """' --denoiser NAME' for a profile that named its denoiser; '' for one measured when heads "multi" loaded
    digits_multi (no denoiser field then)."""
    return f" --denoiser {cfg['denoiser']}" if cfg.get("denoiser") else ""


def _profile_section(p: dict, level: str = "##") -> list[str]:
    from rdc_lib.evaluation.provenance import mark

    cfg = p["config"]
    cpu = p["cpu_s"]
    checks = sum(p["seconds"]["sanity checks"].values())
    per_image = cpu - checks
    name = cfg.get("denoiser") or "digits_multi"  # a profile without the field ran when heads multi loaded it
    where = (
        "in a checkout of that commit"
        if p.get("library") == "checkout"
        else "with the library of that commit on `PYTHONPATH` "
        f"(`git archive {p['commit']} rdc_lib | tar -x -C DIR`, `PYTHONPATH=DIR RDC_DATA_DIR=$PWD/data`)"
    )
    cli = STRONGEST_CLI.format(heads=cfg["heads"])
    lines = [
        f"{level} Where the seconds go: {cfg['heads']}-head `{name}` (code at commit `{p['commit']}`){mark(p)}",
        "",
        f"Profile of `{cli}{_denoiser_flag(cfg)} --steps {cfg['steps']} --n {cfg['n']} --chunk {cfg['n']}` "
        f"(seed {cfg['seed']}, "
        f"{cfg['threads']} thread), measured by `{p['command']}` {where}. "
        "Seconds are the process's CPU seconds "
        f"(the machine was shared with other jobs: wall {_fmt_s(p['wall_s'])} s for {_fmt_s(cpu)} s of CPU), "
        "so they are what one idle core would take; the shares are what to read.",
        "",
        (
            f"CPU total {_fmt_s(cpu)} s, of which the sanity checks {_fmt_s(checks)} s: a fixed cost (they run on the "
            f"first {p['check_images']} image(s), whatever n). "
            if p["check_images"]
            else f"CPU total {_fmt_s(cpu)} s (sanity checks off in this profile: a fixed cost on the first images, "
            "whatever n). "
        )
        + "The part that grows with n: "
        f"{_fmt_s(per_image)} s = **{_fmt_s(per_image / cfg['n'])} s per image** "
        f"(robust accuracy worst of N here: {p['robust_acc_worst']:.3f} on {cfg['n']} images).",
        "",
        f"{level}# By phase and component (CPU seconds; share of the part that grows with n)",
        "",
        "| phase | " + " | ".join(COMPONENTS) + " | total | share |",
        "|---|" + "---|" * (len(COMPONENTS) + 2),
    ]
    col = {c: 0.0 for c in COMPONENTS}
    for phase in PHASES:
        row = p["seconds"][phase]
        tot = sum(row.values())
        if tot == 0:
            continue
        share = "(fixed)" if phase == "sanity checks" else f"{100 * tot / per_image:.1f}%"
        lines.append(f"| {phase} | " + " | ".join(_fmt_s(row[c]) for c in COMPONENTS) + f" | {_fmt_s(tot)} | {share} |")
        if phase != "sanity checks":
            for c in COMPONENTS:
                col[c] += row[c]
    lines.append(
        "| **all but the checks** | "
        + " | ".join(_fmt_s(col[c]) for c in COMPONENTS)
        + f" | {_fmt_s(per_image)} | 100% |"
    )
    lines.append(
        "| share of all but the checks | "
        + " | ".join(f"{100 * col[c] / per_image:.1f}%" for c in COMPONENTS)
        + " | | |"
    )
    ops = p["ops"]
    lines += [
        "",
        "*other*: loading the data and the networks, the attack ensemble's own clean call and its final "
        f"verification call ({cfg['verify']} draws, batched), the records. EOT draws are not a separate pass: the "
        "attack repeats the batch EOT times inside one network call (rdc_lib.attacks.base.AttackContext.loss_grad), "
        f"so with EOT = {cfg['eot']} about {100 * (cfg['eot'] - 1) / cfg['eot']:.0f}% of the gradient-step row is "
        "the extra draws.",
        "",
        f"Operators (torch.profiler, one EOT-{cfg['eot']} gradient step on {ops['images']} images): the top "
        "aten operators by self time, as a share of the time inside all aten operators (the profiler times "
        "operators by the clock, so on a loaded machine only these shares are meaningful):",
        "",
        "| operator | share of aten time | calls |",
        "|---|---|---|",
    ]
    lines += [f"| `{o['op']}` | {100 * o['self_s'] / ops['aten_self_s']:.1f}% | {o['calls']} |" for o in ops["top_ops"]]
    calls = p["calls"]
    lines += ["", "Calls (sanity checks included): " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) + "."]
    return lines


def _bench_section(b: dict, level: str = "##") -> list[str]:
    from rdc_lib.evaluation.provenance import mark

    title = (
        "Before vs after the speed-ups, measured in one run" + ("" if level == "##" else f": {b['n']} images") + mark(b)
    )
    lines = [
        f"{level} {title}",
        "",
        f"`{b['command']}`: for each protocol, the code before the speed-ups (commit `{b['old_commit']}`, "
        "extracted with "
        f"`git archive`) and this code (`{b['new_commit']}`) run on the same {b['n']} images with the same "
        f"seeds, each in its own process with {b['threads']} thread(s), the two side by side in each of "
        f"{b['rounds']} round(s) so that both see the same load from other jobs; the minimum over the rounds is "
        f"reported ({_CPU_MEASURE if b['measure'] == 'cpu_s' else 'wall seconds'}). "
        "Seconds per image exclude the sanity checks (off: a fixed cost on the first images, whatever n). "
        "The ratio is old / new (> 1: faster now).",
        "",
        "*network images*: images through the denoiser's first convolution per test image (every forward pass, "
        "recomputations included): the work, independent of the load.",
        "",
        "| protocol | old s/image | new s/image | ratio old/new | old network images | new network images | ratio | "
        "old robust (single / worst of N) | new robust (single / worst of N) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in b["protocols"]:
        lines.append(
            f"| {row['name']} | {row['old_s_per_image']:.2f} | {row['new_s_per_image']:.2f} | "
            f"{row['ratio']:.2f}x | {row['old_forward_images_per_image']:.0f} | "
            f"{row['new_forward_images_per_image']:.0f} | {row['forward_ratio']:.2f}x | "
            f"{row['old_robust']:.3f} / {row['old_robust_worst']:.3f} | "
            f"{row['new_robust']:.3f} / {row['new_robust_worst']:.3f} |"
        )
    judged = [r for r in b["protocols"] if "same_judge" in r]
    if judged:
        lines += [
            "",
            "Same judges: each run's N-evaluation meets its own random draws, so both codes' adversarial "
            "images are re-classified by the same defenses (this code's, seeds below, identical draws for "
            "both sides); worst-of-N robust accuracy per judge seed, and the largest pixel difference "
            "between the two codes' adversarial images:",
            "",
            "| protocol | judge seeds | old | new | largest pixel difference |",
            "|---|---|---|---|---|",
        ]
        for r in judged:
            j = r["same_judge"]
            lines.append(
                f"| {r['name']} | {', '.join(map(str, j['seeds']))} | "
                f"{', '.join(f'{v:.3f}' for v in j['old'])} | {', '.join(f'{v:.3f}' for v in j['new'])} | "
                f"{j['max_abs_diff']:.2e} |"
            )
    return lines


def _estimate_section(p: dict, bench: dict | None, n_test: int = 360, n_check: int = 16) -> list[str]:
    """All 360 test digits on one idle core, from the profile (and the measured old/new ratio)."""
    cfg = p["config"]
    checks = sum(p["seconds"]["sanity checks"].values())
    per_image = (p["cpu_s"] - checks) / cfg["n"]
    lines = ["## All 360 test digits, estimated for one idle core", ""]
    if not p["check_images"]:
        return lines + ["The profile ran without the sanity checks; rerun it without `--no-checks` for this estimate."]
    checks_full = checks * n_check / p["check_images"]
    old_total = n_test * per_image + checks_full
    lines += [
        f"From the profile: {n_test} x {per_image:.2f} s per image + the sanity checks scaled to {n_check} images "
        f"({checks:.0f} s on {p['check_images']} -> {checks_full:.0f} s) = **{old_total / 60:.0f} minutes** "
        "of one core "
        f"with the code at `{p['commit']}`.",
    ]
    strongest = [r for r in (bench or {}).get("protocols", []) if r["protocol"] == "strongest"]
    if strongest:
        r = strongest[0]
        new_total = n_test * per_image / r["ratio"] + checks_full
        lines += [
            "",
            f"With the speed-ups (the strongest protocol's measured ratio {r['ratio']:.2f}x applied to the per-image "
            f"part; the checks counted at their old cost, an upper bound): **{new_total / 60:.0f} minutes**. "
            "The black-box Square check (1,000 queries, each a full no-gradient RDC call, with verification) "
            "is untouched by these speed-ups.",
        ]
    fwd = p["seconds"]["sanity checks"]["LM forward"] + p["seconds"]["sanity checks"]["DC forward"]
    lines += [
        "",
        f"Of the checks' {checks:.0f} s, {fwd:.0f} s are LM and DC forwards: calls without the attack's "
        "backward, i.e. mostly Square's queries and their verification.",
    ]
    return lines


def render(raw_dir: Path, notes: Path | None) -> str:
    """docs/speed.md from the raw files in ``raw_dir`` and the hand-written ``notes`` (deterministic)."""
    raw, bench_raw = raw_dir / RAW.name, raw_dir / BENCH_RAW.name
    p = json.loads(raw.read_text())
    lines = [
        "# Speed of the strongest protocol",
        "",
        "Written by `benchmarks/timing/profile_strongest.py doc` from docs/raw/profile_strongest.json, "
        "docs/raw/bench_strongest*.json and docs/speed_notes.md (never edited by hand).",
        "",
    ]
    lines += _profile_section(p)
    raw_single = raw_dir / RAW_SINGLE.name
    if raw_single.is_file():
        lines += [""] + _profile_section(json.loads(raw_single.read_text()))
    bench = json.loads(bench_raw.read_text()) if bench_raw.is_file() else None
    if bench is not None:
        lines += [""] + _bench_section(bench)
    for extra in sorted(raw_dir.glob(BENCH_RAW.stem + "_*.json")):  # more runs, e.g. more images
        lines += [""] + _bench_section(json.loads(extra.read_text()), level="###")
    lines += [""] + _estimate_section(p, bench)
    if notes is not None and notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def doc(args: argparse.Namespace) -> int:
    if not RAW.is_file():
        print(
            f"{RAW} is missing: run `.venv/bin/python benchmarks/timing/profile_strongest.py run` first",
            file=sys.stderr,
        )
        return 1
    DOC.write_text(render(RAW.parent, Path("docs/speed_notes.md")))
    print(f"wrote {DOC}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, default=3, help="test images attacked")
    r.add_argument("--steps", type=int, default=20, help="APGD iterations")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--no-checks", action="store_true", help="skip the sanity checks (a fixed cost)")
    r.add_argument("--op-images", type=int, default=8, help="images in the torch.profiler gradient step")
    r.add_argument("--heads", choices=("multi", "single"), default="multi", help="multi: digits_multi (retired)")
    r.add_argument("--out", default=None, help=f"default {RAW} (multi), {RAW_SINGLE} (single)")
    r.add_argument("--commit", default=None, help="label of the profiled code (default: git HEAD here)")
    sub.add_parser("doc")
    args = ap.parse_args()
    if args.cmd == "run" and args.out is None:
        args.out = str(RAW if args.heads == "multi" else RAW_SINGLE)
    return run(args) if args.cmd == "run" else doc(args)


if __name__ == "__main__":
    sys.exit(main())
