#!/usr/bin/env bash
# The Kodak evaluation behind results/ (run after results/protocol.sh; see results/README.md).
#   RUNS=runs/protocol results/evaluate.sh            # every table
#   RUNS=runs/protocol results/evaluate.sh main        # results/kodak only
# Measured rows are cached in $RUNS/eval-cache.jsonl (keyed by weights hash, image, quality):
# re-running codes only what is new; delete the file to measure everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RUNS=${RUNS:-runs/protocol}
DATA=${DATA:-../shared/data}
A=${ANCHORS:-../shared/anchors}
STEPS=8000

final() { echo "$RUNS/$1/ckpt-$(printf %07d $STEPS).pt"; }
finished_singles() { for d in "$RUNS"/single-*; do [ -f "$d/DONE" ] && final "$(basename "$d")"; done; }
kodak() { $PY eval_gain.py -d "$DATA/kodak" --step 0.5 --no-progress --cache "$RUNS/eval-cache.jsonl" "$@"; }

# Issue 8: the shipped gained model (no --checkpoint) against the same-budget single-rate set,
# Pillow JPEG / WebP / AVIF measured here, and published curves for context.
main() {
  kodak --baseline $(finished_singles) \
    "$A/kodak/compressai-mbt2018-mean_mse_cpu.json" "$A/kodak/mbt2018-mean-vbr-ans.json" \
    "$A/kodak-imagecodecs/jpegxl.json" \
    --classic jpeg,webp,avif --output-dir results/kodak
}

# Issue 11: the same gained model against CompressAI's VBR model trained on the same budget.
peers() {
  kodak --baseline "$(final vbr)" $(finished_singles) "$A/kodak/mbt2018-mean-vbr-ans.json" \
    --output-dir results/kodak/peers
}

# Issue 10: entropy-model ablation, BD-rate of each variant against the Gaussian one.
ablation() {
  for kind in asymmetric gmm; do
    kodak --checkpoint "$(final ablation-$kind)" --name "gained-mbt2018-mean-$kind" \
      --baseline results/kodak/gained-mbt2018-mean.json --output-dir "results/ablation/$kind"
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(main peers ablation)
for s in "${stages[@]}"; do $s; done
