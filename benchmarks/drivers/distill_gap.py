"""How close distilled multi-head students come to their single-head teacher, noise level by noise level.

    .venv/bin/python benchmarks/drivers/distill_gap.py [--students digits_film_multi_distill9 ...]
        [--teacher digits_film_single]
        [--n 200] [--sigmas 0.1 0.2 0.4 0.8 1.6] [--seed 0] [--threads 1] [--out FILE.json]

For every student and level sigma, on the first ``n`` digits test images (one noise draw per image and level,
the same for every network): the class gap of the student and of the teacher (mean over images of the smallest
wrong-class denoising error minus the true-class error, rdc_lib.experiments.study.class_gap_by_sigma) and the student's
distance to the teacher over all K class outputs (rdc_lib.experiments.study.distance_to_teacher_by_sigma), model space.
A distance that stays put while training goes on is a student that cannot represent its teacher.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rdc_lib.core.choices import DEFAULT_DENOISERS
from rdc_lib.core.paths import resolve_checkpoint
from rdc_lib.data import load_dataset
from rdc_lib.evaluation.provenance import provenance
from rdc_lib.experiments.study import class_gap_by_sigma, distance_to_teacher_by_sigma
from rdc_lib.models.checkpoints import load_denoiser


def measure(students: list[str], teacher: str, n: int, sigmas: list[float], seed: int) -> dict:
    x, y = load_dataset("digits", "test")
    x, y = x[:n], y[:n]
    t_net = load_denoiser(resolve_checkpoint(teacher))
    gen = lambda: torch.Generator().manual_seed(seed)  # the same draws for every network
    rows = []
    for name in students:
        s_net = load_denoiser(resolve_checkpoint(name))
        rows.append(
            {
                "student": name,
                "gap_student": class_gap_by_sigma(s_net, x, y, sigmas, gen()).tolist(),
                "gap_teacher": class_gap_by_sigma(t_net, x, y, sigmas, gen()).tolist(),
                "distance": distance_to_teacher_by_sigma(s_net, t_net, x, sigmas, gen()).tolist(),
            }
        )
    return {
        "teacher": teacher,
        "n": n,
        "sigmas": sigmas,
        "seed": seed,
        "rows": rows,
        "provenance": provenance([resolve_checkpoint(teacher)] + [resolve_checkpoint(s) for s in students]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", nargs="+", default=[DEFAULT_DENOISERS["multi"]])
    ap.add_argument("--teacher", default=DEFAULT_DENOISERS["single"])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.8, 1.6])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.n < 1 or any(s <= 0 for s in args.sigmas):
        ap.error(f"need --n >= 1 and every sigma > 0, got --n {args.n}, --sigmas {args.sigmas}")
    torch.set_num_threads(args.threads)
    res = measure(args.students, args.teacher, args.n, args.sigmas, args.seed)
    fmt = lambda v: " / ".join(f"{x:+.4f}" if abs(x) < 0.01 else f"{x:+.3f}" for x in v)
    print(f"teacher {res['teacher']}, first {res['n']} test digits, sigma = {' / '.join(map(str, res['sigmas']))}")
    print(f"{'student':40s} | class gap: student | class gap: teacher | distance to teacher")
    for r in res["rows"]:
        print(
            f"{r['student']:40s} | {fmt(r['gap_student'])} | {fmt(r['gap_teacher'])} | "
            + " / ".join(f"{x:.5f}" for x in r["distance"])
        )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
