#!/usr/bin/env bash
# Train the shipped default model (models/default): efficientnet_lite0 on the 9-class Train split + HAM10000
# (training only), validated on the 9-class hold-out split = fold 0 of scripts/cv_isic9.sh's 5-fold CV (same
# seed), so its validation numbers compare directly with that CV's fold 0. Resumes when re-run.
#   scripts/train_default.sh [OUT] [COLOUR_CONSTANCY]     then: scripts/ship_default.sh OUT
# CPU: about 30 min on 2 cores (10 epochs x 3,200 class- and source-balanced draws at 160 px).
# GPU: DEVICE=gpu scripts/train_default.sh runs/default-gpu -- the same recipe (same batch, learning rate and
#   draws, so the same model up to bf16 rounding) with bf16 autocast, channels-last and 8 loader workers; the
#   16-core GPU machine decodes and augments faster than lite0 trains at 160 px, so augmentation stays in the
#   loader workers. Expected well under 8 minutes, most of it the one-off scan and decode of 12,256 images.
# SMOKE=1: the same command line on CPU for 2 steps (tests/test_scripts.py runs it on tiny DATA and HAM copies).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/default-v2}
CC=${2:-shades_of_gray}
DATA=${DATA:-../shared/data/isic-9class/Train}
HAM=${HAM:-../shared/data/ham10000}
DEVICE=${DEVICE:-cpu}
MELANOMA=${MELANOMA:-.venv/bin/melanoma}
if [ -f "$OUT/config.yaml" ]; then
  set -- --resume "$OUT"
else
  set -- --data "$DATA" --extra-data "$HAM" --lesion-metadata "$HAM/HAM10000_metadata.csv" \
    --conflict-policy reference --color-constancy "$CC" --model efficientnet_lite0 --image-size 160 --epochs 10 \
    --samples-per-epoch 3200 --val-fraction 0.2 --seed 42 --batch-size 32 --config scripts/cpu_long.yaml --out "$OUT"
  case $DEVICE in
    cpu) ;;
    gpu) set -- "$@" --accelerator gpu --devices 1 --precision bf16-mixed --num-workers 8 ;;
    *) echo "DEVICE must be cpu or gpu, got $DEVICE" >&2; exit 2 ;;
  esac
  if [ "${SMOKE:-0}" = 1 ]; then  # the recipe's command line, two CPU steps
    for i in "$@"; do shift; case $i in gpu) set -- "$@" cpu ;; bf16-mixed) set -- "$@" 32-true ;; *) set -- "$@" "$i" ;; esac; done
    set -- "$@" --max-train-batches 2 --epochs 1 --samples-per-epoch 64 --num-workers 0
  fi
fi
mkdir -p "$(dirname "$OUT")"
( time "$MELANOMA" train "$@" ) > "$OUT.log" 2>&1
