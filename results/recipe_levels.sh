#!/usr/bin/env bash
# Section-1 comparison for the gained fine-tune (issue 16: levels that learn slower when trained
# jointly): the campaign's gained recipe (results/campaign.sh `finetune`: 15,000-step schedule, lr 5e-4,
# 500-step warm-up, x0.1 at 70 % / 90 %, 1 thread) from the same start as
# runs/protocol/gained-m192-from-10k (stage 2's step 10,000; copied to runs/recipe/start-m192-10k.pt),
# the same seed and data order, one change per lane; compared with that run's val_log at equal steps:
#   results/recipe_levels.sh sample --level-sampling sample     # one level per sample instead of per batch
# then: python results/recipe_levels_table.py   (validation per level at equal steps)
cd "$(dirname "$0")/.."
NAME=$1; shift
D=${DATA:-../shared/data}
[ -f runs/recipe/start-m192-10k.pt ] || { mkdir -p runs/recipe && cp runs/protocol/gained-m192-from-10k/start.pt runs/recipe/start-m192-10k.pt; }
exec nice -n 2 ${PY:-.venv/bin/python} train_gain.py -d $D/bsds500/train $D/bsds500/val $D/bsds500/test $D/sun_hays80 \
    -N 64 -M 192 --batch-size 8 --patch-size 128 --downscale-jpeg --val-size 256 --val-max-images 16 \
    --val-every 2000 --save-every 1000 --keep 2 --log-every 100 --seed 0 --no-progress --compile on \
    --threads 1 --ema-decay 0.999 -m gained-mbt2018-mean \
    --steps 15000 --lr 5e-4 --warmup-steps 500 --milestones 0.7,0.9 \
    --init runs/recipe/start-m192-10k.pt --save-dir runs/recipe/levels-$NAME "$@"
