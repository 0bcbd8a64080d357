#!/usr/bin/env bash
# Section-1 learning-rate comparison (issue 16): 2,000 steps of the shared-start configuration from
# the campaign's step-36,000 weights (runs/recipe/start36k.pt, a copy of
# runs/protocol/pretrain-200k/ckpt-0036000.pt; --init takes its EMA), 300-step warm-up, 1 thread:
#   results/recipe_lr.sh const-1e-3 --lr 1e-3                    # what the campaign runs now
#   results/recipe_lr.sh const-2e-3 --lr 2e-3                    # twice the rate
#   results/recipe_lr.sh decay-1e-3 --lr 1e-3 --milestones 0.5   # x0.1 at step 1,000: what a decay brings now
# then: python results/recipe_kodak.py runs/recipe/lr-<name>/ckpt-0002000.pt
cd "$(dirname "$0")/.."
NAME=$1; shift
exec results/recipe_patch.sh 128 8 --init runs/recipe/start36k.pt --save-dir runs/recipe/lr-$NAME "$@"
