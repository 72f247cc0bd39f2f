"""What a melanoma alert threshold chosen on the training source keeps on a NEW source (transfer_check runs).

For a run trained on one source (its val_predictions.csv: in-source hold-out) and scored on a source it never saw
(RUN/eval-old-archive/predictions.csv), choose the threshold the way training does (metrics.choose_alert_threshold)
for several in-source sensitivity targets, and print the sensitivity and specificity it keeps on the new source;
then the in-source sensitivity that the threshold reaching 90% on the new source corresponds to.

    python scripts/threshold_shift.py runs/ham-only-lite0-long [RUN ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from melanoma.metrics import choose_alert_threshold

from melanoma.labelmaps import MELANOMA_NAMES as MELANOMA  # noqa: E402  (the project's one list)
TARGETS = (0.90, 0.95, 0.97)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label")]
    return (np.array([r["label"].strip().lower() in MELANOMA for r in rows]),
            np.array([float(r["melanoma_probability"]) for r in rows]))


def _sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = p >= threshold  # the alert rule of predict: probability >= threshold
    return float(flagged[y].mean()), float((~flagged[~y]).mean())


def shift_table(run: Path) -> list[str]:
    """Lines of the table for one run."""
    yv, pv = _read(run / "val_predictions.csv")
    yn, pn = _read(run / "eval-old-archive" / "predictions.csv")
    lines = [f"{run}: in-source {yv.sum()} melanomas / {len(yv)}; new source {yn.sum()} / {len(yn)}"]
    for target in TARGETS:
        t = choose_alert_threshold(yv, pv, target)
        (sv, cv), (sn, cn) = _sens_spec(yv, pv, t), _sens_spec(yn, pn, t)
        lines.append(f"  in-source target {target:.2f}: threshold {t:.3f}  in-source sens {sv:.2f} spec {cv:.2f}"
                     f"  | new source sens {sn:.2f} spec {cn:.2f}")
    t_new = choose_alert_threshold(yn, pn, 0.90)
    (sv, cv), (_, cn) = _sens_spec(yv, pv, t_new), _sens_spec(yn, pn, t_new)
    lines.append(f"  90% on the new source needs threshold {t_new:.3f}: in-source sens {sv:.2f} spec {cv:.2f},"
                 f" new-source spec {cn:.2f}")
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        needed = [Path(arg) / "val_predictions.csv", Path(arg) / "eval-old-archive" / "predictions.csv"]
        if missing := [str(n) for n in needed if not n.is_file()]:
            sys.exit(f"error: {', '.join(missing)}: missing (run scripts/transfer_check.sh for {arg} first)")
        print("\n".join(shift_table(Path(arg))))
