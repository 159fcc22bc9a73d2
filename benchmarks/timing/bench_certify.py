"""Cost of one certified image (issue 18), multi-head vs single-head noised DC and denoised smoothing, in one run:

    python benchmarks/timing/bench_certify.py [--n-images 3] [--n 200] [--n0 20] [--T 4] [--sigma 0.25] [--threads 1]
                                       [--out docs/raw/bench_certify.json]

For each base classifier, Cohen's CERTIFY (no attack) on the same first test images with the same draws:
seconds and single-image network passes per certified image, and the ratio single-head / multi-head
(same T, same draws: the multi-head network scores all 10 classes in one pass per level). Seconds
scale linearly with the draws n0 + N; the 100-image N = 1,000 run of docs/certified.md multiplies them.
The result (JSON) is printed as the last line and written to ``--out`` (read by ``certify_report.py doc``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from rdc_lib.certify.runner import CertifyConfig, run_certify
from rdc_lib.core.choices import LEGACY_DENOISERS
from rdc_lib.evaluation.provenance import certify_provenance, command_line

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=3)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--n0", type=int, default=20)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "docs" / "raw" / "bench_certify.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    common = dict(
        pixel_sigma=args.sigma,
        n_images=args.n_images,
        n0=args.n0,
        n_draws=args.n,
        alpha=0.001,
        timesteps=args.T,
        attack_steps=0,
        draw_batch=args.n0 + args.n,
    )
    rows, provs = {}, []
    # multi- vs single-head cost of the same U-Net: digits_multi / digits_single by name (the defaults of heads
    # until they became the FiLM denoisers, rdc_lib.core.choices.DEFAULT_DENOISERS)
    multi_net, single_net = LEGACY_DENOISERS["multi"], LEGACY_DENOISERS["single"]
    for name, extra in (
        ("noised-dc multi", {"base": "noised-dc", "heads": "multi", "denoiser": multi_net}),
        ("noised-dc single", {"base": "noised-dc", "heads": "single", "denoiser": single_net}),
        ("denoised", {"base": "denoised", "denoiser": multi_net}),
    ):
        cfg = CertifyConfig(**common, **extra)
        res = run_certify(cfg, progress=False)
        provs.append(certify_provenance(cfg))
        rows[name] = {
            "seconds_per_image": res["seconds_per_image"],
            "passes_per_image": res["passes_per_image"],
            "certified_acc": res["certified_acc"],
        }
        print(
            f"{name:18s} {res['seconds_per_image']:8.2f} s/image {res['passes_per_image']:9.0f} passes/image",
            file=sys.stderr,
        )
    multi, single = rows["noised-dc multi"], rows["noised-dc single"]
    out = {
        "settings": {
            **common,
            "command": command_line(),
            "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {args.threads} thread(s), "
            "shared with other jobs",
        },
        "rows": rows,
        "single_over_multi_seconds": single["seconds_per_image"] / multi["seconds_per_image"],
        "single_over_multi_passes": single["passes_per_image"] / multi["passes_per_image"],
        "noised_dc_over_denoised_seconds": multi["seconds_per_image"] / rows["denoised"]["seconds_per_image"],
        "provenance": {
            **provs[0],
            "checkpoints": dict(sorted({k: v for p in provs for k, v in p["checkpoints"].items()}.items())),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
