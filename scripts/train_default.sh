#!/usr/bin/env bash
# Train the shipped default model (models/default): efficientnet_lite0 on the 9-class Train split + HAM10000
# (training only), validated on the 9-class hold-out split = fold 0 of scripts/cv_isic9.sh's 5-fold CV (same
# seed), so its validation numbers compare directly with that CV's fold 0. Resumes when re-run.
#   scripts/train_default.sh [OUT] [COLOUR_CONSTANCY]     then: scripts/ship_default.sh OUT
# About 30 min on 2 CPU cores (10 epochs x 3,200 class- and source-balanced draws at 160 px).
cd "$(dirname "$0")/.."
OUT=${1:-runs/default-v2}
CC=${2:-shades_of_gray}
DATA=../shared/data/isic-9class/Train
HAM=../shared/data/ham10000
if [ -f "$OUT/config.yaml" ]; then
  set -- --resume "$OUT"
else
  set -- --data $DATA --extra-data $HAM --lesion-metadata $HAM/HAM10000_metadata.csv --conflict-policy reference \
    --color-constancy "$CC" --model efficientnet_lite0 --image-size 160 --epochs 10 --samples-per-epoch 3200 \
    --val-fraction 0.2 --seed 42 --batch-size 32 --config scripts/cpu_long.yaml --out "$OUT"
fi
mkdir -p runs
( time .venv/bin/melanoma train "$@" ) > "$OUT.log" 2>&1
