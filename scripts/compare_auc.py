"""Paired bootstrap of the melanoma AUC difference between two models scored on the SAME images (two
predictions.csv files written by `melanoma evaluate`, matched by path; the label conflicts its metrics.json left
out are left out here too). Pairing removes the between-image variance that makes two separate CIs overlap.

    python scripts/compare_auc.py runs/ham-only-lite0/eval-old-archive/predictions.csv \
        runs/ham-only-lite0-nocc/eval-old-archive/predictions.csv
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from melanoma.labelmaps import is_melanoma_label  # noqa: E402  (the project's one list)


def read_predictions(path: str) -> dict[str, tuple[bool, float]]:
    """{path: (is melanoma, melanoma probability)} of the labelled rows that `melanoma evaluate` scored: a
    predictions.csv also lists the pictures filed under two classes (label conflicts: once per class, with opposite
    labels), which its metrics.json beside it leaves out of every figure; so does this."""
    conflicts = label_conflicts_left_out(Path(path).parent)
    with open(path, newline="") as fh:
        return {r["path"]: (is_melanoma_label(r["label"]), float(r["melanoma_probability"]))
                for r in csv.DictReader(fh) if r.get("label") and r["path"] not in conflicts}


def label_conflicts_left_out(folder: Path) -> set[str]:
    """The images a `melanoma evaluate` folder's metrics.json lists as label conflicts it did not score."""
    metrics = folder / "metrics.json"
    conflicts = (json.loads(metrics.read_text()).get("label_conflicts") or {}) if metrics.is_file() else {}
    return set() if conflicts.get("scored") else set(conflicts.get("images", []))


def paired_auc_difference(a: str, b: str, n_boot: int = 2000, seed: int = 0, only=None) -> dict:
    """AUC(a) - AUC(b) on the images both files scored (and in `only`, a set of paths, when given), with a paired
    bootstrap 95% CI. Images pair by where their paths resolve, so a run scored through a folder of symlinks
    (scripts/loso_insource.sh with HELDOUT_CSV) pairs with one scored on the images themselves."""
    first, second = ({os.path.realpath(p): v for p, v in read_predictions(f).items()} for f in (a, b))
    wanted = {os.path.realpath(p) for p in only} if only is not None else set(first)
    keys = sorted(set(first) & set(second) & wanted)
    y = np.array([first[k][0] for k in keys])
    pa, pb = (np.array([d[k][1] for k in keys]) for d in (first, second))
    return paired_bootstrap(y, pa, pb, n_boot, seed)


def paired_bootstrap(y, pa, pb, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC(pa) - AUC(pb) for labels y (True = melanoma), with a 95% CI from resampling the images (both scores of an
    image travel together)."""
    y, pa, pb = np.asarray(y, dtype=bool), np.asarray(pa), np.asarray(pb)
    rng, diffs = np.random.default_rng(seed), []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            diffs.append(roc_auc_score(y[i], pa[i]) - roc_auc_score(y[i], pb[i]))
    return {"n": len(y), "n_melanoma": int(y.sum()), "auc_a": roc_auc_score(y, pa), "auc_b": roc_auc_score(y, pb),
            "difference": roc_auc_score(y, pa) - roc_auc_score(y, pb), "ci": np.percentile(diffs, [2.5, 97.5]).tolist(),
            "share_of_resamples_a_not_better": float(np.mean(np.asarray(diffs) <= 0))}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        if not Path(arg).is_file():
            sys.exit(f"error: {arg}: missing (a predictions.csv written by `melanoma evaluate`)")
    r = paired_auc_difference(sys.argv[1], sys.argv[2])
    print(f"{r['n']} images ({r['n_melanoma']} melanoma): AUC {r['auc_a']:.3f} vs {r['auc_b']:.3f}, difference "
          f"{r['difference']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] (paired bootstrap; a not better in "
          f"{r['share_of_resamples_a_not_better']:.1%} of resamples)")
