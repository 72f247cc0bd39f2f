#!/usr/bin/env bash
# Backbone check at the shipped members' budget (session 24, issue 14's "stronger pretrained backbone"): the
# leave-one-source-out proxy of scripts/loso_insource.sh (HAM10000 alone, natural class mix, 10 x 3,200 draws,
# checkpoint chosen on HAM10000's own 20%, then scored on the older archive's images) for two arms:
#   lite2: efficientnet_lite2 at 224 px        lite0: efficientnet_lite0 at 160 px (the shipped members' backbone)
#   scripts/backbone_loso.sh SEED...     e.g. scripts/backbone_loso.sh 1 2 3 4
# Environment: HARDWARE (extra train options; on a GPU "--accelerator gpu --devices 1 --num-workers 14"), HAM, DATA
# (the held-out images: the 9-class split or its older-archive part), ARMS (default "lite2 lite0"), SUMMARY (a folder
# that receives summary.txt and runs-ARM.tar.gz, weights left out, after every run), PARALLEL. Resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
ARMS=${ARMS:-lite2 lite0}
ROOTS=${ROOTS:-runs}  # the arms write ROOTS/loso-insource-ARM/
SUMMARY=${SUMMARY:-runs/backbone-loso}
mkdir -p "$SUMMARY"
arm_settings() {  # ARM -> "MODEL IMAGE_SIZE"
  case $1 in
    lite2) echo "efficientnet_lite2 224" ;;
    lite1) echo "efficientnet_lite1 192" ;;
    lite0) echo "efficientnet_lite0 160" ;;
    *) echo "unknown arm $1 (lite0, lite1, lite2)" >&2; exit 2 ;;
  esac
}
run_seeds() {  # ARM MODEL SIZE SEED...: loso_insource.sh for those seeds (with 2+ it scores only their ensemble
  # anew: finished seeds are skipped), then a line per run in the summary and the arm's weight-free tarball
  local arm=$1 model=$2 size=$3 start
  shift 3
  start=$(date +%s)
  HELDOUT_CSV=none DETAIL_SIZE=150 IMBALANCE=none MODEL=$model IMAGE_SIZE=$size ROOT=$ROOTS/loso-insource-$arm \
    scripts/loso_insource.sh "$@" | sed "s/^/$arm: /" >> "$SUMMARY/summary.txt"
  echo "$arm seeds $*: $(( $(date +%s) - start )) s" >> "$SUMMARY/summary.txt"
  tar -czf "$SUMMARY/runs-$arm.tmp.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.onnx' \
    "$ROOTS/loso-insource-$arm" && mv "$SUMMARY/runs-$arm.tmp.tgz" "$SUMMARY/runs-$arm.tar.gz"
}
stream() {  # ARM SEED...: seed by seed (a cut-short run keeps what finished), then the seeds' ensemble
  local arm=$1 model size seed
  shift
  read -r model size <<< "$(arm_settings "$arm")"
  for seed in "$@"; do run_seeds "$arm" "$model" "$size" "$seed"; done
  if [ $# -ge 2 ]; then run_seeds "$arm" "$model" "$size" "$@"; fi
}
# an unknown arm stops here, before any run (inside stream's $(...) its exit would only end the subshell)
for ARM in $ARMS; do arm_settings "$ARM" > /dev/null; done
# PARALLEL=1: the arms run side by side (a GPU is mostly idle between one run's small batches; split the CPU
# workers between them through HARDWARE's --num-workers)
for ARM in $ARMS; do
  if [ "${PARALLEL:-0}" = 1 ]; then stream "$ARM" "$@" & else stream "$ARM" "$@"; fi
done
wait
cat "$SUMMARY/summary.txt"
