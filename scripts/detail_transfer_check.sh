#!/usr/bin/env bash
# Does a detail calibration fitted on one source help another source's small images? (session 14)
# For each RUN trained on HAM10000 alone with --detail-size (scripts/loso_insource.sh with DETAIL_SIZE=150):
#   1. fit the calibration on its HAM10000 validation images (`melanoma threshold --detail-levels 120 100`),
#   2. write the older archive's own images (the 9-class images its held-out evaluation kept: RUN/heldout-eval/
#      predictions.csv) at a 120 px and a 100 px shorter side,
#   3. score them with the model without and with the calibration (`melanoma evaluate --bootstrap 0`).
# Prints AUC, sensitivity and specificity at each model's alert per level.
#   scripts/detail_transfer_check.sh RUN...          (about 4 min per run on 2 cores; resumes)
set -euo pipefail
cd "$(dirname "$0")/.."
MELANOMA=${MELANOMA:-.venv/bin/melanoma}
PYTHON=${PYTHON:-.venv/bin/python}
for RUN in "$@"; do
  CAL=$RUN-detailcal
  [ -f "$CAL/model.json" ] || "$MELANOMA" threshold "$RUN" --target-sensitivity 0.9 --detail-levels 120 100 \
    --out "$CAL" > "$CAL.log" 2>&1
  for SIDE in 120 100; do
    SMALL=$RUN/heldout-$SIDE
    if [ ! -d "$SMALL" ]; then
      "$PYTHON" - "$RUN/heldout-eval/predictions.csv" "$SIDE" "$SMALL" <<'PY'
import csv, sys
from pathlib import Path
sys.path.insert(0, "scripts")
from older_archive_at_detail import write_at_side  # each image in its 9-class folder (the CSV's label may be mapped)
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
write_at_side([row["path"] for row in rows], int(sys.argv[2]), Path(sys.argv[3]))
PY
    fi
    for MODEL in "$RUN" "$CAL"; do
      EVAL=$MODEL/heldout-eval-$SIDE
      [ -f "$EVAL/metrics.json" ] || "$MELANOMA" evaluate --model "$MODEL" --data "$SMALL" --label-map binary \
        --bootstrap 0 --out "$EVAL" > "$EVAL.log" 2>&1
      "$PYTHON" -c "
import json, sys
m = json.load(open(sys.argv[1]))['melanoma']
v = lambda k: m[k]['value'] if isinstance(m[k], dict) else m[k]
print(f'{sys.argv[2]:60s} {sys.argv[3]} px  AUC {v(\"auc\"):.3f}  sensitivity {v(\"sensitivity\"):.2f}  specificity {v(\"specificity\"):.2f}')
" "$EVAL/metrics.json" "$MODEL" "$SIDE"
    done
  done
done
