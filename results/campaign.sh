#!/usr/bin/env bash
# The long CPU campaign of issue 16 (see results/README.md, "The long campaign").
# Resumable: run it again after any interruption; it continues from the latest checkpoint.
#   results/campaign.sh pretrain                 # the shared start (background: nohup ... &)
#   THREADS=1 results/campaign.sh pretrain       # 1 thread: far steadier when other work shares the cores
#
# Where the state comes from, in order:
#   1. $RUNS/pretrain-200k/ckpt-*.pt             (this machine's run: exact --resume)
#   2. ../shared/checkpoints/pretrain-200k/       (the hand-over at step 11,000: copied, then exact --resume)
# A weights-only snapshot committed in results/campaign/ (see results/README.md) restarts a lost
# run with --init (new optimiser state, 500-step warm-up) when neither exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/protocol}
DATA=${DATA:-../shared/data}
TRAIN_DATA="$DATA/bsds500/train $DATA/bsds500/val $DATA/bsds500/test $DATA/sun_hays80"
# the protocol's data, widths, batch and patch (results/protocol.sh), long schedule, EMA of the weights
COMMON="-N 64 -M 96 --batch-size 8 --patch-size 128 --downscale-jpeg --val-size 256 --val-max-images 16 \
        --val-every 2000 --save-every 1000 --keep 2 --log-every 100 --seed 0 --no-progress --compile on \
        --threads ${THREADS:-0} --ema-decay 0.999"

pretrain() {
  local dir="$RUNS/pretrain-200k"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1 && [ -d ../shared/checkpoints/pretrain-200k ]; then
    mkdir -p "$RUNS" && cp -r ../shared/checkpoints/pretrain-200k "$RUNS/" && chmod -R u+w "$dir"
  fi
  local start="--resume"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    start="--init results/campaign/pretrain-latest.pt --warmup-steps 500"
    echo "== no checkpoint in $dir: restarting from the committed snapshot ($start)"
  fi
  echo "== pretrain: $(date -u +%FT%TZ) $start"
  nice -n 2 $PY train_gain.py -d $TRAIN_DATA $COMMON -m mbt2018-mean --lambda 0.18 \
      --steps 200000 --lr 1e-3 --milestones 0.9 --save-dir "$dir" $start
}

for s in "${@:-pretrain}"; do $s; done
