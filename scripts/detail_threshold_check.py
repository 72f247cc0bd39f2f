"""How much would a detail-aware alert threshold recover? (session 12)

A model's older-archive validation images (its val_predictions.csv; `detail_robustness.collections`) are
predicted with every image first reduced to LEVEL px (`preprocessing.detail_size`). Per level: sensitivity and
specificity at the model's own threshold, then a threshold refitted for 90% sensitivity on a random half of the
images (stratified by label) and scored on the other half, over SPLITS splits (mean +- sd): what a threshold
fitted for images of that detail would give on images it was not fitted on. Then the way the shipped threshold
is fitted (`--per-source`: the lowest of each source's 90%-sensitivity thresholds), with HAM10000's validation
images reduced to the same level: the older archive's sensitivity and specificity at that worst-source threshold.

    .venv/bin/python scripts/detail_threshold_check.py MODEL [--levels 120 100] [--splits 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from detail_robustness import collections  # scripts/ is on sys.path when run as a script
from melanoma.metrics import choose_alert_threshold
from melanoma.predict import Predictor


def split_half(y: np.ndarray, p: np.ndarray, splits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sensitivity [splits], specificity [splits]) of a 90%-sensitivity threshold fitted on one stratified half."""
    rng = np.random.default_rng(seed)
    sens, spec = np.zeros(splits), np.zeros(splits)
    for i in range(splits):
        fit = np.zeros(len(y), bool)
        for label in (True, False):
            members = np.flatnonzero(y == label)
            fit[rng.choice(members, len(members) // 2, replace=False)] = True
        alert = p[~fit] >= choose_alert_threshold(y[fit], p[fit], 0.9)
        sens[i], spec[i] = alert[y[~fit]].mean(), 1 - alert[~y[~fit]].mean()
    return sens, spec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--levels", nargs="+", type=int, default=[120, 100])
    ap.add_argument("--splits", type=int, default=200)
    args = ap.parse_args(argv)
    predictor = Predictor.load(args.model)
    groups = collections(args.model / "val_predictions.csv")
    rows, ham = groups["older archive"], groups["HAM10000"]
    y = np.array([r["label"] == "melanoma" for r in rows])
    y_ham = np.array([r["label"] == "melanoma" for r in ham])
    for level in args.levels:
        predictor.pre["detail_size"] = level
        p = predictor.predict_paths([r["path"] for r in rows]).melanoma_probability
        own = p >= predictor.alert_threshold
        sens, spec = split_half(y, p, args.splits)
        print(f"{level} px, {len(y)} images ({int(y.sum())} melanomas): own threshold sensitivity "
              f"{own[y].mean():.2f} specificity {1 - own[~y].mean():.2f}; refitted on half, scored on the other: "
              f"sensitivity {sens.mean():.2f} +- {sens.std():.2f}, specificity {spec.mean():.2f} +- {spec.std():.2f}",
              flush=True)
        if len(ham) and y_ham.any():
            p_ham = predictor.predict_paths([r["path"] for r in ham]).melanoma_probability
            worst = min(choose_alert_threshold(y, p, 0.9), choose_alert_threshold(y_ham, p_ham, 0.9))
            alert = p >= worst
            print(f"{level} px, worst-source refit (HAM10000 at {level} px too): threshold {worst:.3f} "
                  f"(own {predictor.alert_threshold:.3f}), older archive sensitivity {alert[y].mean():.2f} "
                  f"specificity {1 - alert[~y].mean():.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
