"""Does a model's melanoma output depend on how much detail an image carries? (session 10)

For each run, its validation images (RUN/val_predictions.csv) are predicted again with every image first reduced
to a smaller shorter side (model.json preprocessing `detail_size`: what a lower-resolution camera or copy gives),
per collection: the older ISIC archive's own images of the 9-class split (not HAM10000 pictures) and HAM10000.
Printed per run and level: melanoma AUC, the share of images alerted at the model's own threshold, sensitivity
and specificity there, the mean melanoma probability of the non-melanomas, and the specificity a threshold
refitted for 90% sensitivity on these same images would give (`spec@90 refit`: what a detail-aware threshold
could reach at best; in-sample, so optimistic); then mean +- sd over the runs. A model that does not use detail
as a cue keeps its alert share as the detail drops.

    .venv/bin/python scripts/detail_robustness.py RUN... [--levels 0 150 120 100]   (0 = as stored)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from loso_by_collection import ham_ids, isic_id  # scripts/ is on sys.path when run as a script
from seed_stats import mean_sd
from melanoma.labelmaps import is_melanoma_label  # the project's one list
from melanoma.metrics import choose_alert_threshold
from melanoma.predict import Predictor


def collections(val_csv: Path) -> dict[str, list[dict]]:
    """Validation rows by collection; the 9-class split's HAM10000 pictures belong to neither and are left out. A
    path is judged by where it resolves to (a held-out folder of symlinks, as scripts/loso_insource.sh builds)."""
    ham = ham_ids()
    rows = list(csv.DictReader(val_csv.open(newline="")))
    in_nine = ["isic-9class" in os.path.realpath(r["path"]) for r in rows]
    return {"older archive": [r for r, nine in zip(rows, in_nine)  # 'ISIC_x(1).jpg' copies too
                              if nine and isic_id(r["image"]) not in ham],
            "HAM10000": [r for r, nine in zip(rows, in_nine) if not nine]}


def scores(predictor: Predictor, rows: list[dict]) -> dict[str, float]:
    y = np.array([is_melanoma_label(r["label"]) for r in rows])  # 'melanoma', HAM10000's 'mel'
    p = predictor.predict_paths([r["path"] for r in rows]).melanoma_probability
    alert = p >= predictor.alert_threshold
    refit = p >= choose_alert_threshold(y, p, 0.9)
    return {"auc": roc_auc_score(y, p), "alerted": float(np.mean(alert)), "sens": float(alert[y].mean()),
            "spec": float(1 - alert[~y].mean()), "p_other": float(p[~y].mean()),
            "spec90": float(1 - refit[~y].mean())}


KEYS = ("auc", "alerted", "sens", "spec", "p_other", "spec90")


def largest_shorter_side(rows: list[dict]) -> int:
    """Largest shorter side (px) among the rows' images: a detail size at or above it changes none of them."""
    def shorter(path: str) -> int:
        with Image.open(path) as im:  # reads the header only
            return min(im.size)
    return max(shorter(r["path"]) for r in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--levels", nargs="+", type=int, default=[0, 150, 120, 100])
    args = ap.parse_args(argv)
    table = defaultdict(list)  # (collection, level) -> per-run score dicts
    print(f"{'run':40s} {'level':>6s} {'collection':14s} {'AUC':>6s} {'alerted':>8s} {'sens':>5s} {'spec':>5s} "
          f"{'p(mel) others':>14s} {'spec@90 refit':>13s}")
    for run in args.runs:
        predictor = Predictor.load(run)
        stored = predictor.pre.get("detail_size")
        groups = collections(run / "val_predictions.csv")
        largest = {name: largest_shorter_side(rows) for name, rows in groups.items()}
        done = {}  # (collection, effective detail size) -> scores: HAM10000 (150 px) is the same at 150 and above
        for level in args.levels:
            detail = min((v for v in (level, stored) if v), default=None)  # a model's own detail size is the floor
            predictor.pre.pop("detail_size", None)
            if detail:
                predictor.pre["detail_size"] = detail
            for name, rows in groups.items():
                key = (name, detail if detail and detail < largest[name] else None)
                s = done[key] = done.get(key) or scores(predictor, rows)
                table[name, level].append(s)
                print(f"{str(run):40s} {level or 'stored':>6} {name:14s} {s['auc']:6.3f} {s['alerted']:8.0%} "
                      f"{s['sens']:5.2f} {s['spec']:5.2f} {s['p_other']:14.3f} {s['spec90']:13.2f}", flush=True)
    if len(args.runs) > 1:
        print(f"\nmean ± sd over {len(args.runs)} runs")
        for (name, level), rows in table.items():
            cells = dict(zip(KEYS, (mean_sd([r[k] for r in rows]) for k in KEYS)))
            print(f"{level or 'stored':>6} {name:14s} AUC {cells['auc']}  alerted {cells['alerted']}  sensitivity "
                  f"{cells['sens']}  specificity {cells['spec']}  p(mel) others {cells['p_other']}  spec@90 refit "
                  f"{cells['spec90']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
