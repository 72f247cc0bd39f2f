# The shipped default's training recipe (issue 14) as a bash array, sourced by scripts/train_default.sh (the
# shipped budget) and scripts/resolution_check.sh (a short budget): 9-class Train + HAM10000, one group-aware 20%
# share of EVERY source validates (--val-sources all --split-seed 42), checkpoints chosen on melanoma AUC there.
# In (all optional): DATA HAM SIZE EPOCHS DRAWS AUGMENTATION DETAIL_SIZE IMBALANCE COLOR_CONSTANCY.
# Out: RECIPE (without --seed / --out). Since session 51 half the training draws get a violet skin-marker ring
# (AUGMENTATION=ink, transforms.RandomInk): the shipped alert no longer moves when a lesion is marked.
DATA=${DATA:-../shared/data/isic-9class/Train}
HAM=${HAM:-../shared/data/ham10000}
RECIPE=(--data "$DATA" --extra-data "$HAM" --lesion-metadata "$HAM/HAM10000_metadata.csv" --conflict-policy reference
        --color-constancy "${COLOR_CONSTANCY:-shades_of_gray_standardised}" --model efficientnet_lite0
        --image-size "${SIZE:-160}"
        --epochs "${EPOCHS:-10}" --samples-per-epoch "${DRAWS:-3200}" --val-fraction 0.2 --val-sources all
        --monitor mel_auc --split-seed 42 --batch-size 32 --augmentation "${AUGMENTATION:-ink}"
        --config scripts/cpu_long.yaml)
# COLOR_CONSTANCY (default shades_of_gray_standardised, the shipped members' since session 41): Shades of Gray,
# then each image's brightness and contrast brought to fixed levels (session 40: +0.038 +- 0.017 on the proxy, 6
# seeds); shades_of_gray alone was the default of sessions 27-40.
# DETAIL_SIZE (default 150, the shipped default since session 11): every image first reduced to that shorter side
# (HAM10000's own detail); DETAIL_SIZE= (empty) trains on the images as stored, the recipe of sessions 6-10.
DETAIL_SIZE=${DETAIL_SIZE-150}
if [ -n "$DETAIL_SIZE" ]; then RECIPE+=(--detail-size "$DETAIL_SIZE"); fi
# IMBALANCE (default source-balanced since session 23): the training sources' natural class mix, every source drawn
# equally often within a class, so the network learns a clinic-like prior itself and no prior correction is needed;
# sampler (every class and source equally often, the shipped members of sessions 6-22, prior-corrected since
# session 19); none (the plain natural mix: HAM10000's nevi drown the older archive's, whose look becomes a melanoma
# cue: 0.775 +- 0.010 melanoma AUC on its own images against 0.864 +- 0.027 source-balanced, session 22).
IMBALANCE=${IMBALANCE:-source-balanced}
RECIPE+=(--imbalance "$IMBALANCE")
