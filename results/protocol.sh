#!/usr/bin/env bash
# The CPU training protocol behind results/ (see results/README.md).
# Resumable: run it again after an interruption and every stage continues from its
# latest checkpoint; finished stages are skipped.
#   RUNS=/path/to/runs results/protocol.sh            # all stages
#   RUNS=... results/protocol.sh pretrain gained       # some stages
#   THREADS=1 RUNS=... results/protocol.sh single-0.0018 &   # two 1-thread lanes side by side
#   THREADS=1 RUNS=... results/protocol.sh single-0.18 &     # (more steps/s in total on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RUNS=${RUNS:-runs/protocol}
DATA=${DATA:-../shared/data}
TRAIN_DATA="$DATA/bsds500/train $DATA/bsds500/val $DATA/bsds500/test $DATA/sun_hays80"
COMMON="-N 64 -M 96 --batch-size 8 --patch-size 128 --downscale-jpeg --val-size 256 --val-max-images 16 \
        --val-every 1000 --save-every 500 --keep 2 --log-every 50 --seed 0 --no-progress --threads ${THREADS:-0} --compile off"
PRETRAIN_STEPS=10000
STEPS=8000             # per model after the shared start: every single-rate model and the gained model
PRETRAIN_LAMBDA=0.18   # the highest quality first; every other model is fine-tuned from it

stage() {  # stage NAME ARGS...: run train_gain.py into $RUNS/NAME, resuming if it has checkpoints
  local name=$1; shift
  local dir="$RUNS/$name"
  if [ -f "$dir/DONE" ]; then echo "== $name: done"; return; fi
  local resume=""
  if ls "$dir"/ckpt-*.pt >/dev/null 2>&1; then resume="--resume"; fi
  echo "== $name: $(date -u +%FT%TZ) start $resume"
  $PY train_gain.py -d $TRAIN_DATA $COMMON --save-dir "$dir" $resume "$@"
  touch "$dir/DONE"
  echo "== $name: $(date -u +%FT%TZ) done"
}

pretrain() { stage pretrain -m mbt2018-mean --lambda $PRETRAIN_LAMBDA --steps $PRETRAIN_STEPS --lr 1e-3 --milestones 0.9; }
# A fresh Adam at full lr wrecks a trained start in its first steps (measured: 3 steps at 5e-4 took
# the lambda=0.18 level from 23.3 to 19.5 dB on two validation crops), hence a 500-step warm-up.
finetune() { echo "--init $RUNS/pretrain/ckpt-$(printf %07d $PRETRAIN_STEPS).pt --steps $STEPS --lr 5e-4 --warmup-steps 500 --milestones 0.7,0.9"; }
gained() { stage gained -m gained-mbt2018-mean $(finetune); }
single() { stage "single-$1" -m mbt2018-mean --lambda "$1" $(finetune); }
singles4() { for l in 0.0018 0.18 0.0130 0.0483; do single $l; done; }
singles8() { for l in 0.0035 0.0067 0.0250 0.0932; do single $l; done; }
# CompressAI's variable-rate peer (issue 11): upstream's stage 1 is a single-rate model at the
# highest lambda, i.e. our shared start; stage 2 (the VBR path, all lambdas) gets the same steps.
vbr() { stage vbr -m mbt2018-mean-vbr $(finetune); }
# Entropy-model ablation (issue 10): the gained model again with the asymmetric Gaussian and the
# GMM, same start, steps and data as "gained" (whose Gaussian run is the reference). The start's
# Gaussian h_s layer is copied into the wider one (see GainedHyperprior.load_backbone_state_dict).
ablation() { stage "ablation-$1" -m gained-mbt2018-mean --entropy-model "$1" $(finetune); }

stages=("$@")
for i in "${!stages[@]}"; do  # "single-0.013" is a stage name too
  case ${stages[$i]} in
    single-*) stages[$i]="single ${stages[$i]#single-}";;
    ablation-*) stages[$i]="ablation ${stages[$i]#ablation-}";;
  esac
done
[ ${#stages[@]} -eq 0 ] && stages=(pretrain gained singles4 vbr singles8)
for s in "${stages[@]}"; do $s; done  # word-splitting of "single L" is intended
