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
EPOCHS=${EPOCHS:-4} DRAWS=${DRAWS:-960} AUGMENTATION=$ARM DETAIL_SIZE=${DETAIL_SIZE-}  # images as stored (session 10)
source scripts/default_recipe.sh  # RECIPE: the shipped recipe at this budget
MELANOMA=${MELANOMA:-.venv/bin/melanoma}
ROOT=${ROOT:-runs/resolution}
mkdir -p "$ROOT"
RUNS=()
for SEED in "$@"; do
  OUT=$ROOT/$ARM-seed$SEED
  RUNS+=("$OUT")
  [ -f "$OUT/result.json" ] && continue
  if [ -f "$OUT/config.yaml" ]; then ARGS=(--resume "$OUT"); else
    ARGS=("${RECIPE[@]}" --seed "$SEED" --out "$OUT"); fi
  ( time "$MELANOMA" train "${ARGS[@]}" ) > "$OUT.log" 2>&1
done
.venv/bin/python scripts/detail_robustness.py "${RUNS[@]}" | tee "$ROOT/$ARM-$(IFS=-; echo "$*").txt"
