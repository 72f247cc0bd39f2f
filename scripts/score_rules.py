"""Which melanoma score ranks a collection's melanomas best? (session 18)

The alert ranks images by the melanoma probability. On a source the model never saw, a melanoma's probability can
leak to a neighbouring class (old-archive melanomas to pigmented benign keratosis under HAM10000-trained models)
while the model still knows "not a nevus". This scores, per run and per collection of its predictions (HAM10000
pictures, by image id, or the older ISIC archive; a picture filed under two labels left out, as `melanoma
evaluate` does), the melanoma AUC of three rules over the class probabilities:

    melanoma            p(melanoma), what the project ships
    melanoma_vs_nevus   log p(melanoma) - log p(nevus): the odds against the commonest look-alike only
    not_nevus           1 - p(nevus)
    training_mix        p(melanoma) moved to the class mix the run trained on (melanoma.priors, what `melanoma
                        threshold --prior-correction training-mix` ships): its validation labels, or for a run
                        validated on a held-out source its training source's own mix (HAM10000's metadata; the
                        older archive's images of the 9-class split); a CSV outside a run folder has no mix ("-")

then mean ± sd over the runs. A run folder is read from RUN/heldout-eval/predictions.csv or RUN/val_predictions.csv;
a CSV path is read as it is.

    .venv/bin/python scripts/score_rules.py runs/loso2/detail-seed{1,2,3,4,5}
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loso_by_collection import HAM_METADATA, ham_ids, isic_id, prediction_csv  # noqa: E402
from seed_stats import mean_sd  # noqa: E402

from melanoma import priors  # noqa: E402
from melanoma.config import NATURAL_MIX_MODES  # noqa: E402
from melanoma.errors import DataError, MelanomaError  # noqa: E402
from melanoma.evaluate import read_predictions_csv  # noqa: E402
from melanoma.labelmaps import HAM_DX, find_melanoma_class, is_melanoma_label  # noqa: E402

RULES = ("melanoma", "melanoma_vs_nevus", "not_nevus", "training_mix")
NEVUS_NAMES = ("nevus", "nv")  # the 9-class name and HAM10000's dx code


def csv_of(path: Path) -> Path:
    """A run folder's held-out prediction CSV (loso_by_collection.prediction_csv), or the CSV path itself."""
    if not path.is_dir():
        return path
    found = prediction_csv(path)
    if found is None:
        raise DataError(f"{path}: no heldout-eval/predictions.csv or val_predictions.csv (unfinished run?)")
    return found


def training_counts(run: Path, classes: list[str]) -> dict[str, int] | None:
    """{class: images} of the class mix a run folder trained on (None for a bare CSV): see the module doc."""
    if not (run / "model.json").is_file():
        return None
    meta = json.loads((run / "model.json").read_text())
    training = meta.get("training") or {}
    if training.get("imbalance") in NATURAL_MIX_MODES:  # trained on the natural mix: nothing to move
        return None
    holdout = training.get("holdout_source")
    if not holdout:
        return dict(Counter(read_predictions_csv(run / "val_predictions.csv", classes).labels))
    if holdout.lower() == "train":  # trained on HAM10000: its dx codes, named as the run names them
        dx = [row["dx"] for row in csv.DictReader(HAM_METADATA.open())]
        return dict(Counter(code if code in classes else HAM_DX[code] for code in dx))
    ham = ham_ids()  # trained on the older archive: the 9-class split's images that are not HAM10000 pictures
    train = Path(meta["data"]["source"])
    return dict(Counter(p.parent.name for p in train.glob("*/*.jpg") if isic_id(p.name) not in ham))


def rule_scores(probs: np.ndarray, classes: list[str], counts: dict | None = None) -> dict[str, np.ndarray]:
    """{rule: one score per image} from the class probabilities (columns named as in the model)."""
    mel_index = classes.index(find_melanoma_class(classes))
    mel = probs[:, mel_index]
    nev = probs[:, next(i for i, c in enumerate(classes) if c.lower() in NEVUS_NAMES)]
    tiny = 1e-12  # CSV probabilities have 6 decimals: 0 occurs
    mix = (priors.reweight(probs, priors.mix_weights(counts, classes))[:, mel_index] if counts is not None
           else np.full(len(probs), np.nan))
    return {"melanoma": mel, "melanoma_vs_nevus": np.log(mel + tiny) - np.log(nev + tiny), "not_nevus": 1.0 - nev,
            "training_mix": mix}


def conflicting(images: list[str], labels: list[str | None]) -> np.ndarray:
    """True for the rows of a picture filed under two labels (the 9-class split's duplicates, one row per folder):
    `melanoma evaluate` leaves them out of its metrics, and so does this script."""
    seen: dict[str, set] = defaultdict(set)
    for image, label in zip(images, labels):
        seen[isic_id(image)].add(label)
    return np.array([len(seen[isic_id(image)]) > 1 for image in images])


def aucs_by_collection(path: Path, ham: set[str]) -> dict[str, dict[str, float]]:
    """{collection: {rule: melanoma AUC}} of a run folder or CSV; a collection without melanomas or without
    others is skipped."""
    table = read_predictions_csv(csv_of(path))
    is_mel = np.array([is_melanoma_label(label) for label in table.labels])
    collection = np.array(["HAM10000" if "ham10000" in p.lower() or isic_id(i) in ham else "older archive"
                           for i, p in zip(table.images, table.paths)])
    run = path if path.is_dir() else path.parent  # RUN/val_predictions.csv: the run's own mix too
    scores = rule_scores(table.probs, table.class_names, training_counts(run, table.class_names))
    scored = ~conflicting(table.images, table.labels)
    out = {}
    for name in sorted(set(collection)):
        keep = (collection == name) & scored
        if 0 < is_mel[keep].sum() < keep.sum():
            out[f"{name} ({keep.sum()}, {is_mel[keep].sum()} mel)"] = {
                rule: float(roc_auc_score(is_mel[keep], s[keep])) if not np.isnan(s).any() else math.nan
                for rule, s in scores.items()}
    return out


def main(paths: list[Path]) -> None:
    ham = ham_ids()
    per_collection: dict[str, list[dict[str, float]]] = defaultdict(list)
    print("| run | collection (images, melanomas) | " + " | ".join(RULES) + " |")
    print("|---|---|" + "---|" * len(RULES))
    for path in paths:
        for name, aucs in aucs_by_collection(path, ham).items():
            per_collection[name].append(aucs)
            print(f"| {path} | {name} | " + " | ".join(_cell([aucs[r]]) for r in RULES) + " |")
    for name, rows in per_collection.items():
        if len(rows) > 1:
            cells = [_cell([row[r] for row in rows]) for r in RULES]
            print(f"| mean ± sd of {len(rows)} | {name} | " + " | ".join(cells) + " |")


def _cell(values: list[float]) -> str:
    """One value, or mean ± sd of several; "-" where a rule had no score."""
    if any(math.isnan(v) for v in values):
        return "-"
    return mean_sd(values)


if __name__ == "__main__":
    try:
        main([Path(p) for p in sys.argv[1:]] or sys.exit(__doc__))
    except MelanomaError as exc:  # e.g. a path that is neither a run folder nor a prediction CSV: one line
        sys.exit(f"error: {exc}")
