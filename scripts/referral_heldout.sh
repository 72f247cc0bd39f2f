#!/usr/bin/env bash
# Referral on a source the model never saw (issue 14, item 4): train on HAM10000 alone (its referral statistics
# fitted on a group-aware 20% of HAM10000), then measure the share referred of (a) those HAM10000 validation
# lesions, (b) 600 lesions of the 9-class Train split that are NOT HAM10000 images (older ISIC archive
# collections: a new source), (c) synthetic non-dermoscopic inputs. Target: (b) at most 10%, (c) at least 90%.
#   scripts/referral_heldout.sh [OUT]        (about 5 min on 2 cores; resumes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/referral/ham-only}
HAM=${HAM:-../shared/data/ham10000}
DATA=${DATA:-../shared/data/isic-9class/Train}
if [ ! -f "$OUT/result.json" ]; then
  if [ -f "$OUT/config.yaml" ]; then ARGS=(--resume "$OUT"); else
    ARGS=(--data "$HAM" --lesion-metadata "$HAM/HAM10000_metadata.csv" --model efficientnet_lite0 --image-size 160
          --color-constancy shades_of_gray --epochs "${EPOCHS:-4}" --samples-per-epoch "${DRAWS:-960}" --seed 1
          --config scripts/cpu_long.yaml --out "$OUT"); fi
  mkdir -p "$(dirname "$OUT")"
  .venv/bin/melanoma train "${ARGS[@]}" > "$OUT.log" 2>&1
fi
.venv/bin/python bench/referral_check.py --model "$OUT" --data "$HAM/images" --extra-lesions "$DATA" --extra-n 600
