#!/usr/bin/env bash
# Multi-head digits denoiser variants on a GPU machine; writes to $OUT and prints DC accuracies.
set -u; OUT=${OUT:-data/checkpoints}; export PYTHONPATH=$PWD
python3 -m rdc_lib.cli train --heads multi --batch-size 512 --device cuda --no-resume --out $OUT/digits_multi_b512.safetensors > $OUT/train_b512.log 2>&1 &
python3 -m rdc_lib.cli train --heads multi --batch-size 512 --model-channels 48 --device cuda --no-resume --out $OUT/digits_multi_b512_c48.safetensors > $OUT/train_b512_c48.log 2>&1 &
wait; tail -c 200 $OUT/train_b512*.log
python3 - <<'PY'
import torch, os
from rdc_lib.models import load_denoiser
from rdc_lib.classifier import DiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.data import load_dataset
x,y=load_dataset('digits','test'); x,y=x.cuda(),y.cuda()
for name in ['digits_multi_b512','digits_multi_b512_c48']:
    d=load_denoiser(os.environ['OUT']+f'/{name}.safetensors',device='cuda')
    for T in [16,32]:
        for seed in [0,1]:
            dc=DiffusionClassifier(d, make_grid(T), seed=seed)
            with torch.no_grad(): acc=(torch.cat([dc(x[i:i+60]).argmax(1) for i in range(0,360,60)])==y).float().mean()
            print(name,T,seed,round(acc.item()*100,2),flush=True)
PY
