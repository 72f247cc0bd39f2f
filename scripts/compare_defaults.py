"""The shipped default against a candidate, on the validation images both hold out (their val_predictions.csv;
the default recipe validates every member on the same group-aware 20% of both sources, --split-seed 42): melanoma
AUC on all of them, on the older archive's own images of the 9-class split (its ISIC id not a HAM10000 image) and on
the HAM10000 source, each paired; then each model's alert on the same groups and the share of all lesions alerted
at 10% / 2% melanoma prevalence (from the pooled operating point, as the model card states it).

    .venv/bin/python scripts/compare_defaults.py models/default runs/default-v9/shipped [BOOTSTRAP_RESAMPLES]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_auc import paired_auc_difference  # noqa: E402
from loso_by_collection import ham_ids, isic_id  # noqa: E402

from melanoma.labelmaps import is_melanoma_label  # noqa: E402  (the project's one list)
from melanoma.metrics import expected_alert_share  # noqa: E402

NON_MELANOCYTIC_EXCLUDED = {"melanoma", "nevus"}


def groups(csv_path: Path) -> dict[str, set[str]]:
    """Paths of the validation images by where they come from (HAM10000 source: under a folder named ham10000)."""
    with csv_path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label")]
    ham = ham_ids()
    in_ham_source = {r["path"] for r in rows if "ham10000" in Path(r["path"]).parts}
    split = [r for r in rows if r["path"] not in in_ham_source]
    return {"all": {r["path"] for r in rows},
            "9-class split (the alert's Train source)": {r["path"] for r in split},
            "older archive's own": {r["path"] for r in split if isic_id(r["image"]) not in ham},
            "9-class split's HAM10000 keratoses, carcinomas, others": {
                r["path"] for r in split if isic_id(r["image"]) in ham and r["label"] not in NON_MELANOCYTIC_EXCLUDED},
            "HAM10000 source": in_ham_source}


def operating_point(model: Path, only: set[str]) -> tuple[float | None, float]:
    """(sensitivity, specificity) of the model's stored alert threshold on the images in `only`; sensitivity None
    where they hold no melanoma."""
    threshold = json.loads((model / "model.json").read_text())["thresholds"]["melanoma_alert"]
    with (model / "val_predictions.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["path"] in only]
    is_mel = np.array([is_melanoma_label(r["label"]) for r in rows])
    flagged = np.array([float(r["melanoma_probability"]) >= threshold for r in rows])
    return (float(flagged[is_mel].mean()) if is_mel.any() else None), float((~flagged[~is_mel]).mean())


def main(old: Path, new: Path, n_boot: int = 2000) -> None:
    a, b = (str(m / "val_predictions.csv") for m in (new, old))  # paired_auc_difference: a - b
    print(f"| validation images | {old} | {new} | paired difference (new - old) |\n|---|---|---|---|")
    for name, only in groups(new / "val_predictions.csv").items():
        points = [operating_point(m, only) for m in (old, new)]
        if points[1][0] is not None:
            r = paired_auc_difference(a, b, n_boot=n_boot, only=only)
            print(f"| {name} ({r['n']}, {r['n_melanoma']} melanoma): AUC | {r['auc_b']:.3f} | {r['auc_a']:.3f} | "
                  f"{r['difference']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] |")
        cells = [f"{'-' if s is None else f'{s:.2f}'} / {p:.2f}" for s, p in points]
        print(f"| {name} ({len(only)}): sensitivity / specificity at the alert | {cells[0]} | {cells[1]} | |")
        if name == "all":
            shares = [expected_alert_share(*p) for p in points]
            print("| share of all lesions alerted at 10% / 2% melanoma prevalence | "
                  + " | ".join(" / ".join(f"{v:.0%}" for v in s.values()) for s in shares) + " | |")
    thresholds = [json.loads((m / "model.json").read_text())["thresholds"]["melanoma_alert"] for m in (old, new)]
    print(f"| alert threshold | {thresholds[0]:.3f} | {thresholds[1]:.3f} | |")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    for arg in sys.argv[1:3]:
        if not (Path(arg) / "val_predictions.csv").is_file():
            sys.exit(f"error: {arg}: no val_predictions.csv (a model folder of melanoma train / ensemble / threshold)")
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(n) for n in sys.argv[3:]))
