#!/usr/bin/env bash
# The long CPU campaign of issue 16 (see results/README.md, "The long campaign").
# Resumable: run it again after any interruption; it continues from the latest checkpoint.
#   results/campaign.sh wide                     # the shared start, M=192 stage (background: nohup ... &)
#   THREADS=1 results/campaign.sh wide           # 1 thread: far steadier when other work shares the cores
#   results/campaign.sh pretrain                 # its first stage (M=96, steps 0-64,000: done, kept for the record)
#
# Where the state comes from, in order:
#   1. $RUNS/pretrain-200k/ckpt-*.pt             (this machine's run: exact --resume)
#   2. results/campaign/pretrain-latest.pt       (the committed weights-only snapshot of this run, see
#      results/README.md: --init, new optimiser state, 500-step warm-up)
#   3. ../shared/checkpoints/pretrain-200k/       (the hand-over at step 11,000: copied, then exact --resume)
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
  local dir="$RUNS/pretrain-200k" snapshot=results/campaign/pretrain-m96-64k.pt
  local start="--resume"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    if [ -f "$snapshot" ]; then  # always further than the hand-over: it was taken from this run
      start="--init $snapshot --warmup-steps 500"
      echo "== no checkpoint in $dir: restarting from the committed snapshot ($start)"
    elif [ -d ../shared/checkpoints/pretrain-200k ]; then
      mkdir -p "$RUNS" && cp -r ../shared/checkpoints/pretrain-200k "$RUNS/" && chmod -R u+w "$dir"
    fi
  fi
  echo "== pretrain: $(date -u +%FT%TZ) $start"
  nice -n 2 $PY train_gain.py -d $TRAIN_DATA $COMMON -m mbt2018-mean --lambda 0.18 \
      --steps 200000 --lr 1e-3 --milestones 0.9 --save-dir "$dir" $start
}

# The shared start's second stage (issue 16): at step 64,000 the M=96 latent had reached its floor (its
# transforms reconstruct Kodak at 33.2 dB without any quantisation, block PCA with 96 components 32.0 dB:
# results/latent_floor.py), so the step-64,000 EMA weights were widened to M=192 with the same
# reconstruction (`gainedvae widen`, gainedvae/widen.py) and training goes on from there: fresh Adam,
# 500-step warm-up, lr 1e-3 constant (x0.1 at 90 % of a 100,000-step cap). Step numbers restart at 0
# (shared-start step = 64,000 + this stage's step). Where the state comes from, in order:
#   1. $RUNS/pretrain-m192/ckpt-*.pt                      (exact --resume)
#   2. results/campaign/pretrain-latest.pt                (committed M=192 snapshot: --init, warm-up)
#   3. $RUNS/pretrain-m192/start.pt                       (the widened start)
#   4. results/campaign/pretrain-m96-64k.pt, widened      (the committed step-64,000 EMA of stage 1)
wide() {
  local dir="$RUNS/pretrain-m192" snapshot=results/campaign/pretrain-latest.pt start="--resume"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    mkdir -p "$dir"
    if [ -f "$snapshot" ]; then
      start="--init $snapshot --warmup-steps 500"
    else
      [ -f "$dir/start.pt" ] || $PY -m gainedvae widen results/campaign/pretrain-m96-64k.pt -M 192 -o "$dir/start.pt"
      start="--init $dir/start.pt --warmup-steps 500"
    fi
  fi
  echo "== shared start, M=192 stage: $(date -u +%FT%TZ) $start"
  nice -n 2 $PY train_gain.py -d $TRAIN_DATA $COMMON -M 192 -m mbt2018-mean --lambda 0.18 \
      --steps 100000 --lr 1e-3 --milestones 0.9 --save-dir "$dir" $start
}

# The gained fine-tune (issue 16, section 2) from the shared start's weights at step $FROM (its EMA,
# through --init), the protocol's fine-tune schedule (results/protocol.sh: lr 5e-4, 500-step warm-up,
# x0.1 at 70 % and 90 %) over $GAINED_STEPS steps. Resumable like the shared start:
#   FROM=48000 THREADS=1 nohup results/campaign.sh gained >> runs/protocol/gained.out 2>&1 &
gained() {
  local from=${FROM:?set FROM to the step of the shared start to fine-tune from}
  local dir="$RUNS/gained-from-$((from / 1000))k" src
  src="$RUNS/pretrain-200k/$(printf ckpt-%07d.pt "$from")"
  local start="--resume"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    mkdir -p "$dir"; [ -f "$dir/start.pt" ] || cp "$src" "$dir/start.pt"  # a copy: --keep rotates the source away
    start="--init $dir/start.pt"
  fi
  echo "== gained from step $from: $(date -u +%FT%TZ) $start"
  nice -n 2 $PY train_gain.py -d $TRAIN_DATA $COMMON -m gained-mbt2018-mean \
      --steps ${GAINED_STEPS:-15000} --lr 5e-4 --warmup-steps 500 --milestones 0.7,0.9 --save-dir "$dir" $start
}

for s in "${@:-pretrain}"; do $s; done
