#!/usr/bin/env bash
# Ship a trained run as the default model (models/default: what `melanoma predict` and Predictor.load() use
# without --model): copies model.safetensors + model.json + val_predictions.csv, then loads it and predicts one
# image as a check.
#   scripts/ship_default.sh runs/cv-lite0-ham
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: scripts/ship_default.sh RUN_FOLDER}
mkdir -p models/default
# val_predictions.csv: the validation outputs behind the alert threshold (`melanoma threshold` re-chooses from it)
cp "$RUN/model.safetensors" "$RUN/model.json" "$RUN/val_predictions.csv" models/default/
IMAGES=(../shared/data/isic-9class/Train/nevus/*.jpg)  # not `ls | head -1`: under pipefail its SIGPIPE (141) ended the script
IMAGE=${IMAGES[0]}
.venv/bin/python - "$IMAGE" <<'PY'
import sys
from melanoma import Predictor
p = Predictor.load()  # the default
print(p.source, p.class_names, p.meta["preprocessing"], p.alert_threshold)
print(p.predict(sys.argv[1])[0])
PY
