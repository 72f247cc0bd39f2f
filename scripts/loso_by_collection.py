"""Rescore leave-one-source-out runs on the held-out source's OWN images (session 9).

Before session 9, `--holdout-source Train` validated on ~1,930 images of the 9-class split of which ~1,300 are
HAM10000 pictures (the split was built partly from HAM10000; 3 of them melanomas, the other ~360 melanomas from
the older archive). The melanoma AUC there partly asks "which collection is this picture from?". This prints, per
recipe and seed, the AUC on all validation images (as logged) and on the older-archive images alone (file name's
ISIC id not a HAM10000 image_id), then the mean of the first 3 seeds' probabilities (an ensemble) on both.
`scripts/loso_insource.sh` runs (checkpoint chosen on HAM10000, scored by `melanoma evaluate`, which leaves
HAM10000's pictures out itself) are read from RUN/heldout-eval/predictions.csv.

    .venv/bin/python scripts/loso_by_collection.py [runs/loso] [runs/loso-insource]
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from seed_stats import mean_sd  # scripts/ is on sys.path when a script runs

HAM_METADATA = Path(__file__).resolve().parents[2] / "shared/data/ham10000/HAM10000_metadata.csv"


def ham_ids() -> set[str]:
    with HAM_METADATA.open(newline="") as fh:
        return {row["image_id"] for row in csv.DictReader(fh)}


def isic_id(name: str) -> str:
    """'ISIC_0024306 (1).jpg' -> 'ISIC_0024306' (copies carry a ' (n)' suffix)."""
    return re.sub(r"\s*\(\d+\)$", "", Path(name).stem)


def prediction_csv(run: Path) -> Path | None:
    """The held-out predictions of an in-source run (heldout-eval/predictions.csv) or of a LOSO run
    (val_predictions.csv); None when the run has neither."""
    return next((run / n for n in ("heldout-eval/predictions.csv", "val_predictions.csv") if (run / n).is_file()),
                None)


def predictions(run: Path) -> dict[str, tuple[float, bool]] | None:
    """{image: (melanoma probability, is melanoma)} from prediction_csv(run); None when the run has none."""
    found = prediction_csv(run)
    if found is None:
        return None
    with found.open(newline="") as fh:
        return {r["image"]: (float(r["melanoma_probability"]), r["label"] == "melanoma") for r in csv.DictReader(fh)}


def auc(preds: dict, images) -> float:
    y = np.array([preds[i][1] for i in images])
    p = np.array([preds[i][0] for i in images])
    return float(roc_auc_score(y, p))


def main(roots: list[Path]) -> None:
    ham = ham_ids()
    runs: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for root in roots:
        for run in sorted(p for p in root.glob("*-seed*") if p.is_dir()):
            preds = predictions(run)
            if preds:
                runs[f"{root.name}/{run.name.rsplit('-seed', 1)[0]}"].append((run, preds))
    print("| runs | seeds | all validation images | older-archive images alone | mean of 3 seeds: all | "
          "mean of 3 seeds: older archive |")
    print("|---|---|---|---|---|---|")
    for recipe, members in runs.items():
        common = sorted(set.intersection(*(set(p) for _, p in members)))
        own = [i for i in common if isic_id(i) not in ham]
        all_aucs = [auc(p, common) for _, p in members]
        own_aucs = [auc(p, own) for _, p in members]
        first = members[:3]
        mean = {i: (float(np.mean([p[i][0] for _, p in first])), first[0][1][i][1]) for i in common}
        n_mel = sum(mean[i][1] for i in own)
        print(f"| {recipe} | {len(members)} | {mean_sd(all_aucs)} ({len(common)}) | {mean_sd(own_aucs)} "
              f"({len(own)}, {n_mel} melanomas) | {auc(mean, common):.3f} | {auc(mean, own):.3f} |")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]] or [Path("runs/loso")])
