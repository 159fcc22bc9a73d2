"""Train the digits diffusers model (a class-conditional UNet2DModel with a DDPM scheduler) on a CPU.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/drivers/train_diffusers_digits.py --steps 1996 \\
        --out data/diffusers_digits

The recipe and the folder it writes: rdc_lib/models/diffusers_train.py (needs the ``diffusers`` extra).
"""

from __future__ import annotations

import argparse
import json

from rdc_lib.models.diffusers_train import DiffusersTrainConfig, train_diffusers_digits


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (diffusers format: unet/, scheduler/)")
    p.add_argument("--steps", type=int, default=DiffusersTrainConfig.steps)
    p.add_argument("--batch-size", type=int, default=DiffusersTrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=DiffusersTrainConfig.lr)
    p.add_argument(
        "--prediction-type", default=DiffusersTrainConfig.prediction_type, choices=("epsilon", "v_prediction", "sample")
    )
    p.add_argument("--seed", type=int, default=DiffusersTrainConfig.seed)
    p.add_argument("--save-every", type=int, default=100, help="save the EMA every this many steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    a = p.parse_args(argv)
    cfg = DiffusersTrainConfig(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, prediction_type=a.prediction_type, seed=a.seed
    )
    summary = train_diffusers_digits(
        cfg,
        a.out,
        log_every=50,
        log=lambda s: print(s, flush=True),
        save_every=a.save_every,
        max_seconds=None if a.max_minutes is None else a.max_minutes * 60,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "train_config"}))


if __name__ == "__main__":
    main()
