#!/usr/bin/env bash
# The Kodak evaluation behind results/ (run after results/campaign.sh; see results/README.md).
#   RUNS=runs/protocol results/evaluate.sh                  # every table whose runs have finished
#   RUNS=runs/protocol results/evaluate.sh main level_gap   # results/kodak only
#   DRY=1 PY=echo results/evaluate.sh                      # print the commands, change nothing
# The campaign's runs (results/campaign.sh) are $RUNS/<model>-$TAG, evaluated at their step $STEPS
# (default the shared start's end and the fine-tune length: m192-from-36k, 15000; the 8,000-step
# protocol of issues 8-11: TAG= STEPS=8000 GAINED=runs/protocol/gained/ckpt-0008000.pt). A stage whose runs
# have not finished says so and is skipped. Measured rows are cached in $RUNS/eval-cache.jsonl
# (keyed by weights hash, image, quality): re-running codes only what is new.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
RUNS=${RUNS:-runs/protocol}
DATA=${DATA:-../shared/data}
A=${ANCHORS:-../shared/anchors}
TAG=${TAG-m192-from-36k}  # TAG= (empty): the untagged runs of results/protocol.sh
STEPS=${STEPS:-15000}
# quality step of the variable-rate curves in main / peers: the campaign's trained levels (1: 8 points
# per curve, each a trained lambda); the 8,000-step protocol's tables were measured at 0.5
QSTEP=${QSTEP:-$([ -n "$TAG" ] && echo 1 || echo 0.5)}

# A run's final weights: its committed export (results/campaign/finished/<run>.pt, written by
# results/campaign.sh when the run finishes: the same file on every machine), else its final
# checkpoint in $RUNS. The issue-21 comparisons are of gained-m192-from-36k (noise quantiser, the
# recipe the single-rate models and the peers share), shipped in sessions 5-9; the model shipped
# since session 10 is the export of gained-ste-m192-from-36k (results/README.md).
FINISHED=${FINISHED:-results/campaign/finished}
final() {
  local run="$1${TAG:+-$TAG}"
  if [ -f "$FINISHED/$run.pt" ]; then echo "$FINISHED/$run.pt"
  else echo "$RUNS/$run/ckpt-$(printf %07d $STEPS).pt"; fi
}
# The gained model of main / peers: in the campaign gained-m192-from-36k, whose recipe the single-rate
# set and the peers share (GAINED=<checkpoint> for another; the 8,000-step protocol names its own).
if [ -n "$TAG" ]; then GAINED=${GAINED:-$(final gained)}; fi
have() {  # have RUN...: every run finished (its final checkpoint exists), else say which is missing
  local r; for r in "$@"; do [ -f "$(final "$r")" ] || { echo "== skipped: $(final "$r") missing" >&2; return 1; }; done
}
finished_singles() {  # single-<lambda>[-$TAG] with a committed export or a DONE file, by lambda
  local d n
  for d in "$FINISHED"/single-*${TAG:+-$TAG}.pt "$RUNS"/single-*${TAG:+-$TAG}; do
    n=$(basename "${d%.pt}"); n=${n%${TAG:+-$TAG}}
    [[ $n =~ ^single-[0-9.]+$ ]] && { [ -f "$d" ] || [ -f "$d/DONE" ]; } && echo "$n"
  done | sort -u -t- -k2,2g | while read -r n; do final "$n"; done
}
kodak() { $PY eval_gain.py -d "$DATA/kodak" --no-progress --cache "$RUNS/eval-cache.jsonl" "$@"; }

# Issues 8 / 16 / 21.1: the gained model (GAINED, above) against the
# same-budget single-rate set, Pillow JPEG / WebP / AVIF measured here, and published curves for context.
main() {
  [ -n "${DRY:-}" ] || rm -f results/kodak/mbt2018-mean-single-rate.json results/kodak/mbt2018-mean-single-rate-per-image.csv  # no stale set
  kodak --step "$QSTEP" ${GAINED:+--checkpoint "$GAINED"} --baseline $(finished_singles) \
    "$A/kodak/compressai-mbt2018-mean_mse_cpu.json" "$A/kodak/mbt2018-mean-vbr-ans.json" \
    "$A/kodak-imagecodecs/jpegxl.json" \
    --classic jpeg,webp,avif --output-dir results/kodak
}
# Issue 21.1: where the gained model loses to the single-rate set, level by level (after main).
level_gap() {
  [ -f results/kodak/mbt2018-mean-single-rate.json ] || { echo "== skipped: run main with finished singles first" >&2; return 0; }
  $PY results/level_gap.py results/kodak/gained-mbt2018-mean.json results/kodak/mbt2018-mean-single-rate.json \
    -o results/kodak/level-gap.md
}

# Issues 11 / 21.2: the same gained model against CompressAI's VBR model trained on the same budget
# (the campaign's in results/logs/vbr-$TAG/peers, the 8,000-step protocol's in results/kodak/peers;
# then results/peers_report.py for the table, with the command it prints).
PEERS=${PEERS:-$([ -n "$TAG" ] && echo "results/logs/vbr-$TAG" || echo results/kodak)}
peers() {
  have vbr || return 0
  kodak --step "$QSTEP" ${GAINED:+--checkpoint "$GAINED"} --baseline "$(final vbr)" $(finished_singles) "$A/kodak/mbt2018-mean-vbr-ans.json" \
    --output-dir "$PEERS/peers"
}

# Issue 21.4: the checkerboard context model against the mean-scale gained model of the same budget
# (BD-rate, and interleaved encode / decode times: results/checkerboard/README.md; time it on an idle CPU).
checkerboard() {
  have checkerboard gained || return 0
  kodak --step 1 --checkpoint "$(final checkerboard)" --name gained-mbt2018-checkerboard \
    --baseline "$(final gained)" --output-dir results/checkerboard
  $PY -m results.checkerboard_report --checkerboard "$(final checkerboard)" --gained "$(final gained)" -d "$DATA/kodak" \
    --budget "Both fine-tuned ${STEPS} steps from the same shared start ($TAG), same data, batch, patch and schedule."
}

# Issue 21.5: the MS-SSIM gained model against the MSE one and Pillow WebP / AVIF (MS-SSIM dB columns).
# The MSE model it is set against: the gained model of the same start and recipe (its committed Kodak
# JSON where there is one, else its checkpoint), for the 8,000-step protocol results/kodak's.
msssim() {
  have msssim || return 0
  local mse=results/kodak/gained-mbt2018-mean.json
  if [ -n "$TAG" ]; then
    mse=results/logs/gained-$TAG/kodak-step$STEPS/gained-$TAG-step$STEPS.json
    [ -f "$mse" ] || mse=$(final gained)
  fi
  kodak --step 1 --checkpoint "$(final msssim)" --name gained-mbt2018-mean-msssim \
    --baseline "$mse" "$A/kodak/compressai-mbt2018-mean_ms-ssim_cpu.json" \
    --classic webp,avif --output-dir results/msssim
}

# Issue 21.3: the spatial-channel model: uniform maps against the gained model (a), ROI at equal
# file size (b), eval_gain.py --mode scgain's plots (c).
scgain() {
  have scgain-gained || return 0
  local sc; sc=$(final scgain-gained)
  $PY eval_gain.py --mode scgain --checkpoint "$sc" -d "$DATA/kodak" --step 1 --no-progress --qmap-values 0,0.5,1 \
    --gain-checkpoint results/logs/gained-m192-from-36k/kodak-step15000/gained-m192-from-36k-step15000.json \
    --output-dir results/scgain
  $PY results/scgain_roi.py --checkpoint "$sc" -d "$DATA/kodak" --qualities 2 4 6 --picture --output-dir results/scgain
}

# Issue 10, at its own budget (8,000-step fine-tunes of the 10,000-step start of results/protocol.sh,
# no campaign tag), against the gained model of that budget.
ablation() {
  local kind
  for kind in asymmetric gmm; do
    kodak --step 0.5 --checkpoint "$RUNS/ablation-$kind/ckpt-0008000.pt" --name "gained-mbt2018-mean-$kind" \
      --baseline "$RUNS/gained/ckpt-0008000.pt" --output-dir "results/ablation/$kind"
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(main level_gap peers checkerboard msssim scgain)
for s in "${stages[@]}"; do $s; done
