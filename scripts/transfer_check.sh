#!/usr/bin/env bash
# Cross-source check (the closest thing to "another clinic" on this machine): train on HAM10000 alone, then score
# the 9-class split's old-archive melanomas and nevi (not HAM10000 images; scripts/old_archive_subset.py), a
# source the model never saw, melanoma vs rest (--label-map binary). Used to choose the recipe of the shipped
# model by what transfers to a new source, not by the 9-class CV. Each row about 16 min on 2 cores.
#   scripts/transfer_check.sh            all rows
#   scripts/transfer_check.sh nocc       one row: cc | nocc | long | strong | longer | seed43
cd "$(dirname "$0")/.."
HAM=../shared/data/ham10000
TARGET=runs/old-archive-subset
COMMON=(--data $HAM --lesion-metadata $HAM/HAM10000_metadata.csv --model efficientnet_lite0 --image-size 160
        --epochs 8 --samples-per-epoch 1600 --seed 42 --config scripts/cpu_long.yaml)
row() {  # row OUT ARGS...: train runs/OUT on HAM10000 (or resume it), then evaluate it on the old-archive subset
  local out=runs/$1; shift
  if [ ! -f "$out/model.json" ]; then
    if [ -f "$out/config.yaml" ]; then set -- --resume "$out"; else set -- "${COMMON[@]}" --out "$out" "$@"; fi
    ( time .venv/bin/melanoma train "$@" ) > "$out.log" 2>&1 || return 1
  fi
  .venv/bin/melanoma evaluate --model "$out" --data $TARGET --label-map binary --out "$out/eval-old-archive" \
    > "$out/eval-old-archive.log" 2>&1
}
want() { [ ${#ARGS[@]} -eq 0 ] || [[ " ${ARGS[*]} " == *" $1 "* ]]; }
ARGS=("$@")
[ -d $TARGET ] || .venv/bin/python scripts/old_archive_subset.py $TARGET
# Shades-of-Gray colour constancy (the shipped model's preprocessing)
want cc && row ham-only-lite0 --color-constancy shades_of_gray
# the same without colour constancy
want nocc && row ham-only-lite0-nocc --color-constancy none
# colour constancy, 2.5x the training draws (the shipped model's budget: 10 epochs x 3,200), about 35 min
want long && row ham-only-lite0-long --color-constancy shades_of_gray --epochs 10 --samples-per-epoch 3200
# colour constancy + strong augmentation (wider colour jitter, blur, JPEG re-compression), paired with "cc"
want strong && row ham-only-lite0-strong --color-constancy shades_of_gray --augmentation strong
# colour constancy, 5x the draws of "cc" (20 epochs x 3,200), about 70 min: do more draws keep helping on a new source?
want longer && row ham-only-lite0-longer --color-constancy shades_of_gray --epochs 20 --samples-per-epoch 3200
# "cc" again with another seed (and so another hold-out split): how far two trainings of one recipe differ on the
# new source; the paired CIs above cover the images, not this
want seed43 && row ham-only-lite0-seed43 --color-constancy shades_of_gray --seed 43
