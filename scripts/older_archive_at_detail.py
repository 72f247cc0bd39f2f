"""The older archive's own validation images of a model written to disk with less detail, scored end to end
(session 24's check of the shipped default, a script since session 38).

The images: the rows of MODEL/val_predictions.csv from the 9-class split whose ISIC id is not a HAM10000 picture
(`compare_defaults.groups`). Each is written at every --sides shorter side (bicubic, PNG, in its 9-class folder, as
scripts/detail_transfer_check.sh writes them) under OUT/SIDE, then scored with `melanoma evaluate --no-overlap-check
--bootstrap 0` (they are the model's validation images, but its fingerprint knows their names) at the model's own
test-time views, detail calibration and alert. Prints AUC and sensitivity / specificity at the alert per side. These
are the images the detail calibration was fitted on: an in-sample check of the calibrated alert, not an estimate for
a new clinic. Resumes: a side whose metrics.json exists is read, not scored again.

    .venv/bin/python scripts/older_archive_at_detail.py MODEL OUT [--sides 120 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_defaults import groups  # noqa: E402

from melanoma.evaluate import evaluate  # noqa: E402


def write_at_side(paths: list[str], side: int, out: Path) -> None:
    """Each image reduced to `side` px on its shorter side, as PNG in its class folder; written whole or not at all."""
    tmp = out.with_name(out.name + ".tmp")
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = side / min(im.size)
            small = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        folder = tmp / Path(path).parent.name
        folder.mkdir(parents=True, exist_ok=True)
        small.save(folder / (Path(path).stem + ".png"))
    tmp.rename(out)


def score(model: Path, images: Path) -> dict:
    """metrics.json of `melanoma evaluate` on `images`, written beside them."""
    done = images.with_name(images.name + "-eval") / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return evaluate(model, images, out=done.parent, bootstrap=0, exclude_overlap_with=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sides", nargs="+", type=int, default=[120, 100])
    args = ap.parse_args()
    paths = sorted(groups(args.model / "val_predictions.csv")["older archive's own"])
    print(f"{args.model}: {len(paths)} older-archive validation images")
    print("| shorter side | AUC | sensitivity / specificity at the alert |\n|---|---|---|")
    for side in args.sides:
        images = args.out / str(side)
        if not images.is_dir():
            write_at_side(paths, side, images)
        mel = score(args.model, images)["melanoma"]
        value = {k: (v["value"] if isinstance(v, dict) else v) for k, v in mel.items() if k in
                 ("auc", "sensitivity", "specificity")}
        print(f"| {side} px | {value['auc']:.3f} | {value['sensitivity']:.2f} / {value['specificity']:.2f} |")


if __name__ == "__main__":
    main()
