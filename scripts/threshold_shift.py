"""What a melanoma alert threshold chosen on the training source keeps on a NEW source (transfer_check runs).

For a run trained on one source (its val_predictions.csv: in-source hold-out) and scored on a source it never saw
(RUN/eval-old-archive/predictions.csv, or RUN/NEW/predictions.csv with --new NEW: scripts/loso_insource.sh writes
heldout-eval), choose the threshold the way training does (metrics.choose_alert_threshold) for several in-source
sensitivity targets, and print the sensitivity and specificity it keeps on the new source; then the in-source
sensitivity that the threshold reaching 90% on the new source corresponds to; finally which in-source lesions the
90% threshold alerts, per true class (metrics.alerted_by_class: the same specificity can spare nevi and alert
keratoses, or the reverse).

    python scripts/threshold_shift.py [--new heldout-eval] runs/ham-only-lite0-long [RUN ...]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_rules import conflicting  # noqa: E402

from melanoma.metrics import alerted_by_class, choose_alert_threshold  # noqa: E402

from melanoma.labelmaps import is_melanoma_label  # noqa: E402  (the project's one list)
TARGETS = (0.90, 0.95, 0.97)


def _is_melanoma(labels: list[str]) -> np.ndarray:
    return np.array([is_melanoma_label(label) for label in labels])


def _read_labels(path: Path) -> tuple[list[str], np.ndarray]:
    """Labels and melanoma probabilities; a picture filed under two labels is left out, as `melanoma evaluate`
    leaves it out of its metrics (its predictions.csv still lists both copies)."""
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("label")]
    twice = conflicting([r["image"] for r in rows], [r["label"] for r in rows])
    rows = [r for r, conflict in zip(rows, twice) if not conflict]
    return [r["label"] for r in rows], np.array([float(r["melanoma_probability"]) for r in rows])


def class_lines(labels: list[str], p: np.ndarray, threshold: float) -> list[str]:
    """Per true class: how many of its images the alert at `threshold` fires on."""
    names = sorted(set(labels))
    rows = alerted_by_class([names.index(label) for label in labels], p >= threshold, names)
    return [f"    {name:<28} {r['alerted']:>4} / {r['n']:<5} alerted ({r['share']:.2f})" for name, r in rows.items()]


def _sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = p >= threshold  # the alert rule of predict: probability >= threshold
    return float(flagged[y].mean()), float((~flagged[~y]).mean())


def shift_table(run: Path, new: str = "eval-old-archive") -> list[str]:
    """Lines of the table for one run."""
    labels, pv = _read_labels(run / "val_predictions.csv")
    yv = _is_melanoma(labels)
    new_labels, pn = _read_labels(run / new / "predictions.csv")
    yn = _is_melanoma(new_labels)
    lines = [f"{run}: in-source {yv.sum()} melanomas / {len(yv)}; new source {yn.sum()} / {len(yn)}"]
    thresholds = {target: choose_alert_threshold(yv, pv, target) for target in TARGETS}
    for target, t in thresholds.items():
        (sv, cv), (sn, cn) = _sens_spec(yv, pv, t), _sens_spec(yn, pn, t)
        lines.append(f"  in-source target {target:.2f}: threshold {t:.3f}  in-source sens {sv:.2f} spec {cv:.2f}"
                     f"  | new source sens {sn:.2f} spec {cn:.2f}")
    t_new = choose_alert_threshold(yn, pn, 0.90)
    (sv, cv), (_, cn) = _sens_spec(yv, pv, t_new), _sens_spec(yn, pn, t_new)
    lines.append(f"  90% on the new source needs threshold {t_new:.3f}: in-source sens {sv:.2f} spec {cv:.2f},"
                 f" new-source spec {cn:.2f}")
    lines.append(f"  in-source lesions alerted at the in-source 90% threshold {thresholds[0.90]:.3f}, by true class:")
    return lines + class_lines(labels, pv, thresholds[0.90])


if __name__ == "__main__":
    args = sys.argv[1:]
    new = "eval-old-archive"
    if args[:1] == ["--new"] and len(args) > 1:
        new, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    for arg in args:
        needed = [Path(arg) / "val_predictions.csv", Path(arg) / new / "predictions.csv"]
        if missing := [str(n) for n in needed if not n.is_file()]:
            sys.exit(f"error: {', '.join(missing)}: missing (run scripts/transfer_check.sh or loso_insource.sh for "
                     f"{arg} first)")
        print("\n".join(shift_table(Path(arg), new)))
