"""Seconds per image of the evaluation protocols, old code vs this code, as a ratio measured in one run.

    .venv/bin/python benchmarks/timing/bench_strongest.py [--old 9ee14f1] [--n 8] [--steps 20] [--rounds 2]
        [--threads 1] [--protocols strongest rdc-fixed ...] [--out docs/raw/bench_strongest.json]

The old code is the ``rdc_lib`` folder of commit ``--old`` (default: the commit before the issue-19
speed-ups), extracted with ``git archive`` into a temporary folder; the new code is this checkout.
For every protocol, both run ``rdc_lib.evaluation.evaluate`` on the same first ``n`` digits test
images with the same seeds, each in its own process (PYTHONPATH selects the code), the two side by
side in every round so that both see the same load from other jobs; the minimum over ``rounds``
(the least disturbed run) is reported. The sanity checks are off (a fixed cost on at
most 16 images that does not grow with n). Reported per image: the child's CPU seconds inside
``evaluate`` (the robust figure on a shared machine with one thread) and its wall seconds; the ratio
is old / new (> 1: faster now), from CPU seconds with one thread and wall seconds with more. A
load-independent measure of work is printed too: the images that went through the denoiser's
first convolution (every forward pass of the network, recomputations included) per test image. The
robust accuracies (single call and worst of N) of both are printed next to it, and, since each run's
N-evaluation meets different random draws, both codes' adversarial images are also re-classified by
the same judges (this code's defense rebuilt with seeds 1000, 1001, ..., identical draws for both):
the attack must not be weaker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from rdc_lib.core.choices import LEGACY_DENOISERS
from rdc_lib.core.paths import checkpoint_path
from rdc_lib.evaluation.provenance import provenance

ROOT = Path(__file__).resolve().parents[2]
OLD_COMMIT = "9ee14f1"  # the code before the issue-19 speed-ups
# The multi-head denoiser digits_multi, named (the default of heads "multi" until the FiLM defaults); code from
# before the denoiser field loads it for heads "multi" and gets the configuration without the name (CHILD).
BASE = dict(attack="apgd-ce", norm="linf", eps=0.1, timesteps=16, heads="multi", denoiser=LEGACY_DENOISERS["multi"])
PROTOCOLS: dict[str, dict] = {
    # the strongest protocol of docs/evaluation.md
    "strongest": dict(defense="rdc", noise_mode="stochastic", eot=2, verify=4, n_eval=10),
    "rdc-fixed": dict(defense="rdc", noise_mode="fixed"),
    "rdc-bpda": dict(defense="rdc", noise_mode="stochastic", eot=2, verify=4, n_eval=10, grad_mode="bpda"),
    "rdc-vote": dict(defense="rdc", noise_mode="stochastic", vote=3, verify=4, n_eval=10),
    "dc-verified": dict(defense="dc", noise_mode="stochastic", eot=1, verify=4, n_eval=10),
}
LABELS = {
    "strongest": "rdc / stochastic / exact+EOT, verified stop (strongest)",
    "rdc-fixed": "rdc / fixed randomness / exact gradients",
    "rdc-bpda": "rdc / stochastic / BPDA through LM, EOT, verified stop",
    "rdc-vote": "rdc / majority vote (M=3) / exact, EOT=1, verified stop",
    "dc-verified": "dc / stochastic / exact+EOT, verified stop",
}

CHILD = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
import os, pathlib, rdc_lib
from rdc_lib.evaluation import EvalConfig, evaluate, runner
if pathlib.Path(rdc_lib.__file__).parent.resolve() != pathlib.Path(os.environ["RDC_BENCH_EXPECT"]).resolve():
    sys.exit(f"imported rdc_lib from {rdc_lib.__file__}, expected {os.environ['RDC_BENCH_EXPECT']}")
count = {"images": 0}
build = runner.build_defense

def counted(*args, **kwargs):  # images through the denoiser's first convolution: forward work, load-independent
    model = build(*args, **kwargs)
    conv = next(m for m in model.denoiser.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_pre_hook(lambda mod, inp: count.__setitem__("images", count["images"] + inp[0].shape[0]))
    return model

runner.build_defense = counted
params = json.loads(sys.argv[1])
if "denoiser" not in EvalConfig.__dataclass_fields__:  # code before the field loaded digits_<heads>, nothing else
    if params.pop("denoiser") != "digits_" + params["heads"]:
        sys.exit("code without the denoiser field loads digits_<heads> only")
cfg = EvalConfig(**params)
t_wall, t_cpu = time.perf_counter(), time.process_time()
res = evaluate(cfg, progress=False, records_dir=sys.argv[3])
print(json.dumps({"cpu_s": time.process_time() - t_cpu, "wall_s": time.perf_counter() - t_wall,
                  "network_images": count["images"], "robust_acc": res["robust_acc"],
                  "robust_acc_worst": res["robust_acc_worst"], "clean_acc": res["clean_acc"]}))
"""


def extract_old(commit: str, dest: Path) -> Path:
    """``rdc_lib`` of ``commit`` under dest (git archive); returns dest."""
    try:
        tar = subprocess.run(["git", "archive", commit, "rdc_lib"], cwd=ROOT, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"git archive {commit} failed: {err.stderr.decode().strip()}; pass --old COMMIT") from err
    with tarfile.open(fileobj=BytesIO(tar)) as tf:
        tf.extractall(dest, filter="data")
    return dest


def start_child(code_root: Path, cfg: dict, threads: int, records: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(code_root),
        "RDC_DATA_DIR": str(ROOT / "data"),
        "RDC_BENCH_EXPECT": str(code_root / "rdc_lib"),
    }
    # -P: the working directory is not put before PYTHONPATH, so PYTHONPATH alone picks the code
    return subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, json.dumps(cfg), str(threads), str(records)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_child(proc: subprocess.Popen, code_root: Path) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"evaluation with code from {code_root} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def same_judge(cfg: dict, records: dict[str, Path], seeds: int) -> dict:
    """Re-classify both codes' adversarial images with the same draws: worst-of-N robust accuracy per judge seed.

    Every judge is this code's defense with seed s (s = 1000, 1001, ...), rebuilt for each side, so the old and
    the new adversarial images meet exactly the same randomness; an image counts only if it was clean-correct in
    its run. Also the largest pixel difference between the two sets of adversarial images.
    """
    import torch
    from safetensors.torch import load_file

    from rdc_lib.data import load_dataset
    from rdc_lib.defenses import build_defense
    from rdc_lib.evaluation import EvalConfig
    from rdc_lib.evaluation.prediction import n_evaluate
    from rdc_lib.evaluation.records import records_paths
    from rdc_lib.evaluation.runner import defense_spec

    conf = EvalConfig(**cfg)
    _, y_all = load_dataset(conf.dataset, "test")
    y = y_all[conf.offset : conf.offset + conf.n_images]
    adv, clean_ok = {}, {}
    for which, folder in records.items():
        # read directly: load_records refuses records written by another code version, as it should for resuming;
        # found by name pattern: the old code's key of the same run may differ (it had no denoiser field)
        jsonl = _only_records(folder, records_paths(folder, conf)[0])
        adv_path = jsonl.with_name(jsonl.name[: -len(".jsonl")] + ".adv.safetensors")
        recs = [json.loads(line) for line in jsonl.read_text().splitlines()[1:] if line.strip()]
        if len(recs) != conf.n_images:
            raise SystemExit(f"{jsonl}: expected {conf.n_images} records, found {len(recs)}")
        adv[which] = load_file(str(adv_path))["x_adv"]
        clean_ok[which] = torch.tensor([r["clean_pred"] == r["label"] for r in sorted(recs, key=lambda r: r["index"])])
    out: dict = {"max_abs_diff": float((adv["old"] - adv["new"]).abs().max()), "seeds": [], "old": [], "new": []}
    for s in range(seeds):
        seed = 1000 + s
        out["seeds"].append(seed)
        for which in ("old", "new"):
            model = build_defense(replace_seed(defense_spec(conf), seed))
            preds = n_evaluate(model, adv[which], conf.n_eval)
            robust = (preds == y).all(dim=0) & clean_ok[which]
            out[which].append(float(robust.float().mean()))
    return out


def _only_records(folder: Path, expected: Path) -> Path:
    """The one records file of a run in ``folder`` (named like ``expected`` up to the configuration key)."""
    stem = expected.name.rsplit("_", 1)[0]
    found = sorted(folder.glob(f"{stem}_*.jsonl"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one records file {stem}_<key>.jsonl, found {[p.name for p in found]}")
    return found[0]


def replace_seed(spec, seed: int):
    from dataclasses import replace

    return replace(spec, seed=seed)


def _commit(ref: str = "HEAD") -> str:
    out = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default=OLD_COMMIT, help="commit of today's code to compare against")
    ap.add_argument("--n", type=int, default=8, help="test images (one chunk)")
    ap.add_argument("--steps", type=int, default=20, help="APGD iterations")
    ap.add_argument(
        "--rounds", type=int, default=2, help="old/new pairs (run side by side) per protocol; the minimum is reported"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--protocols", nargs="+", default=["strongest", "rdc-fixed", "dc-verified"], choices=sorted(PROTOCOLS)
    )
    ap.add_argument("--judge-seeds", type=int, default=3, help="same-draw re-classifications of both codes' images")
    ap.add_argument("--out", default="docs/raw/bench_strongest.json")
    args = ap.parse_args()
    if args.n < 1 or args.rounds < 1 or args.threads < 1:
        raise SystemExit("--n, --rounds and --threads must be >= 1")
    measure = "cpu_s" if args.threads == 1 else "wall_s"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_root = extract_old(args.old, Path(tmp))
        for name in args.protocols:
            cfg = dict(
                BASE, **PROTOCOLS[name], n=args.n, chunk=args.n, steps=args.steps, seed=args.seed, run_checks=False
            )
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                roots = {"old": old_root, "new": ROOT}
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                records = {w: Path(tmp) / f"records-{name}-{r}-{w}" for w in order}
                procs = {w: start_child(roots[w], cfg, args.threads, records[w]) for w in order}  # side by side
                for which in order:
                    res = finish_child(procs[which], roots[which])
                    runs[which].append(res)
                    print(
                        f"  {name:12s} round {r} {which}: {res['cpu_s']:.1f} s CPU, {res['wall_s']:.1f} s wall, "
                        f"robust {res['robust_acc']:.3f} worst {res['robust_acc_worst']:.3f}",
                        flush=True,
                    )
            per = {w: min(x[measure] for x in v) / args.n for w, v in runs.items()}  # min over rounds: least disturbed
            passes = {w: v[0]["network_images"] / args.n for w, v in runs.items()}
            judged = same_judge(cfg, {w: Path(tmp) / f"records-{name}-0-{w}" for w in ("old", "new")}, args.judge_seeds)
            row = {
                "protocol": name,
                "name": LABELS[name],
                "config": cfg,
                "measure": measure,
                "old_s_per_image": per["old"],
                "new_s_per_image": per["new"],
                "ratio": per["old"] / per["new"],
                "old_forward_images_per_image": passes["old"],
                "new_forward_images_per_image": passes["new"],
                "forward_ratio": passes["old"] / passes["new"],
                "old_robust": runs["old"][0]["robust_acc"],
                "new_robust": runs["new"][0]["robust_acc"],
                "old_robust_worst": runs["old"][0]["robust_acc_worst"],
                "new_robust_worst": runs["new"][0]["robust_acc_worst"],
                "same_judge": judged,
                "runs": runs,
            }
            rows.append(row)
            print(
                f"{LABELS[name]}: old {per['old']:.2f} s/image, new {per['new']:.2f} s/image "
                f"({measure.replace('_s', '')}): ratio {row['ratio']:.2f}x; denoiser forward images per image "
                f"old {passes['old']:.0f}, new {passes['new']:.0f} (ratio {row['forward_ratio']:.2f}x); "
                "robust (single / worst of N) "
                f"old {row['old_robust']:.3f} / {row['old_robust_worst']:.3f}, "
                f"new {row['new_robust']:.3f} / {row['new_robust_worst']:.3f}; same judges (worst of "
                f"{cfg.get('n_eval', 1)}, seeds {judged['seeds']}): old {judged['old']}, new {judged['new']}; "
                f"largest pixel difference of the adversarial images {judged['max_abs_diff']:.2e}",
                flush=True,
            )
    command = (
        f".venv/bin/python benchmarks/timing/bench_strongest.py --old {args.old} --n {args.n} --steps {args.steps} "
        f"--rounds {args.rounds} --threads {args.threads} --protocols {' '.join(args.protocols)}"
        + ("" if args.out == "docs/raw/bench_strongest.json" else f" --out {args.out}")
    )
    out = {
        "command": command,
        "old_commit": args.old,
        "new_commit": _commit(),
        "n": args.n,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "measure": measure,
        "protocols": rows,
        "provenance": provenance([checkpoint_path(BASE["denoiser"])]),
    }  # this code's; old_commit: the other
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
