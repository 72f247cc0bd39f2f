"""Would estimating the illuminant on the skin alone change Shades of Gray's colour correction? (Session 35: a
candidate lever, measured before training it.) For each image: the shipped members' view before colour constancy
(`images.prepare_image` without it: 150 px detail, shorter side 183), the Shades-of-Gray illuminant (Minkowski p = 6
mean per channel, `images.ILLUMINANT_POWER`) of the whole view and of its skin alone (lighter than Otsu's threshold,
no saturated channel), and the angle between the two in degrees; for scale, the angle between the whole view's
illuminant and neutral grey (the cast Shades of Gray removes). Prints the median, 90th percentile and maximum per
dataset. Unreadable files are reported and skipped.

    python scripts/illuminant_skin.py DATASET...   (anything `melanoma` reads: class folders, a manifest CSV, HAM10000)
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from lesion_share import PRE, otsu_threshold  # scripts/ is on sys.path when this file runs as a script
from melanoma.data import discover
from melanoma.errors import DataError
from melanoma.images import ILLUMINANT_POWER, illuminant, load_image, prepare_image

POWER = ILLUMINANT_POWER["shades_of_gray"]
SATURATED = 250  # a channel at or above this (of 255) is specular glare, not skin


def degrees(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(min(1.0, float(a @ b)))))


def skin_angle(path) -> tuple[float, float] | None:
    """(degrees between the whole view's illuminant and its skin's, degrees between the whole view's and grey);
    None when under 5% of the view is skin."""
    view = np.asarray(prepare_image(load_image(path), {**PRE, "color_constancy": "none"}))
    grey = np.asarray(Image.fromarray(view).convert("L"))
    skin = (grey > otsu_threshold(grey)) & (view.max(axis=2) < SATURATED)
    if skin.mean() < 0.05:
        return None
    pixels = view.astype(np.float64) / 255.0
    whole = illuminant(pixels, POWER)
    return degrees(whole, illuminant(pixels[skin], POWER)), degrees(whole, np.full(3, 3 ** -0.5))


def describe(dataset: str) -> None:
    angles, casts, skipped = [], [], 0
    for sample in discover(dataset).samples:
        try:
            angle = skin_angle(sample.path)
        except DataError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        if angle is None:
            skipped += 1
        else:
            angles.append(angle[0])
            casts.append(angle[1])
    if not angles:
        print(f"{dataset}: no image with skin to compare")
        return
    print(f"{dataset}: {len(angles)} images ({skipped} with under 5% skin left out); degrees between the whole "
          f"view's and the skin's illuminant {summary(angles)}; between the whole view's and grey {summary(casts)}")


def summary(values: list[float]) -> str:
    return f"median {np.median(values):.2f}, 90th percentile {np.percentile(values, 90):.2f}, max {max(values):.2f}"


if __name__ == "__main__":
    for name in sys.argv[1:]:
        describe(name)
