#!/usr/bin/env bash
# The README's CV numbers: 5-fold group-aware CV on the shared 9-class Train split, sized for a 2-core CPU.
# Re-running resumes: finished folds are reused, an interrupted fold continues from its last finished epoch.
# HAM10000 lesion ids keep every photo of a lesion on one side. On a GPU, raise --epochs and --image-size.
#   scripts/cv_isic9.sh            all rows (about 3 hours on 2 quiet cores, plus 3.5 h for "shipped")
#   scripts/cv_isic9.sh lite0-ham  one row: lite0-4ep | lite0-8ep | lite0-ham | seedcnn | shipped
cd "$(dirname "$0")/.."
DATA=../shared/data/isic-9class/Train
HAM=../shared/data/ham10000
COMMON=(--data $DATA --folds 5 --seed 42 --batch-size 32 --lesion-metadata $HAM/HAM10000_metadata.csv)
run() {  # run NAME ARGS...: start runs/cv-NAME, or resume it when it already has a config; log in runs/cv-NAME.log
  local out=runs/cv-$1; shift
  if [ -f "$out/config.yaml" ]; then set -- --resume "$out"; else set -- "${COMMON[@]}" --out "$out" "$@"; fi
  ( time .venv/bin/melanoma train "$@" ) > "$out.log" 2>&1
}
want() { [ ${#ARGS[@]} -eq 0 ] || [[ " ${ARGS[*]} " == *" $1 "* ]]; }
ARGS=("$@")
mkdir -p runs
# 9-class Train only (session 1, 41 min): 4 epochs at 160 px, short warm-up
# (rows without colour constancy say so: it is the train default since session 27, these were measured without)
want lite0-4ep && run lite0 --model efficientnet_lite0 --image-size 160 --epochs 4 --config scripts/cpu_budget.yaml \
  --color-constancy none
# 9-class Train only, 8 epochs (about 55 min)
want lite0-8ep && run lite0-8ep --model efficientnet_lite0 --image-size 160 --epochs 8 --config scripts/cpu_long.yaml \
  --color-constancy none
# + HAM10000 as extra training data (never validated on; its copies of Train images and lesions left out);
# HAM's akiec labels settle the actinic keratosis / nevus duplicates; Shades-of-Gray colour constancy on every
# path; same compute as lite0-8ep (about 60 min)
want lite0-ham && run lite0-ham --model efficientnet_lite0 --image-size 160 --epochs 8 --samples-per-epoch 1600 \
  --extra-data $HAM --conflict-policy reference --color-constancy shades_of_gray --config scripts/cpu_long.yaml
# the notebooks' seed CNN, from scratch (15 min)
want seedcnn && run seedcnn --model seed-cnn --epochs 3 --config scripts/cpu_budget.yaml --color-constancy none
# the shipped model's recipe (scripts/train_default.sh: lite0-ham at 10 x 3,200 draws) as a CV row: its OOF alert
# threshold and CV figures. About 3.5 h on 2 CPU cores, so not run on CPU yet; on a GPU (16 loader cores) minutes.
want shipped && run shipped --model efficientnet_lite0 --image-size 160 --epochs 10 --samples-per-epoch 3200 \
  --extra-data $HAM --conflict-policy reference --color-constancy shades_of_gray --config scripts/cpu_long.yaml
