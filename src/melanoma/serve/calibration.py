"""Site calibration: re-choose the melanoma alert threshold from this clinic's reviewed cases.

The reviewed cases (final diagnosis known, predicted by the model now served) are written as a predictions CSV in
the shared layout (docs/DESIGN.md) and handed to finalize.rethreshold, the code behind `melanoma threshold MODEL
--predictions CSV --out NEW`, run in a subprocess so the service stays torch-free. A preview writes its copy to a
temporary folder; applying (only on explicit confirmation) writes a NEW model folder and never touches the served
model.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from melanoma.errors import MelanomaError
from melanoma.labelmaps import MELANOMA_NAMES, normalise_label
from melanoma.predict import csv_header
from melanoma.serve.db import PredictionRecord
from melanoma.serve.inference import LoadedModel


def reviewed_cases(session: Session, model: LoadedModel) -> list[PredictionRecord]:
    """Records with a final diagnosis, predicted by the served model (same weights hash)."""
    query = select(PredictionRecord).where(PredictionRecord.final_diagnosis.is_not(None),
                                           PredictionRecord.model_sha256 == model.sha256)
    return list(session.scalars(query.order_by(PredictionRecord.id)))


def is_melanoma(diagnosis: str, melanoma_class: str) -> bool:
    names = {normalise_label(n) for n in (melanoma_class, *MELANOMA_NAMES)}
    return normalise_label(diagnosis) in names


def write_predictions_csv(records: list[PredictionRecord], class_names: list[str], path: Path) -> None:
    """The shared prediction CSV layout with `label` = the dermatologist's final diagnosis."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(csv_header(class_names, labels=True))
        for r in records:
            probs = [f"{float(r.probabilities.get(c, 0.0)):.6f}" for c in class_names]
            writer.writerow([f"record-{r.id}", f"record-{r.id}", *probs, r.prediction, f"{r.confidence:.6f}",
                             "" if r.melanoma_probability is None else f"{r.melanoma_probability:.6f}",
                             str(r.alert).lower(), str(r.refer).lower(), r.refer_reason, r.warning or "",
                             r.final_diagnosis])


def operating_point(records: list[PredictionRecord], model: LoadedModel, threshold: float | None) -> dict:
    """Sensitivity / specificity of `threshold` on the reviewed cases (None where a class is missing)."""
    mel = model.meta.get("melanoma_class")
    truth = np.array([is_melanoma(r.final_diagnosis, mel) for r in records], dtype=bool)
    p = np.array([r.probabilities.get(mel, 0.0) for r in records], dtype=float)
    flagged = p >= threshold if threshold is not None else np.zeros(len(p), bool)
    return {"threshold": threshold, "n_melanoma": int(truth.sum()), "n_other": int((~truth).sum()),
            "sensitivity": float(flagged[truth].mean()) if truth.any() else None,
            "specificity": float((~flagged[~truth]).mean()) if (~truth).any() else None}


# Runs finalize.rethreshold (what `melanoma threshold RUN --predictions CSV --out NEW` runs) in a subprocess and
# prints its result, with the warnings it gave (e.g. too few melanomas for a stable threshold), as JSON.
_JOB = """
import json, sys, warnings
from melanoma.errors import MelanomaError
from melanoma.finalize import rethreshold
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        result = rethreshold(sys.argv[1], float(sys.argv[2]), sys.argv[3], out=sys.argv[4])
    except MelanomaError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
result["warnings"] = sorted({str(w.message) for w in caught if "melanoma" in type(w.message).__module__})
print(json.dumps(result))
"""


def _run_threshold(folder: Path, predictions: Path, target: float, out: Path) -> dict:
    """finalize.rethreshold(folder, target, predictions, out=out) in a subprocess (MelanomaError on failure)."""
    done = subprocess.run([sys.executable, "-c", _JOB, str(folder), str(target), str(predictions), str(out)],
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MelanomaError(f"choosing the threshold failed: {tail[:300]}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise MelanomaError(result["error"])
    return result


def preview(records: list[PredictionRecord], model: LoadedModel, target: float) -> dict:
    """The threshold that `melanoma threshold` chooses from the reviewed cases (on a throw-away copy)."""
    folder = model.require_folder("site calibration")
    with tempfile.TemporaryDirectory(prefix="melanoma-calibration-") as tmp:
        csv_path = Path(tmp) / "site_predictions.csv"
        write_predictions_csv(records, list(model.meta["class_names"]), csv_path)
        result = _run_threshold(folder, csv_path, target, Path(tmp) / "copy")
    return {"threshold": result["new"], "sensitivity": result["sensitivity"], "specificity": result["specificity"],
            "target_sensitivity": target, "warnings": result.get("warnings", [])}


def apply(records: list[PredictionRecord], model: LoadedModel, target: float, out_root: Path) -> dict:
    """Write a calibrated COPY of the served model folder under `out_root`; returns the threshold result and path.
    The cases it was chosen on are kept beside it (site_predictions.csv)."""
    folder, out = model.require_folder("site calibration"), model.site_copy_path(out_root, "site")
    with tempfile.TemporaryDirectory(prefix="melanoma-calibration-") as tmp:
        csv_path = Path(tmp) / "site_predictions.csv"
        write_predictions_csv(records, list(model.meta["class_names"]), csv_path)
        result = _run_threshold(folder, csv_path, target, out)
        shutil.copy2(csv_path, out / "site_predictions.csv")
    return {**result, "model_folder": str(out.resolve())}
