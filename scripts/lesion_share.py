"""How much of the view a lesion fills, per class and source: is a lesion's size a cue for melanoma that holds in
every source? (Session 30: widening the training crops' scale range cost the never-seen source 0.10 AUC.)

For each image: the shipped members' eval view (`images.prepare_image` + `images.center_crop`: 150 px detail, shorter
side resized to 183, Shades of Gray, the 160 px centre, the part the network sees), grey levels, Otsu's threshold;
the lesion share is the share of the view darker than it (dark vignette corners inside the view count too: a proxy,
not a segmentation). Prints, per dataset, the median share per
class and the melanoma AUC of the share alone (bigger = more melanoma-like), against all lesions and against nevi.
Unreadable files are reported and skipped.

    python scripts/lesion_share.py DATASET...   (anything `melanoma` reads: class folders, a manifest CSV, HAM10000)
"""

from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from melanoma.data import discover
from melanoma.errors import DataError
from melanoma.images import center_crop, load_image, prepare_image
from melanoma.models import default_preprocessing

MELANOMA_LABELS = {"melanoma", "mel"}  # the 9-class folder name and HAM10000's dx
NEVUS_LABELS = {"nevus", "nv"}
# the shipped members' preprocessing (scripts/default_recipe.sh): what the network sees of an image
PRE = default_preprocessing("efficientnet_lite0", image_size=160, color_constancy="shades_of_gray", detail_size=150)


def otsu_threshold(grey: np.ndarray) -> float:
    """The grey level (0-255) that maximises the between-class variance of the histogram (Otsu 1979)."""
    counts = np.bincount(grey.ravel(), minlength=256).astype(float)
    levels = np.arange(256)
    weight_dark = np.cumsum(counts)
    weight_light = weight_dark[-1] - weight_dark
    mass_dark = np.cumsum(counts * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_dark = mass_dark / weight_dark
        mean_light = (mass_dark[-1] - mass_dark) / weight_light
        between = weight_dark * weight_light * (mean_dark - mean_light) ** 2
    return float(np.nanargmax(between))


def lesion_share(path, pre: dict = PRE) -> float:
    view = center_crop(np.asarray(prepare_image(load_image(path), pre)), pre["input_size"])
    grey = np.asarray(Image.fromarray(view).convert("L"))
    return float((grey <= otsu_threshold(grey)).mean())


def describe(dataset: str) -> None:
    table = discover(dataset)
    shares = defaultdict(list)
    for sample in table.samples:
        try:
            shares[sample.label].append(lesion_share(sample.path))
        except DataError as exc:
            print(f"skipped: {exc}", file=sys.stderr)

    def melanoma_auc(others) -> float:
        melanoma = [share for name in MELANOMA_LABELS for share in shares.get(name, [])]
        rest = [share for name in others for share in shares[name]]
        return roc_auc_score([1] * len(melanoma) + [0] * len(rest), melanoma + rest)

    print(f"{dataset}: {sum(map(len, shares.values()))} images; melanoma AUC of the lesion share alone "
          f"{melanoma_auc(set(shares) - MELANOMA_LABELS):.3f} "
          f"(against nevi only: {melanoma_auc(set(shares) & NEVUS_LABELS):.3f})")
    for label in sorted(shares, key=lambda name: -np.median(shares[name])):
        print(f"  {label:28s} n {len(shares[label]):5d}  median share {np.median(shares[label]):.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    for path in sys.argv[1:]:
        describe(path)
