"""Could a per-class decision bias lift the CV balanced accuracy? Cross-fitted, so no fold sees its own labels.

Balanced accuracy rewards the arg-max of log p(class | image) + b_class for a well-chosen bias vector b (a prior
shift). For each fold k, b is fitted by coordinate ascent on the OTHER folds' out-of-fold predictions and applied
to fold k; prints per-fold and mean ± sd balanced accuracy with and without it.

    python scripts/decision_bias.py runs/cv-lite0-ham
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

GRID = np.linspace(-3.0, 3.0, 61)  # bias values tried per class, in log-probability units


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([(pred[y == k] == k).mean() for k in np.unique(y)]))


def _read_fold(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = list(rows[0].keys())[2:list(rows[0].keys()).index("prediction")]
    probs = np.array([[float(r[c]) for c in classes] for r in rows])
    return np.log(probs + 1e-9), np.array([classes.index(r["label"]) for r in rows])


def fit_bias(log_p: np.ndarray, y: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Coordinate ascent on balanced accuracy over GRID, one class at a time."""
    b = np.zeros(log_p.shape[1])
    for _ in range(rounds):
        for j in range(len(b)):
            current = _balanced_accuracy(y, (log_p + b).argmax(1))
            scores = []
            for g in GRID:
                trial = b.copy()
                trial[j] = g
                scores.append(_balanced_accuracy(y, (log_p + trial).argmax(1)))
            if max(scores) > current:  # keep the old value on ties, so an unhelpful class stays at 0
                b[j] = GRID[int(np.argmax(scores))]
    return b


def main(run: Path) -> None:
    folds = [_read_fold(p) for p in sorted(run.glob("fold-*/val_predictions.csv"))]
    raw, adjusted = [], []
    for k, (log_p, y) in enumerate(folds):
        others = [f for j, f in enumerate(folds) if j != k]
        b = fit_bias(np.concatenate([f[0] for f in others]), np.concatenate([f[1] for f in others]))
        raw.append(_balanced_accuracy(y, log_p.argmax(1)))
        adjusted.append(_balanced_accuracy(y, (log_p + b).argmax(1)))
        print(f"fold {k}: {raw[-1]:.3f} -> {adjusted[-1]:.3f}  bias {np.round(b, 1).tolist()}")
    print(f"mean ± sd: {np.mean(raw):.3f} ± {np.std(raw, ddof=1):.3f} -> "
          f"{np.mean(adjusted):.3f} ± {np.std(adjusted, ddof=1):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
