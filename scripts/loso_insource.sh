#!/usr/bin/env bash
# Leave-one-source-out with the SHIPPED procedure's checkpoint choice (session 9). scripts/loso.sh full chooses
# each checkpoint on the held-out source itself (optimistic); the shipped members choose theirs on held-out images
# of their own training sources. Here: train on HAM10000 alone at the shipped members' budget (10 x 3,200 draws,
# batch 32, 160 px), validate and choose the checkpoint on a group-aware 20% of HAM10000 (melanoma AUC), then
# score the older-archive images the LOSO rows held out (runs/loso/full-seed1/val_predictions.csv) with
# `melanoma evaluate --label-map binary`; finally the 3-seed ensemble the same way.
#   scripts/loso_insource.sh SEED...          e.g. scripts/loso_insource.sh 1 2 3   (about 20 min per seed; resumes)
# DETAIL_SIZE=150 (session 14): the members' level of detail of the shipped recipe since session 11, in training and
# in scoring. Without runs/loso (HELDOUT_CSV), the held-out images are the whole 9-class split (DATA): `melanoma
# evaluate` leaves out every picture HAM10000 also holds (the model's training fingerprint: ISIC id, pixels, phash),
# which leaves the older archive's own images.
# Pair a lever only with baseline seeds trained on the same machine (ROOT=runs/loso-insource-base): a run repeats
# bit for bit on one machine, but the same seed and code on another CPU landed 0.035 apart (session 34); then
# scripts/insource_table.py --baseline runs/loso-insource-base runs/loso-insource-NAME prints the table rows.
# TRAIN_SOURCE=older (session 47): the other direction. Train on the older archive's own images (the 9-class split
# less every picture or lesion HAM10000 also holds: 360 melanomas, 277 nevi; its 2 seborrheic keratoses are too few
# to split and are left out), validate and choose the checkpoint on a group-aware 20% of them, then score all of
# HAM10000 (`melanoma evaluate` leaves out any picture the run trained on). The images are linked into
# $ROOT/train-older-own once.
set -euo pipefail
cd "$(dirname "$0")/.."
HAM=${HAM:-../shared/data/ham10000}
DATA=${DATA:-../shared/data/isic-9class/Train}
HELDOUT_CSV=${HELDOUT_CSV:-runs/loso/full-seed1/val_predictions.csv}
ROOT=${ROOT:-runs/loso-insource}
MELANOMA=${MELANOMA:-.venv/bin/melanoma}
PYTHON=${PYTHON:-.venv/bin/python}
# MODEL / IMAGE_SIZE: the backbone under test (session 24: efficientnet_lite2 at 224 px against the members' Lite0 at
# 160 px); HARDWARE: extra train options, e.g. HARDWARE="--accelerator gpu --devices 1 --num-workers 14" on a GPU
MODEL=${MODEL:-efficientnet_lite0}; IMAGE_SIZE=${IMAGE_SIZE:-160}
read -r -a HARDWARE_ARGS <<< "${HARDWARE:-}"
DETAIL=()
if [ -n "${DETAIL_SIZE:-}" ]; then DETAIL=(--detail-size "$DETAIL_SIZE"); fi
# EPOCHS / DRAWS: another budget (session 19: EPOCHS=4 DRAWS=960 for recipe checks, as scripts/loso.sh; session 32:
# EPOCHS=15, 1.5x the members' budget, no gain);
# IMBALANCE: none trains on HAM10000's natural class mix instead of the class-balanced sampler
EPOCHS=${EPOCHS:-10}; DRAWS=${DRAWS:-3200}
# SPLIT_SEED: which group-aware 20% of HAM10000 validates (42 for every seed); SPLIT_SEED=seed gives each seed its own
# split (session 39: split-diverse members; their ensemble is then fitted out-of-fold, see ensemble.py)
SPLIT_SEED=${SPLIT_SEED:-42}
# FOLDS=K: each seed trains a group-aware K-fold CV of HAM10000 instead of one split (--folds K --fold-ensemble) and
# its K fold models, as one ensemble fitted on their out-of-fold predictions, are what is scored: the shippable form
# of split-diverse members
FOLDS=${FOLDS:-}
CV=()
if [ -n "$FOLDS" ]; then CV=(--folds "$FOLDS" --fold-ensemble); fi
if [ -n "${IMBALANCE:-}" ]; then DETAIL+=(--imbalance "$IMBALANCE"); fi
mkdir -p "$ROOT"
HELD=$ROOT/heldout-images  # class folders of symlinks: the held-out images, labelled as in the LOSO rows
if [ ! -f "$HELDOUT_CSV" ]; then HELD=$DATA; fi
if [ ! -d "$HELD" ]; then
  rm -rf "$HELD.tmp"  # a half-linked folder of a killed run
  "$PYTHON" - "$HELDOUT_CSV" "$HELD" <<'PY'
import csv, os, sys
from pathlib import Path
rows, out = list(csv.DictReader(open(sys.argv[1], newline=""))), Path(sys.argv[2] + ".tmp")
for row in rows:
    (out / row["label"]).mkdir(parents=True, exist_ok=True)
    os.symlink(Path(row["path"]).resolve(), out / row["label"] / Path(row["path"]).name)
out.rename(sys.argv[2])
print(f"{len(rows)} held-out images in {sys.argv[2]}")
PY
fi
TRAIN_SOURCE=${TRAIN_SOURCE:-ham10000}
case $TRAIN_SOURCE in
  ham10000) TRAIN_DATA=(--data "$HAM" --lesion-metadata "$HAM/HAM10000_metadata.csv") ;;
  older)
    OWN=$ROOT/train-older-own
    if [ ! -d "$OWN" ]; then
      rm -rf "$OWN.tmp"  # a half-linked folder of a killed run
      "$PYTHON" - "$DATA" "$HAM" "$OWN" <<'PY'
import os, sys, tempfile
from pathlib import Path
from melanoma.config import TrainConfig
from melanoma.training import load_training_table
primary, ham, out = sys.argv[1], sys.argv[2], Path(sys.argv[3] + ".tmp")
cfg = TrainConfig(data=primary, extra_data=[ham], lesion_metadata=f"{ham}/HAM10000_metadata.csv")
with tempfile.TemporaryDirectory() as run:  # the joint training table, grouped as `melanoma train` groups it
    table, _ = load_training_table(cfg, Path(run))
own = [s for s in table.samples if s.origin is None and s.also_in is None and s.label in ("melanoma", "nevus")]
for s in own:
    (out / s.label).mkdir(parents=True, exist_ok=True)
    os.symlink(Path(s.path).resolve(), out / s.label / Path(s.path).name)
out.rename(sys.argv[3])
print(f"{len(own)} older-archive images of their own in {sys.argv[3]}")
PY
    fi
    TRAIN_DATA=(--data "$OWN"); HELD=$HAM ;;
  *) echo "TRAIN_SOURCE must be ham10000 or older, got $TRAIN_SOURCE" >&2; exit 2 ;;
esac
RUNS=()
for SEED in "$@"; do
  OUT=$ROOT/full-seed$SEED
  RUNS+=("$OUT")
  SCORED=$OUT; if [ -n "$FOLDS" ]; then SCORED=$OUT/ensemble; fi  # a CV run is scored as its fold ensemble
  SPLIT=$SPLIT_SEED; if [ "$SPLIT_SEED" = seed ]; then SPLIT=$SEED; fi
  if [ ! -f "$OUT/result.json" ] && [ ! -f "$SCORED/model.json" ]; then
    if [ -f "$OUT/config.yaml" ]; then ARGS=(--resume "$OUT"); else
      ARGS=("${TRAIN_DATA[@]}" --model "$MODEL" --image-size "$IMAGE_SIZE"
            --color-constancy shades_of_gray --epochs "$EPOCHS" --samples-per-epoch "$DRAWS" --batch-size 32 --val-fraction 0.2
            --monitor mel_auc --split-seed "$SPLIT" --seed "$SEED" --config scripts/cpu_long.yaml
            "${DETAIL[@]}" "${CV[@]}" "${HARDWARE_ARGS[@]}" --out "$OUT"); fi
    ( time "$MELANOMA" train "${ARGS[@]}" ) > "$OUT.log" 2>&1
  fi
  [ -f "$OUT/heldout-eval/metrics.json" ] || "$MELANOMA" evaluate --model "$SCORED" --data "$HELD" --label-map binary \
    --out "$OUT/heldout-eval" > "$OUT/heldout-eval.log" 2>&1
done
if [ ${#RUNS[@]} -ge 2 ]; then
  ENS=$ROOT/ensemble-$(IFS=-; echo "$*")
  [ -f "$ENS/model.json" ] || "$MELANOMA" ensemble "${RUNS[@]}" --out "$ENS" > "$ENS.log" 2>&1
  [ -f "$ENS/heldout-eval/metrics.json" ] || "$MELANOMA" evaluate --model "$ENS" --data "$HELD" --label-map binary \
    --out "$ENS/heldout-eval" > "$ENS/heldout-eval.log" 2>&1
fi
for RUN in "${RUNS[@]}" ${ENS:+"$ENS"}; do
  "$PYTHON" -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'held-out source melanoma AUC', m.get('melanoma', {}).get('auc'))" "$RUN/heldout-eval/metrics.json" "$RUN"
done
