"""Measure test-time augmentation on cross-validated predictions: every fold's model predicts its own validation
images once without TTA and once with N flip/rotation views; the out-of-fold predictions are pooled and scored.

usage: python scripts/tta_cv.py RUN [--views 8] [--bootstrap 1000]   (RUN = a `melanoma train --folds K` folder)
Writes RUN/tta_cv.json and prints a small table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from melanoma.evaluate import read_predictions_csv
from melanoma.metrics import compute_metrics
from melanoma.predict import Predictor


def pooled_predictions(run: Path, views: int) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """(labels, probs, class_names, paths) of all folds' validation images predicted with `views` TTA views."""
    labels, probs, paths, classes = [], [], [], None
    for fold in sorted(run.glob("fold-*")):
        table = read_predictions_csv(fold / "val_predictions.csv")
        predictor = Predictor.load(fold)
        classes = predictor.class_names
        result = predictor.predict_paths(table.paths, tta=views > 1, tta_views=views)
        assert not result.errors and result.paths == table.paths
        labels += table.labels
        probs.append(result.probs)
        paths += table.paths
    return labels, np.concatenate(probs), classes, paths


def score(run: Path, views: int, bootstrap: int) -> dict:
    started = time.time()
    labels, probs, classes, _ = pooled_predictions(run, views)
    y = np.array([classes.index(label) for label in labels])
    melanoma = json.loads((run / "model.json").read_text()).get("melanoma_class")
    m = compute_metrics(y, probs, classes, melanoma_class=melanoma, bootstrap=bootstrap, seed=0)
    return {"views": views, "seconds": round(time.time() - started, 1), "n": int(len(y)),
            "balanced_accuracy": m["balanced_accuracy"], "melanoma_auc": (m["melanoma"] or {}).get("auc"),
            "melanoma_pauc": (m["melanoma"] or {}).get("pauc_above_80_sensitivity")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    rows = [score(args.run, 1, args.bootstrap), score(args.run, args.views, args.bootstrap)]
    (args.run / "tta_cv.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        ba, auc = r["balanced_accuracy"], r["melanoma_auc"] or {}
        print(f"views={r['views']}: balanced accuracy {ba['value']:.3f} [{ba['ci'][0]:.3f}, {ba['ci'][1]:.3f}]  "
              f"melanoma AUC {auc.get('value', float('nan')):.3f} [{auc.get('ci', [0, 0])[0]:.3f}, "
              f"{auc.get('ci', [0, 0])[1]:.3f}]  ({r['seconds']} s, n={r['n']})")


if __name__ == "__main__":
    main()
