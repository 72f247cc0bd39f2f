"""Does a model's melanoma output depend on an image's geometry? (session 14)

The 9-class split's copies are the whole dermoscopic field squashed to 180x180 squares (its HAM10000 pictures
show it: HAM10000's own 200x150 copy of the same picture keeps the 4:3 field), while HAM10000's copies and a
clinic camera's images keep their aspect ratio. Every melanoma of the 9-class split comes from the older archive,
so "squashed" could be a cue like the level of detail was (session 10). A model's validation images are predicted
again per collection (`detail_robustness.collections`):

* stored     -- as stored;
* natural    -- square images stretched back to 4:3 (180x180 -> 240x180: the older archive's pictures are mostly
                4:3, HAM10000's all are), non-square ones as stored: what a clinic's unsquashed images look like;
* squashed   -- non-square images squashed to a square along their longer side (200x150 -> 150x150, the same
                detail), square ones as stored: every image the way the 9-class split's are;
* fieldD     -- black outside a centred circle of diameter D x the shorter side (session 25): the round field
                of a dermoscope, which many collections keep and both shipped sources hardly have (two or more
                dark corners on about 2% of the 9-class split's and 3% of HAM10000's images). field1.2 blackens
                the corners only, field1.0 is a field as wide as the shorter side (it touches the long sides),
                field0.85 a tighter one that also cuts into large lesions.

Printed per model, geometry and collection: melanoma AUC, the share alerted at the model's own threshold,
sensitivity / specificity there, the mean melanoma probability of the non-melanomas (as in
scripts/detail_robustness.py) and the share referred. A model that does not use geometry as a cue keeps its alert
share.

    .venv/bin/python scripts/aspect_robustness.py MODEL... [--geometries stored natural squashed field1.0]
    .venv/bin/python scripts/aspect_robustness.py --dark-corners DATA... [--sample 1500]   (no model: the share of
        a folder's images with two or more dark corners, i.e. a visible round field; session 25)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from compare_auc import label_conflicts_left_out  # scripts/ is on sys.path when run as a script
from detail_robustness import collections
from melanoma.images import is_image_file, load_image
from melanoma.labelmaps import is_melanoma_label  # the project's one list
from melanoma.predict import Predictor
from melanoma.site_check import share_matched_threshold


def reshape(image: Image.Image, geometry: str) -> Image.Image:
    """The image in `geometry` (see the module doc); the shorter side, and so the level of detail, is kept."""
    w, h = image.size
    if geometry == "natural" and w == h:
        return image.resize((round(w * 4 / 3), h), Image.BICUBIC)
    if geometry == "squashed" and w != h:
        side = min(w, h)
        return image.resize((side, side), Image.BICUBIC)
    if geometry.startswith("field"):
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[~field_mask(w, h, float(geometry.removeprefix("field")))] = 0
        return Image.fromarray(pixels)
    return image


def field_mask(width: int, height: int, diameter: float) -> np.ndarray:
    """Boolean (height, width): True inside the centred circle of diameter `diameter` x the shorter side."""
    yy, xx = np.mgrid[0:height, 0:width]
    radius = diameter * min(width, height) / 2
    # pixel centres: a 1.0 circle reaches the middle pixels of the long sides
    return (xx + 0.5 - width / 2) ** 2 + (yy + 0.5 - height / 2) ** 2 <= radius ** 2


def geometry_name(text: str) -> str:
    """argparse type: stored, natural, squashed or fieldD with D > 0."""
    if text in ("stored", "natural", "squashed"):
        return text
    try:
        if text.startswith("field") and float(text.removeprefix("field")) > 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"unknown geometry {text!r} (use stored, natural, squashed or fieldD, "
                                     "e.g. field1.0)")


def dark_corners(image: Image.Image, size: float = 0.12, level: float = 40.0) -> int:
    """How many of the 4 corner squares (side `size` x the shorter side, at least 4 px) have a mean grey level
    (0-255) below `level`: 2 or more is the black surround of a round dermoscope field."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    k = max(4, int(size * min(grey.shape)))
    return sum(float(c.mean()) < level for c in (grey[:k, :k], grey[:k, -k:], grey[-k:, :k], grey[-k:, -k:]))


def dark_corner_share(folder: Path, sample: int, seed: int = 0) -> tuple[int, float]:
    """(images looked at, share with >= 2 dark corners) for a random sample of the folder's images."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))[:sample]]
    return len(paths), float(np.mean([dark_corners(load_image(p)) >= 2 for p in paths])) if paths else float("nan")


def scores(predictor: Predictor, rows: list[dict], change, views: int | None = None, adapt: bool = False
           ) -> dict[str, float]:
    """Melanoma AUC, alert and referral figures of `rows` predicted after change(image) (a PIL image in and out), with
    `views` test-time views (None: the model's own). adapt: also the sensitivity and specificity of the threshold
    adapted to these images without their labels at their true melanoma prevalence (melanoma.site_check's
    share-matched threshold, as `melanoma site-threshold` chooses it)."""
    y = np.array([is_melanoma_label(r["label"]) for r in rows])  # 'melanoma', HAM10000's 'mel'
    tta = None if views is None else views > 1
    predictions = [pr for i in range(0, len(rows), 64) for pr in predictor.predict(
        [change(load_image(r["path"])) for r in rows[i:i + 64]], tta=tta, tta_views=views, batch_size=64)]
    p = np.array([pr.melanoma_probability for pr in predictions])
    alert = p >= predictor.alert_threshold
    return {"auc": roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan"), "alerted": float(alert.mean()),
            "sens": float(alert[y].mean()) if y.any() else float("nan"),
            "spec": float(1 - alert[~y].mean()), "p_other": float(p[~y].mean()), "n": len(y), "mel": int(y.sum()),
            "referred": float(np.mean([pr.refer for pr in predictions])),
            **(_adapted(p, y, predictor.meta) if adapt else {})}


def _adapted(p: np.ndarray, y: np.ndarray, meta: dict) -> dict[str, float]:
    threshold, _ = share_matched_threshold(p, meta, float(y.mean()))
    flagged = p >= threshold
    return {"adapted_sens": float(flagged[y].mean()), "adapted_spec": float(1 - flagged[~y].mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--geometries", nargs="+", default=["stored", "natural", "squashed"], type=geometry_name)
    ap.add_argument("--dark-corners", nargs="+", type=Path, default=[], metavar="DATA")
    ap.add_argument("--sample", type=int, default=1500, help="images per --dark-corners folder (random, seed 0)")
    args = ap.parse_args(argv)
    if not args.models and not args.dark_corners:
        ap.error("give MODEL folders, or --dark-corners DATA folders")
    for folder in args.dark_corners:
        n, share = dark_corner_share(folder, args.sample)
        print(f"{str(folder):50s} {n:6d} images: {share:.1%} with two or more dark corners", flush=True)
    if not args.models:
        return 0
    print_score_table(args.models, "geometry", args.geometries, lambda g: lambda image: reshape(image, g))
    return 0


def print_score_table(models: list[Path], kind: str, variants: list[str], change_of, views: int | None = None,
                      predictions: str = "val_predictions.csv", adapt: bool = False) -> None:
    """One line per model, variant and collection of the images in MODEL/`predictions` (default: the model's
    validation images; a collection with no image there is left out; so are the label conflicts a `melanoma
    evaluate` folder's metrics.json did not score): `scores` after change_of(variant) (a function of a PIL image)
    with `views` test-time views (None: the model's own); adapt: also the sensitivity / specificity of the threshold
    adapted to each collection's images at its true prevalence, without their labels (scores)."""
    print(f"{'model':32s} {kind:13s} {'collection':14s} {'n':>5s} {'mel':>4s} {'AUC':>6s} {'alerted':>8s} "
          f"{'sens':>5s} {'spec':>5s} {'p(mel) others':>14s} {'referred':>9s}"
          + (f" {'adapted sens':>12s} {'spec':>5s}" if adapt else ""))
    for model in models:
        predictor = Predictor.load(model)
        conflicts = label_conflicts_left_out((model / predictions).parent)
        groups = {name: kept for name, rows in collections(model / predictions).items()
                  if (kept := [r for r in rows if r["path"] not in conflicts])}
        for variant in variants:
            for name, rows in groups.items():
                s = scores(predictor, rows, change_of(variant), views, adapt)
                print(f"{str(model):32s} {variant:13s} {name:14s} {s['n']:5d} {s['mel']:4d} {s['auc']:6.3f} "
                      f"{s['alerted']:8.0%} {s['sens']:5.2f} {s['spec']:5.2f} {s['p_other']:14.3f} "
                      f"{s['referred']:9.1%}"
                      + (f" {s['adapted_sens']:12.2f} {s['adapted_spec']:5.2f}" if adapt else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())
