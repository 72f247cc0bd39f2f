#!/usr/bin/env bash
# The README's CV numbers: 5-fold group-aware CV of both models on the shared Train split, sized for a 2-core CPU
# (about 100 minutes in all). Re-running this script resumes: finished folds are reused, an interrupted fold
# continues from its last finished epoch. HAM10000 lesion ids keep every photo of a lesion on one side. On a GPU, raise --epochs and --image-size.
cd "$(dirname "$0")/.."
DATA=../shared/data/isic-9class/Train
run() {  # run OUT ARGS...: start, or resume when OUT already has a config
  local out=$1; shift
  if [ -f "$out/config.yaml" ]; then .venv/bin/melanoma train --resume "$out"; else .venv/bin/melanoma train --data $DATA --out "$out" "$@"; fi
}
( time run runs/cv-lite0 --model efficientnet_lite0 --image-size 160 --epochs 4 --batch-size 32 --folds 5 --seed 42 --config scripts/cpu_budget.yaml --lesion-metadata ../shared/data/ham10000/HAM10000_metadata.csv ) > runs/cv-lite0.log 2>&1
( time run runs/cv-seedcnn --model seed-cnn --epochs 3 --batch-size 32 --folds 5 --seed 42 --config scripts/cpu_budget.yaml --lesion-metadata ../shared/data/ham10000/HAM10000_metadata.csv ) > runs/cv-seedcnn.log 2>&1
