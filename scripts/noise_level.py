"""How much pixel noise do a dataset's images carry, per class? (session 45)

Immerkaer's (1996) estimate of the standard deviation of additive Gaussian noise, in grey levels (0-255), of each
image's grey version (images.noise_sigma). Smooth skin dominates a dermoscopy image, so the estimate is mostly the
camera's and the storage's noise; sharp lesion texture adds a little.

Why it matters: a property that differs between training sources and not between classes becomes a source cue in
joint training. The 9-class split's stored images carry 3.7x HAM10000's noise (HAM10000 is stored at JPEG
quality ~75, which smooths it), and the shipped model trained on both lost melanoma AUC on HAM10000's images when
noise of 2 grey levels, the 9-class split's own level, was added (docs/results.md, session 45).

--model MODEL measures the images as that model's preprocessing prepares them (level of detail, resize, colour
constancy and exposure standardisation; transforms.prepare_image) instead of as stored.

    .venv/bin/python scripts/noise_level.py DATA... [--sample 500] [--model models/default]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from melanoma.artifacts import read_meta
from melanoma.data import discover
from melanoma.errors import MelanomaError
from melanoma.images import load_image, noise_sigma, prepare_image


def sigmas_by_label(folder: Path, sample: int, pre: dict | None, seed: int = 0) -> dict[str, list[float]]:
    """Noise sigma of up to `sample` random images of `folder` (data.discover), grouped by label; with `pre`
    measured after prepare_image(image, pre). An image that cannot be read is reported on stderr and skipped."""
    samples = list(discover(folder).samples)
    random.Random(seed).shuffle(samples)
    out: dict[str, list[float]] = {}
    for s in samples[:sample]:
        try:
            image = load_image(s.path)
            out.setdefault(s.label or "(unlabelled)", []).append(noise_sigma(prepare_image(image, pre) if pre
                                                                             else image))
        except (MelanomaError, ValueError) as exc:
            print(f"{s.path}: skipped ({str(exc).splitlines()[0]})", file=sys.stderr)
    return out


def summary(values: list[float]) -> str:
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return f"{len(values):6d} {p50:7.2f} {p25:6.2f} {p75:6.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="+", type=Path, help="dataset folders (anything `melanoma audit` reads)")
    ap.add_argument("--sample", type=int, default=500, help="random images per folder (seed 0; default 500)")
    ap.add_argument("--model", type=Path, help="measure as this model prepares the images (default: as stored)")
    args = ap.parse_args(argv)
    try:
        pre = read_meta(args.model)["preprocessing"] if args.model else None
        groups = {folder: sigmas_by_label(folder, args.sample, pre) for folder in args.data}
    except MelanomaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"noise sigma in grey levels (0-255), {'as ' + str(args.model) + ' prepares them' if pre else 'as stored'}")
    print(f"{'data':40s} {'label':28s} {'n':>6s} {'median':>7s} {'p25':>6s} {'p75':>6s}")
    for folder, by_label in groups.items():
        for label in sorted(by_label):
            print(f"{str(folder):40s} {label:28s} {summary(by_label[label])}")
        print(f"{str(folder):40s} {'(all)':28s} {summary([v for vs in by_label.values() for v in vs])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
