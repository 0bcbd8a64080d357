#!/usr/bin/env bash
# Issue 16, section 3: the README's CUDA commands, never run on a GPU so far, in one device call
# (the `device` tool lends a GPU to some tasks only: 15 minutes in all, 10 minutes a command).
#   results/gpu_check.sh pack          # here: .gpu/ (.gitignore): wheels the GPU machine lacks,
#                                      # 100 BSDS500 images as a .tar, 4 Kodak images (about 10 MB)
#   device run, carry [".gpu"], timeout_s 540:
#     results/gpu_check.sh run         # there: writes $OUT/gpu-check.log and the runs' JSON logs
#   CUDA= STEPS=20 OUT=/tmp/gpu results/gpu_check.sh run   # the same steps on the CPU, shorter (checks this script)
# Steps, each under its own time limit, every one runs whether or not an earlier one failed:
#   1. `python train_gain.py -d DATA --cuda` (README, "Training"), STEPS (300) steps at its defaults
#   2. `torchrun --nproc_per_node=1 train_gain.py -d DATA --cuda` (one GPU there), STEPS / 3 steps
#   3. `eval_gain.py --cuda` with the shipped model on the 4 Kodak images (real bitstreams)
# A full-width GPU-trained model (section 3's other half) does not fit in 15 minutes of device time.
# The working tree travels too (64 MiB in all): if it is too large, move results/campaign/finished/
# out of the checkout for the call and back after it.
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu
pack() {
  local py=${PY:-.venv/bin/python} data=${DATA:-../shared/data}
  mkdir -p "$G/whl" "$G/kodak"
  # the GPU machine has torch, numpy, scipy, matplotlib, torchvision, pandas, einops (device KINDS.md);
  # compressai and pytorch-msssim travel as wheels for its Python 3.12
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 -d "$G/whl" compressai==1.2.8 pytorch-msssim
  tar -cf "$G/train.tar" -C "$data/bsds500" val
  cp "$data"/kodak/kodim0{1,4,7,9}.png "$G/kodak/"
  du -sh "$G"
}
run() {
  local cuda=${CUDA---cuda} out=${OUT:?OUT: the folder for the results} n=${STEPS:-300} log
  log="$out/gpu-check.log"; mkdir -p "$out"
  if [ -d "$G/whl" ] && ! python3 -c "import compressai" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$G"/whl/*.whl
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
  step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log its status
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" | tee -a "$log"
    local t0=$SECONDS; timeout "$limit" "$@" >> "$log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
  }
  step env 60 python3 -c "import torch, compressai; print(torch.__version__, compressai.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  step readme-train 180 python3 train_gain.py -d "$G/train.tar" $cuda --steps "$n" --log-every 50 --val-every "$n" \
    --save-every "$n" --no-progress --save-dir "$out/readme-train"
  step torchrun 120 torchrun --standalone --nproc_per_node=1 train_gain.py -d "$G/train.tar" $cuda --steps $((n / 3)) \
    --log-every 50 --val-every $((n / 3)) --save-every $((n / 3)) --no-progress --save-dir "$out/torchrun"
  step eval 150 python3 eval_gain.py -d "$G/kodak" $cuda --step 1 --no-progress --output-dir "$out/eval"
  rm -f "$out"/*/ckpt-*.pt "$out"/*/best.pt  # checkpoints are not needed back (and too large to return)
}
"${1:?usage: results/gpu_check.sh pack|run}"
