"""Seconds per training step of every stage of a recipe, and the wall time of its full replay estimated from them.

    .venv/bin/python benchmarks/timing/recipe_timing.py
        [--recipe data/recipes/digits_film_multi_distill9_h16_long_adv.yaml]
        [--steps 6] [--threads 1] [--device cpu] [--stages NAME ...]

Each stage trains ``--steps`` steps (into a temporary folder, without the validation images, as the documented
replay does) from the shipped checkpoints its stage names (``shipped`` of its parent and teacher: the same shapes
and costs as the replay's own outputs). The first step (allocation, warm-up) is left out of the mean. The estimate
is the sum over stages of (seconds per step x the stage's steps); checkpoint writes and loading are not counted.
Prints one JSON line per stage and a last line with the estimate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rdc_lib.cli.recipe import load_recipe, stage_train_config
from rdc_lib.train import train_denoiser


def time_stage(stage, shipped: dict[str, str], steps: int, device: str, folder: Path) -> dict:
    """Seconds per step of ``stage`` over ``steps`` steps (the first left out), parents read from shipped files."""
    refs = [f"data/checkpoints/{shipped[r]}.safetensors" if r in shipped else r for r in (stage.parent, stage.teacher)]
    cfg = stage_train_config(stage, refs[0], refs[1], exclude_val=True)
    full = cfg.steps
    cfg = replace(cfg, steps=steps, checkpoint_every=10**9, warmup=min(cfg.warmup, steps))
    stamps: list[float] = []
    train_denoiser(
        cfg,
        folder / f"{stage.name}.safetensors",
        device=device,
        progress=False,
        on_step=lambda step, loss: stamps.append(time.perf_counter()),
    )
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"stage": stage.name, "seconds_per_step": per_step, "steps": full, "estimated_seconds": per_step * full}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="data/recipes/digits_film_multi_distill9_h16_long_adv.yaml")
    ap.add_argument("--steps", type=int, default=6, help="steps timed per stage (>= 2; the first is left out)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", nargs="+", default=None, help="only these stages")
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is left out)")
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    shipped = {s.name: s.shipped for s in recipe.stages if s.shipped}
    total, rows = 0.0, []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in recipe.stages:
            if args.stages and stage.name not in args.stages:
                continue
            row = time_stage(stage, shipped, args.steps, args.device, Path(tmp))
            rows.append(row)
            total += row["estimated_seconds"]
            print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "recipe": recipe.name,
                "stages_timed": len(rows),
                "timed_steps": args.steps,
                "threads": args.threads,
                "device": args.device,
                "estimated_replay_seconds": total,
                "estimated_replay_hours": total / 3600,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
