"""Print the README figures of finished CV runs: fold mean ± sd at the chosen epoch AND at the last epoch, pooled
out-of-fold values with bootstrap CIs, and per-class recall / AUC.

The checkpoint of each fold is the epoch with the best validation balanced accuracy, chosen on that fold's own
validation images, so the "chosen epoch" mean is slightly optimistic; the "last epoch" mean involves no choice.

Also printed: melanoma vs nevus AUC *within one source* (the old-archive images, i.e. the files that are not
HAM10000 images). In the 9-class split the label nearly names the source (every AK/DF/PBK/SCC/VASC file is a
HAM10000 image, no melanoma is), so the all-class melanoma AUC partly measures "old archive vs HAM10000"; the
within-source AUC cannot use that shortcut.

    python scripts/cv_table.py runs/cv-lite0-8ep runs/cv-lite0-ham
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from melanoma import metrics
from seed_stats import mean_sd  # scripts/ is on sys.path when this file runs as a script

HAM_METADATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000" / "HAM10000_metadata.csv"


def _last_epoch(fold: Path) -> dict:
    """val/bal_acc and val/mel_auc of the last logged epoch of one fold."""
    rows = [r for r in csv.DictReader((fold / "logs" / "metrics.csv").open()) if (r.get("val/bal_acc") or "").strip()]
    last = max(rows, key=lambda r: float(r["epoch"]))
    return {"epoch": int(float(last["epoch"])), "bal_acc": float(last["val/bal_acc"]),
            "mel_auc": float(last["val/mel_auc"])}


def _ci(entry) -> str:
    return f"{entry['value']:.3f} [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"


def within_source_auc(run: Path, ham_metadata: Path) -> str | None:
    """Melanoma vs nevus AUC (bootstrap CI) on the out-of-fold images that are not HAM10000 images."""
    if not ham_metadata.is_file():
        return None
    ham = {line.split(",")[1] for line in ham_metadata.read_text().splitlines()[1:]}
    rows = [r for r in csv.DictReader((run / "val_predictions.csv").open())
            if Path(r["image"]).stem not in ham and r["label"] in ("melanoma", "nevus")]
    y = np.array([r["label"] == "melanoma" for r in rows], dtype=np.int64)
    p = np.array([float(r["melanoma_probability"]) for r in rows])
    # the project's metrics (same bootstrap as every other CI here) on the two-class problem nevus / melanoma
    scored = metrics.compute_metrics(y, np.stack([1 - p, p], axis=1), ["nevus", "melanoma"], melanoma_class="melanoma")
    return f"{_ci(scored['melanoma']['auc'])} (n={len(y)}, {int(y.sum())} melanoma)"


def describe(run: Path, ham_metadata: Path = HAM_METADATA) -> None:
    summary = json.loads((run / "cv_summary.json").read_text())
    pooled = json.loads((run / "val_metrics.json").read_text())
    folds = sorted(run.glob("fold-*"))
    results = [json.loads((f / "result.json").read_text()) for f in folds]
    last = [_last_epoch(f) for f in folds]
    print(f"## {run}  ({summary['images']} images, {summary['seconds'] / 60:.0f} min of training)")
    print(f"chosen epoch: balanced accuracy {mean_sd([r['balanced_accuracy'] for r in results])}, "
          f"melanoma AUC {mean_sd([r['melanoma_auc'] for r in results])} "
          f"(epochs {[r.get('best_epoch') for r in results]})")
    print(f"last epoch:   balanced accuracy {mean_sd([x['bal_acc'] for x in last])}, "
          f"melanoma AUC {mean_sd([x['mel_auc'] for x in last])}")
    mel = pooled["melanoma"]
    print(f"out-of-fold:  balanced accuracy {_ci(pooled['balanced_accuracy'])}, melanoma AUC {_ci(mel['auc'])}, "
          f"sensitivity {mel['sensitivity']['value'] if isinstance(mel['sensitivity'], dict) else mel['sensitivity']:.3f}"
          f" / specificity {mel['specificity']['value'] if isinstance(mel['specificity'], dict) else mel['specificity']:.3f}"
          f" at the alert")
    per_class = ", ".join(f"{name} {c['recall']['value']:.2f} / {c['auc']['value']:.2f} (n={c['support']})"
                          for name, c in pooled["per_class"].items())
    print(f"per class recall / AUC: {per_class}")
    within = within_source_auc(run, ham_metadata)
    if within:
        print(f"old-archive melanoma vs nevus AUC (out-of-fold, no source shortcut): {within}")
    print()


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["runs/cv-lite0"]:
        describe(Path(arg))
