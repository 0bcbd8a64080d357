#!/usr/bin/env bash
# The long CPU campaign of issues 16 and 21 (see results/README.md, "The long campaign").
# Resumable: run it again after any interruption; every stage continues from its latest checkpoint,
# finished fine-tunes (a DONE file in their folder) are skipped.
#   THREADS=1 results/campaign.sh gained                  # the gained fine-tune of the shared start (stage 2's step 36,000)
#   THREADS=1 results/campaign.sh singles vbr             # issue 21: the single-rate set, then the VBR peer, from the same start
#   THREADS=1 results/campaign.sh wide                    # the shared start, stage 2 (M=192; stopped at step 36,000)
#   STAGE=m192 FROM=10000 THREADS=1 results/campaign.sh gained   # a gained fine-tune of stage 2's step 10,000
#   results/campaign.sh pretrain                          # stage 1 (M=96, steps 0-64,000: done, kept for the record)
# THREADS=1: one torch thread per lane, far steadier when other work shares the cores (two lanes on 2 cores).
# The whole script is one block that ends in `exit`: bash reads it completely before running it, so
# editing this file cannot change a lane that is already running.
{
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
# How a gained fine-tune draws and weighs its levels (results/README.md, "levels of a gained fine-tune"):
# one level per sample, each level's loss weighted by 1 / its validation loss at step 2,000 of the
# batch-level run gained-m192-from-10k (normalised to mean 1): every level's relative change counts
# alike. Measured against one level per batch from the same start; CompressAI's VBR model keeps its
# one level per batch (its design).
LEVELS="--level-sampling sample --level-weights 2.5,1.79,1.29,0.922,0.644,0.427,0.268,0.161"
# CompressAI's eight lambdas (MSE; MS-SSIM: its MS-SSIM scale)
LAMBDAS_MSE="0.0018 0.0035 0.0067 0.0130 0.0250 0.0483 0.0932 0.18"
LAMBDAS_MSSSIM="2.40,4.58,8.73,16.64,31.73,60.50,115.37,220.00"

# Stage 1 of the shared start (M=96, steps 0-64,000; stopped at its floor, see results/README.md).
# Where the state comes from, in order: $RUNS/pretrain-200k/ckpt-*.pt (exact --resume); the committed
# snapshot results/campaign/pretrain-m96-64k.pt (--init, new optimiser, 500-step warm-up);
# ../shared/checkpoints/pretrain-200k/ (the hand-over at step 11,000: copied, then exact --resume).
pretrain() {
  local dir="$RUNS/pretrain-200k" snapshot=results/campaign/pretrain-m96-64k.pt
  local start="--resume"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    if [ -f "$snapshot" ]; then
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

# Stage 2 of the shared start: at step 64,000 the M=96 latent had reached its floor (its transforms
# reconstruct Kodak at 33.2 dB without any quantisation, block PCA with 96 components 32.0 dB:
# results/latent_floor.py), so the step-64,000 EMA weights were widened to M=192 with the same
# reconstruction (`gainedvae widen`, gainedvae/widen.py) and training goes on from there: fresh Adam,
# 500-step warm-up, lr 1e-3 constant (x0.1 at 90 % of a 100,000-step cap). Step numbers restart at 0
# (shared-start step = 64,000 + this stage's step). Where the state comes from, in order:
#   1. $RUNS/pretrain-m192/ckpt-*.pt                      (exact --resume)
#   2. results/campaign/shared-start-100k.pt              (committed stage-2 EMA at its step 36,000: --init, warm-up)
#   3. $RUNS/pretrain-m192/start.pt                       (the widened start)
#   4. results/campaign/pretrain-m96-64k.pt, widened      (the committed step-64,000 EMA of stage 1)
wide() {
  local dir="$RUNS/pretrain-m192" snapshot=results/campaign/shared-start-100k.pt start="--resume"
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

# finetune NAME SOURCE ARGS...: the protocol's fine-tune schedule (results/protocol.sh: lr 5e-4,
# 500-step warm-up, x0.1 at 70 % and 90 %) over ${STEPS:-15000} steps into $RUNS/NAME, from the
# weights of SOURCE (its EMA, through --init; copied to NAME/start.pt first: --keep rotates the
# source away). Resumable; a DONE file marks it finished (results/training_curves.py reads it).
# A finished run's final EMA weights are exported (float16, entropy tables stored) to
# $FINISHED/NAME.pt, which is committed: a fresh machine has them, so the queue skips the run and
# results/evaluate.sh evaluates that file (losing a machine costs only the running fine-tunes' steps).
FINISHED=${FINISHED:-results/campaign/finished}
export_finished() {  # export_finished NAME: the final checkpoint of a finished run -> $FINISHED/NAME.pt
  local name=$1 ckpt; ckpt=$(printf "$RUNS/$1/ckpt-%07d.pt" "${STEPS:-15000}")
  [ -f "$FINISHED/$name.pt" ] && return
  mkdir -p "$FINISHED" && $PY -m gainedvae export "$ckpt" -o "$FINISHED/$name.pt"
  # its logs land beside it (results/logs/<run>/): the convergence check must survive the machine too
  $PY results/training_curves.py --collect "$RUNS" --run "$name" --no-plot
}
finetune() {
  local name=$1 src=$2; shift 2
  local dir="$RUNS/$name" start="--resume"
  if [ -f "$dir/DONE" ]; then echo "== $name: done"; export_finished "$name"; return; fi
  if [ -f "$FINISHED/$name.pt" ]; then echo "== $name: done (committed export $FINISHED/$name.pt)"; return; fi
  # one lane per run: LANE holds the pid of the lane that trains it (two lanes share the queue)
  local lane; lane=$(cat "$dir/LANE" 2>/dev/null || true)
  if [ -n "$lane" ] && [ "$lane" != "$$" ] && kill -0 "$lane" 2>/dev/null; then
    echo "== $name: running in lane $lane"; return
  fi
  mkdir -p "$dir"; echo $$ > "$dir/LANE"
  if ! ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then
    [ -f "$dir/start.pt" ] || cp "$src" "$dir/start.pt"
    start="--init $dir/start.pt"
  fi
  echo "== $name: $(date -u +%FT%TZ) $start"
  nice -n 2 $PY train_gain.py -d $TRAIN_DATA $COMMON "$@" \
      --steps ${STEPS:-15000} --lr 5e-4 --warmup-steps 500 --milestones 0.7,0.9 --save-dir "$dir" $start
  touch "$dir/DONE"
  export_finished "$name"
  echo "== $name: $(date -u +%FT%TZ) done"
}

# The shared start ends at stage 2's step 36,000 (shared-start step 100,000, the issue's minimum;
# results/README.md says why): every fine-tune of issues 16 and 21 starts from it unless FROM says
# otherwise. Stage 2's checkpoint at step $FROM comes from, in order: the run's own checkpoint; the
# copy kept beside the run ($RUNS/pretrain-m192-$FROM.pt, made before --keep rotates it away); for
# step 36,000 on a fresh machine, the committed EMA weights results/campaign/shared-start-100k.pt.
SHARED_START=36000
from_step() { echo "${FROM:-$SHARED_START}"; }
stage2() {
  local step ckpt kept
  step=$(from_step); ckpt=$(printf "$RUNS/pretrain-m192/ckpt-%07d.pt" "$step"); kept="$RUNS/pretrain-m192-$step.pt"
  if [ -f "$ckpt" ]; then echo "$ckpt"
  elif [ -f "$kept" ]; then echo "$kept"
  elif [ "$step" = "$SHARED_START" ] && [ -f results/campaign/shared-start-100k.pt ]; then echo results/campaign/shared-start-100k.pt
  else echo "$ckpt"; fi  # absent: finetune's cp says so and the lane stops
}
tag() { echo "m192-from-$(($(from_step) / 1000))k"; }

# The gained fine-tune (issue 16, section 2). STAGE=m192 (default): stage 2's step $FROM (its own
# step count; default the shared start's end, 36,000); STAGE=m96: stage 1's step $FROM.
#   FROM=48000 THREADS=1 nohup results/campaign.sh gained >> runs/protocol/gained.out 2>&1 &
#   STAGE=m192 FROM=4000 THREADS=1 nohup results/campaign.sh gained >> runs/protocol/gained-m192.out 2>&1 &
gained() {
  case "${STAGE:-m192}" in
    m96) finetune "gained-from-$(($(from_step) / 1000))k" "$(printf "$RUNS/pretrain-200k/ckpt-%07d.pt" "$(from_step)")" \
             -m gained-mbt2018-mean ;;
    m192) finetune "gained-$(tag)" "$(stage2)" -M 192 -m gained-mbt2018-mean $LEVELS ;;
    *) echo "STAGE must be m96 or m192, got $STAGE" >&2; return 2 ;;
  esac
}

# Issue 16: the gained fine-tune with the decoder trained on rounded latents (--quantizer ste: noise
# for the rate only, CompressAI's quantizer='ste'); shipped in session 10 (Kodak -2.86 % against
# gained-m192-from-36k, results/README.md).
gained_ste() { finetune "gained-ste-$(tag)" "$(stage2)" -M 192 -m gained-mbt2018-mean $LEVELS --quantizer ste; }
# The shipped recipe (--quantizer ste) continued, in pieces that each fit one session (a lost machine
# costs a whole unfinished run: one 30,000-step run is about 2.5 h of a lane on session 10's Intel
# machine and about 5 h on the AMD one): a second 15,000-step fine-tune with the same schedule (warm
# restart to lr 5e-4) from the committed export of gained-ste-$(tag), 30,000 fine-tune steps in all
# (issue 16; shipped in session 11). PIECE=3 (4, ...) trains the next piece from the previous piece's export:
#   PIECE=3 THREADS=1 nohup results/campaign.sh gained_more >> runs/protocol/gained-m192.out 2>&1 &
gained_more() {
  local n=${PIECE:-2} prev="gained-ste-$(tag)"
  [ "$n" -gt 2 ] && prev="gained-ste$((n - 1))-$(tag)"
  finetune "gained-ste$n-$(tag)" "$FINISHED/$prev.pt" -M 192 -m gained-mbt2018-mean $LEVELS --quantizer ste
}
# The top levels learn slowest and the shipped model's top level drifted to a lower rate (1.65 bpp on
# Kodak against the single-rate lambda-0.18 model's 1.86; results/README.md, session 15): piece
# ${PIECE:-5} of gained_more with the top two levels' weights doubled (0.268, 0.161 -> 0.536, 0.322),
# from piece PIECE-1's export; judged per level against piece PIECE-1 (and a plain piece PIECE if trained).
LEVELS_TOP="--level-sampling sample --level-weights 2.5,1.79,1.29,0.922,0.644,0.427,0.536,0.322"
gained_top() {
  local n=${PIECE:-5}
  finetune "gained-ste$n-top-$(tag)" "$FINISHED/gained-ste$((n - 1))-$(tag).pt" -M 192 -m gained-mbt2018-mean \
      $LEVELS_TOP --quantizer ste
}

# The range fix that gained_top did not give (session 17: piece 5's top level moved from 1.654 to
# 1.661 bpp on Kodak): a ninth level above lambda 0.18, extrapolated from the top two levels of the
# gained_top piece's export (results/extra_level.py: log gains 2 log m_8 - log m_7, lambda
# 0.18^2 / 0.0932 = 0.3476; untrained; results/README.md has what it reaches on Kodak), then
# trained with the other eight for PIECE (default 6) = 15,000 more steps: gained_top's weights and
# the ninth level's 0.6 x the eighth's (the recipe's ratio between adjacent levels).
LAMBDAS_TOP9="0.0018,0.0035,0.0067,0.0130,0.0250,0.0483,0.0932,0.18,0.3476"
LEVELS_TOP9="--level-sampling sample --level-weights 2.5,1.79,1.29,0.922,0.644,0.427,0.536,0.322,0.193"
# PIECE=7 (8, ...) continues the nine-level model from piece PIECE-1's export (gained-ste6-top9: session 17).
gained_top9() {
  local n=${PIECE:-6} name start
  name="gained-ste$n-top9-$(tag)"; start="$RUNS/$name-start.pt"
  if [ "$n" -gt 6 ]; then
    start="$FINISHED/gained-ste$((n - 1))-top9-$(tag).pt"
  elif [ ! -f "$FINISHED/$name.pt" ] && [ ! -f "$start" ]; then
    mkdir -p "$RUNS" && $PY results/extra_level.py "$FINISHED/gained-ste$((n - 1))-top-$(tag).pt" -o "$start"
  fi
  finetune "$name" "$start" -M 192 -m gained-mbt2018-mean --lambdas "$LAMBDAS_TOP9" $LEVELS_TOP9 --quantizer ste
}

# Issue 21, from stage 2's step $FROM, the gained model's recipe (same data, patch, batch, schedule, steps):
# the eight single-rate models, CompressAI's VBR model (its stage 2; stage 1 = the shared start),
# the checkerboard context model (context layers from scratch) and an MS-SSIM gained model
# (MS-SSIM's 5 scales need patches >= 161: 256x256 x 2, the same pixels per step).
single() { finetune "single-$1-$(tag)" "$(stage2)" -M 192 -m mbt2018-mean --lambda "$1"; }
singles() { local l; for l in ${SINGLES:-$LAMBDAS_MSE}; do single "$l"; done; }  # SINGLES="0.0130 ...": another order
singles_desc() { local l; for l in $(printf '%s\n' $LAMBDAS_MSE | sort -gr); do single "$l"; done; }  # the other lane's order
vbr() { finetune "vbr-$(tag)" "$(stage2)" -M 192 -m mbt2018-mean-vbr; }
checkerboard() { finetune "checkerboard-$(tag)" "$(stage2)" -M 192 -m gained-mbt2018-checkerboard $LEVELS; }
msssim() {
  finetune "msssim-$(tag)" "$(stage2)" -M 192 -m gained-mbt2018-mean --metric ms-ssim --lambdas "$LAMBDAS_MSSSIM" \
      --patch-size 256 --batch-size 2 $LEVELS
}
# gained-scgain, fine-tuned from a finished gained model (GAINED=<its checkpoint>; default the gained
# fine-tune of the same start). The shipped weights are the float16 EMA export of $SHIPPED_RUN (session
# 5): on a fresh machine without that run's checkpoint, the default starts from them.
SHIPPED_RUN=$RUNS/gained-m192-from-36k/ckpt-0015000.pt
scgain() {
  local src=${GAINED:-$RUNS/gained-$(tag)/ckpt-$(printf %07d ${STEPS:-15000}).pt}  # default: the gained fine-tune of the same start
  local name="scgain-$(basename "$(dirname "$src")")"
  if [ -z "${GAINED:-}" ] && [ "$src" = "$SHIPPED_RUN" ] && [ ! -f "$src" ]; then src=gainedvae/weights/gained-mbt2018-mean.pt; fi
  finetune "$name" "$src" -M 192 -m gained-scgain $LEVELS
}

for s in "${@:-wide}"; do $s; done
exit
}
