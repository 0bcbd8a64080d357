#!/usr/bin/env bash
# Section-1 patch-size comparison: equal pixels per step from the same start, runs/recipe/start.pt (a copy of
# runs/protocol/pretrain-200k/ckpt-0026000.pt; --init takes its EMA weights).
#   results/recipe_patch.sh 128 8   |   results/recipe_patch.sh 256 2
cd "$(dirname "$0")/.."
D=../shared/data
P=$1; B=$2; shift 2
exec nice -n 5 ${PY:-.venv/bin/python} train_gain.py -d $D/bsds500/train $D/bsds500/val $D/bsds500/test $D/sun_hays80 \
    -N 64 -M 96 --batch-size $B --patch-size $P --downscale-jpeg --val-size 256 --val-max-images 16 \
    --val-every 500 --save-every 500 --keep 1 --log-every 100 --seed 0 --no-progress --compile on --threads 1 \
    -m mbt2018-mean --lambda 0.18 --steps 2000 --lr 1e-3 --warmup-steps 300 --milestones 2 --ema-decay 0.999 \
    --init runs/recipe/start.pt --save-dir runs/recipe/patch-$P-x$B "$@"
