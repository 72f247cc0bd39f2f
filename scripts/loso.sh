#!/usr/bin/env bash
# Leave-one-source-out recipe check (issue 14): train on HAM10000 alone, validate, choose the checkpoint and the
# alert threshold on the 9-class Train split (older ISIC archive collections, other clinics and devices), which
# the run never trains on (--holdout-source Train; its copies of HAM10000 images are left out of training). One
# row per recipe and seed, so every comparison carries its seed spread (scripts/loso_table.py prints it).
#   scripts/loso.sh RECIPE SEED...      e.g. scripts/loso.sh base 1 2 3; scripts/loso.sh ema 1 2 3
# The other direction: HOLDOUT=ham10000 scripts/loso.sh base 1 2 3 (train on the 9-class Train split alone,
# validate on HAM10000; rows in runs/loso-ham10000/; with SPLIT_SEED=42 one shared sample, runs/loso-ham10000-split42/).
# Budget: EPOCHS x DRAWS class-balanced draws at 160 px (default 5 x 1,280); the tables in docs/results.md use
# EPOCHS=4 DRAWS=960: about 2-3 min per Lite0 row, 3-4 min per Lite2 row, alone on 2 cores. Resumes.
set -u
cd "$(dirname "$0")/.."
RECIPE=${1:?usage: scripts/loso.sh RECIPE SEED...}; shift
DATA=${DATA:-../shared/data/isic-9class/Train}
HAM=${HAM:-../shared/data/ham10000}
HOLDOUT=${HOLDOUT:-Train}
EPOCHS=${EPOCHS:-5}
DRAWS=${DRAWS:-1280}
COMMON=(--data "$DATA" --extra-data "$HAM" --lesion-metadata "$HAM/HAM10000_metadata.csv" --holdout-source "$HOLDOUT"
        --holdout-max-images 2000 --model efficientnet_lite0 --image-size 160 --color-constancy shades_of_gray
        --epochs "$EPOCHS" --samples-per-epoch "$DRAWS" --config scripts/cpu_long.yaml)
case $RECIPE in
  base) EXTRA=() ;;
  current) EXTRA=(--no-channels-last --precision 32-true) ;;  # the path before the fast path (quality check)
  ema) EXTRA=(--ema 0.99) ;;            # ~100-step window: the average of the last fifth of a 200-step run
  swa) EXTRA=(--swa-epochs 2) ;;
  lite2) EXTRA=(--model efficientnet_lite2 --image-size 192) ;;
  size192) EXTRA=(--image-size 192) ;;  # about the data's native size (9-class 180x180, HAM10000 200x150)
  strong) EXTRA=(--augmentation strong) ;;
  coarse) EXTRA=(--coarse-labels) ;;    # HAM10000 akiec / bkl train through summed probabilities
  blr) EXTRA=(--backbone-lr-scale 0.1) ;;  # backbone at a tenth of the head's learning rate
  lpft) EXTRA=(--linear-probe-epochs 1) ;;  # head alone for the first epoch, then everything (LP-FT)
  long) EXTRA=(--epochs 5 --samples-per-epoch 1920) ;;  # 2.5x the draws of EPOCHS=4 DRAWS=960 (base's budget)
  full) EXTRA=(--epochs 10 --samples-per-epoch 3200 --batch-size 32) ;;  # the shipped members' budget (8.3x base)
  detail) EXTRA=(--detail-size 150) ;;  # every image first reduced to HAM10000's 150 px shorter side
  resolution) EXTRA=(--augmentation resolution) ;;  # half the draws shrunk to 40-100% and enlarged back
  # session 17: batches of the natural class mix, classes balanced through the loss instead of the sampler, so the
  # batch-norm statistics are those of a natural mix (as a clinic's images): compare with `detail`
  wloss) EXTRA=(--detail-size 150 --imbalance weighted-loss) ;;
  # session 18, against `detail`: a stronger pull towards uniform predictions (label smoothing 0.3, not 0.1); and
  # batch norm kept at its ImageNet statistics, which carry no trace of the class-balanced training batches
  smooth) EXTRA=(--detail-size 150 --label-smoothing 0.3) ;;
  frozenbn) EXTRA=(--detail-size 150 --freeze-bn) ;;
  mixup) EXTRA=(--detail-size 150 --mixup 0.2) ;;  # blended image pairs: another pull towards less confidence
  # session 19, against `detail` moved to its training mix (threshold --prior-correction): batches of the natural
  # class mix, no balancing at all, so the network learns the clinic-like prior itself instead of having it put back
  natural) EXTRA=(--detail-size 150 --imbalance none) ;;
  *) echo "unknown recipe $RECIPE (base, current, ema, swa, lite2, size192, strong, coarse, blr, lpft, long, full," \
          "detail, resolution, wloss, smooth, frozenbn, mixup, natural)" >&2
     exit 2 ;;
esac
# runs/loso2: since session 9 --holdout-source leaves the images both sources hold (the 9-class split's ~1,300
# HAM10000 pictures) out of training AND validation; runs/loso* (before) validated on them -- not comparable, see
# scripts/loso_by_collection.py
ROOT=runs/loso2; [ "$HOLDOUT" = Train ] || ROOT=runs/loso2-$HOLDOUT
# SPLIT_SEED=42: every seed validates on the same sample of the held-out source (HAM10000 has more images than
# --holdout-max-images, so otherwise each seed draws its own and their ensemble shares few images)
if [ -n "${SPLIT_SEED:-}" ]; then COMMON+=(--split-seed "$SPLIT_SEED"); ROOT=$ROOT-split$SPLIT_SEED; fi
mkdir -p "$ROOT"
for SEED in "$@"; do
  OUT=$ROOT/$RECIPE-seed$SEED
  [ -f "$OUT/result.json" ] && continue
  if [ -f "$OUT/config.yaml" ]; then ARGS=(--resume "$OUT"); else ARGS=("${COMMON[@]}" "${EXTRA[@]}" --seed "$SEED" --out "$OUT"); fi
  ( time .venv/bin/melanoma train "${ARGS[@]}" ) > "$OUT.log" 2>&1 || { echo "$OUT failed, see $OUT.log" >&2; exit 1; }
done
