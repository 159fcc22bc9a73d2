#!/usr/bin/env bash
# Train the shipped digits denoisers on a GPU machine (used for data/checkpoints/digits_{single,multi}); writes to $OUT.
set -u; OUT=${OUT:-data/checkpoints}
export PYTHONPATH=$PWD; nvidia-smi -L; python3 -c "import torch;print(torch.__version__)"
for h in single multi; do (python3 -m rdc_lib.cli train --heads $h --device cuda --no-resume --out $OUT/digits_$h.safetensors > $OUT/train_$h.log 2>&1; echo "$h rc=$?") & done; wait
tail -c 300 $OUT/train_*.log
python3 - <<'PY'
import torch, time, os
from rdc_lib.models import load_denoiser
from rdc_lib.classifier import DiffusionClassifier
from rdc_lib.diffusion import make_grid
from rdc_lib.data import load_dataset
x,y=load_dataset('digits','test'); x,y=x.cuda(),y.cuda()
for h in ['single','multi']:
    d=load_denoiser(os.environ['OUT']+f'/digits_{h}.safetensors',device='cuda')
    for T in [8,16,32]:
        for kind in ['paper','lognormal']:
            dc=DiffusionClassifier(d, make_grid(T,kind), seed=0)
            with torch.no_grad(): acc=(torch.cat([dc(x[i:i+60]).argmax(1) for i in range(0,360,60)])==y).float().mean()
            print(h,T,kind,round(acc.item()*100,2),flush=True)
PY
