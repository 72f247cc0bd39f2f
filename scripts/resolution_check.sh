#!/usr/bin/env bash
# Is the level of detail a cue for the class? (session 10) The shipped recipe (9-class Train + HAM10000, one
# group-aware 20% of both sources validates, --split-seed 42) at a short budget (EPOCHS x DRAWS, default 4 x 960),
# one run per arm and seed, then scripts/detail_robustness.py on each arm's runs: AUC and share alerted on the
# validation images of each collection as stored and reduced to a 150 / 120 / 100 px shorter side.
#   scripts/resolution_check.sh ARM SEED...     ARM: standard | resolution (--augmentation resolution)
# About 3-4 min per run alone on 2 cores; resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ARM=${1:?usage: scripts/resolution_check.sh standard|resolution SEED...}; shift
HAM=${HAM:-../shared/data/ham10000}
MELANOMA=${MELANOMA:-.venv/bin/melanoma}
ROOT=${ROOT:-runs/resolution}
mkdir -p "$ROOT"
RUNS=()
for SEED in "$@"; do
  OUT=$ROOT/$ARM-seed$SEED
  RUNS+=("$OUT")
  [ -f "$OUT/result.json" ] && continue
  if [ -f "$OUT/config.yaml" ]; then ARGS=(--resume "$OUT"); else
    ARGS=(--data "${DATA:-../shared/data/isic-9class/Train}" --extra-data "$HAM" --lesion-metadata
          "$HAM/HAM10000_metadata.csv" --conflict-policy reference --color-constancy shades_of_gray
          --model efficientnet_lite0 --image-size 160 --epochs "${EPOCHS:-4}" --samples-per-epoch "${DRAWS:-960}"
          --val-fraction 0.2 --val-sources all --monitor mel_auc --split-seed 42 --batch-size 32
          --augmentation "$ARM" --config scripts/cpu_long.yaml --seed "$SEED" --out "$OUT"); fi
  ( time "$MELANOMA" train "${ARGS[@]}" ) > "$OUT.log" 2>&1
done
.venv/bin/python scripts/detail_robustness.py "${RUNS[@]}" | tee "$ROOT/$ARM-$(IFS=-; echo "$*").txt"
