"""Does a model's alert move with how a clinic's camera renders and stores an image? (session 43)

The preprocessing removes the light's colour, the exposure and the contrast (Shades of Gray, standardised) and the
level of detail (`detail_size`); other differences between cameras and clinics pass through it. A model's
validation images (RUN/val_predictions.csv, per collection as scripts/detail_robustness.py splits them) are
predicted again after one change of the stored image, at its stored size:

* stored       -- as stored;
* jpegQ        -- re-saved as JPEG at quality Q (PIL, 4:2:0 chroma): a clinic system's compression;
* blurS        -- Gaussian blur of S px (the standard deviation, at the stored size): focus, motion, optics;
* sharpenP     -- an unsharp mask of P% (radius 2 px, threshold 0): the sharpening many cameras apply;
* noiseS       -- Gaussian noise of S grey levels (0-255) on every channel, seeded per image: sensor noise;
* gammaG       -- every channel raised to the power G (0-1 scale): another tone curve, which an affine
                  exposure standardisation cannot undo;
* saturationF  -- every pixel's distance from its grey level times F: a more (F > 1) or less colourful rendering;
* inkN         -- N dashes of violet skin-marker ink on a ring around the image centre (radius INK_RING x the
                  shorter side, inside the eval view's crop; random phase, seeded per image): a surgical marking
                  round a lesion, which raised a dermoscopy network's melanoma scores in Winkler et al. 2019
                  (JAMA Dermatol 155:1135) (session 49);
* inkdotsN     -- N dots of the same ink on the same ring (4% of the shorter side across): a marking the
                  training augmentations `--augmentation ink` (rings, dashed or whole) and `marks` (rings and
                  arrows) do not draw;
* inkblackN    -- inkN's dashes in black marker ink (INK_BLACK): a colour neither augmentation draws (their ink
                  is always violet), the second held-out marking (session 52).

--predictions PATH scores the images of MODEL/PATH instead, e.g. heldout-eval/predictions.csv: a leave-one-
source-out run's never-seen source (as `melanoma evaluate` wrote it there; labels in its `label` column).

Printed per model, change and collection: melanoma AUC, the share alerted at the model's own threshold,
sensitivity and specificity there, the non-melanomas' mean melanoma probability, the share referred. The same
images under every change, so the rows pair.

--adapt adds the sensitivity and specificity of the threshold adapted to each collection's changed images at its
true melanoma prevalence without their labels (melanoma.site_check's share-matched threshold, `melanoma
site-threshold`): does a site that adapts its threshold get the validation operating point back? (session 46)

    .venv/bin/python scripts/acquisition_robustness.py MODEL... [--changes stored jpeg50 blur1 ...] [--views 1]
        [--predictions heldout-eval/predictions.csv] [--adapt]
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from aspect_robustness import print_score_table  # scripts/ is on sys.path when run as a script

DEFAULT_CHANGES = ["stored", "jpeg50", "jpeg25", "blur0.7", "blur1.5", "sharpen100", "noise6", "gamma0.8",
                   "gamma1.25", "saturation0.7", "saturation1.3"]
INK_COLOUR = (90, 45, 140)   # gentian violet, the usual skin-marker ink, as it looks on skin (RGB)
INK_BLACK = (40, 38, 42)     # a black permanent marker on skin (RGB): RandomInk's violets span R 60-100, B 120-170
_INK_KINDS = {"ink": (False, INK_COLOUR), "inkdots": (True, INK_COLOUR), "inkblack": (False, INK_BLACK)}  # dots?, ink
_KINDS = ("jpeg", "blur", "sharpen", "noise", "gamma", "saturation", *_INK_KINDS)
INK_RING, INK_WIDTH, INK_DOT = 0.42, 0.025, 0.04  # ring radius, stroke width, dot diameter: shares of the shorter side
_CHANGE = re.compile(r"([a-z]+)(\d+(?:\.\d+)?)")  # KIND then its amount, e.g. jpeg50, blur0.7


def change_name(text: str) -> str:
    """argparse type: stored or KIND followed by a positive number (KIND one of _KINDS)."""
    match = _CHANGE.fullmatch(text)
    if text == "stored" or (match and match.group(1) in _KINDS and float(match.group(2)) > 0):
        return text
    raise argparse.ArgumentTypeError(f"unknown change {text!r} (use stored or one of {', '.join(_KINDS)} followed "
                                     "by a positive number, e.g. jpeg50)")


def apply_change(image: Image.Image, change: str) -> Image.Image:
    """The image after `change` (see the module doc), same size, RGB."""
    image = image.convert("RGB")
    if change == "stored":
        return image
    kind, value = _CHANGE.fullmatch(change).groups()
    amount = float(value)
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(amount))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=amount))  # PIL's radius is the standard deviation
    if kind == "sharpen":
        return image.filter(ImageFilter.UnsharpMask(radius=2, percent=int(amount), threshold=0))
    if kind in _INK_KINDS:
        dots, colour = _INK_KINDS[kind]
        return draw_ink(image, int(amount), dots=dots, colour=colour)
    x = np.asarray(image, dtype=np.float32) / 255.0
    if kind == "noise":
        rng = image_rng(image)
        x = x + rng.normal(0.0, amount / 255.0, x.shape)
    elif kind == "gamma":
        x = x ** amount
    else:  # saturation
        grey = x.mean(axis=2, keepdims=True)
        x = grey + (x - grey) * amount
    return Image.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8))


def image_rng(image: Image.Image) -> np.random.Generator:
    """A generator seeded by the image's pixels: every run and model sees the same random change on an image."""
    return np.random.default_rng(zlib.crc32(np.asarray(image).tobytes()))


def draw_ink(image: Image.Image, dashes: int, dots: bool = False, colour=INK_COLOUR) -> Image.Image:
    """`dashes` arcs of marker ink (or dots), each half of its share of a circle round the image centre, at a phase
    seeded by the image's pixels (every model sees the same marks on an image); ink (`colour`, RGB) covers 85% (skin
    shows through)."""
    rng = image_rng(image)
    w, h = image.size
    radius, width = INK_RING * min(w, h), max(2, round(INK_WIDTH * min(w, h)))
    box = (w / 2 - radius, h / 2 - radius, w / 2 + radius, h / 2 + radius)
    mask = Image.new("L", image.size, 0)
    pen = ImageDraw.Draw(mask)
    step, phase = 360.0 / dashes, float(rng.uniform(0.0, 360.0))
    dot = INK_DOT * min(w, h) / 2
    for k in range(dashes):
        start = phase + k * step
        if dots:
            x, y = w / 2 + radius * np.cos(np.radians(start)), h / 2 + radius * np.sin(np.radians(start))
            pen.ellipse((x - dot, y - dot, x + dot, y + dot), fill=round(0.85 * 255))
        else:
            pen.arc(box, start, start + step / 2, fill=round(0.85 * 255), width=width)
    return Image.composite(Image.new("RGB", image.size, colour), image, mask)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--changes", nargs="+", default=DEFAULT_CHANGES, type=change_name)
    ap.add_argument("--views", type=int, help="test-time views (default: the model's own; its alert threshold "
                                              "was chosen on those)")
    ap.add_argument("--predictions", default="val_predictions.csv", metavar="PATH",
                    help="the images to score, as a predictions CSV under each MODEL (default: its validation "
                         "images; heldout-eval/predictions.csv: a leave-one-source-out run's never-seen source)")
    ap.add_argument("--adapt", action="store_true",
                    help="also the sensitivity / specificity of the threshold adapted to each collection's changed "
                         "images at its true melanoma prevalence, without their labels (`melanoma site-threshold`)")
    args = ap.parse_args(argv)
    print_score_table(args.models, "change", args.changes, lambda c: lambda image: apply_change(image, c), args.views,
                      args.predictions, args.adapt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
