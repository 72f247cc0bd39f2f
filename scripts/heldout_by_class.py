"""Which lesion types a leave-one-source-out run confuses with melanoma on a never-seen HAM10000 (session 47).

Each RUN was scored on HAM10000 (scripts/loso_insource.sh with TRAIN_SOURCE=older: RUN/heldout-eval/predictions.csv),
or is a predictions CSV of the same layout (e.g. a shipped model's val_predictions.csv: its HAM10000 images).
HAM10000's diagnosis (`dx` in its metadata, by the file's ISIC id) splits the non-melanomas; printed per run: the
melanoma AUC against all of them and against each diagnosis alone, then the share of each diagnosis the run's own
alert (the `melanoma_alert` column, chosen in-source) fires on; "-" where a diagnosis is missing. Rows a metadata file
does not know are counted and left out; so are a run folder's label conflicts, as its metrics.json scored them
(site_check_proxy.scored_rows).

    .venv/bin/python scripts/heldout_by_class.py RUN... [--metadata ../shared/data/ham10000/HAM10000_metadata.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from site_check_proxy import scored_rows

DEFAULT_METADATA = Path(__file__).resolve().parents[2] / "shared/data/ham10000/HAM10000_metadata.csv"


def diagnoses(metadata: Path) -> dict[str, str]:
    """{ISIC image id: dx} of a HAM10000 metadata file."""
    with metadata.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"image_id", "dx"} <= set(reader.fieldnames or []):
            raise ValueError(f"{metadata}: not HAM10000 metadata (needs image_id and dx columns)")
        return {row["image_id"]: row["dx"] for row in reader}


def is_predictions_csv(run: Path) -> bool:
    """True for a predictions CSV given as such, False for a run folder (scored into RUN/heldout-eval/)."""
    return run.suffix == ".csv"


def needed_files(run: Path) -> list[Path]:
    """What a run needs on disk: a CSV itself, or a run folder's never-seen-source predictions and metrics."""
    if is_predictions_csv(run):
        return [run]
    return [run / "heldout-eval" / "predictions.csv", run / "heldout-eval" / "metrics.json"]


def run_rows(run: Path, dx: dict[str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(diagnosis, melanoma probability, alert) per scored image the metadata knows, and how many it did not."""
    if is_predictions_csv(run):
        with run.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        rows = scored_rows(run)
    known = [r for r in rows if Path(r["path"]).stem in dx]
    return (np.array([dx[Path(r["path"]).stem] for r in known]),
            np.array([float(r["melanoma_probability"]) for r in known]),
            np.array([r["melanoma_alert"] == "true" for r in known]), len(rows) - len(known))


def auc_cell(melanoma: np.ndarray, probability: np.ndarray) -> str:
    """The melanoma AUC to 3 decimals, or "-" where one of the two groups is empty."""
    return f"{roc_auc_score(melanoma, probability):.3f}" if 0 < melanoma.sum() < len(melanoma) else "-"


def run_line(run: Path, dx: dict[str, str], others: list[str]) -> str:
    """One markdown row: AUC against all non-melanomas and each diagnosis; share alerted of each diagnosis."""
    d, p, alert, unknown = run_rows(run, dx)
    mel = d == "mel"
    aucs = [auc_cell(mel, p)] + [auc_cell(mel[mel | (d == o)], p[mel | (d == o)]) for o in others]
    shares = [f"{alert[d == k].mean():.0%}" if k in d else "-" for k in ["mel", *others]]
    note = f" ({unknown} unknown left out)" if unknown else ""
    return f"| {run}{note} | {int(mel.sum())} / {int((~mel).sum())} | " + " | ".join(aucs + shares) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="runs scored on HAM10000 (RUN/heldout-eval/) or predictions CSVs")
    parser.add_argument("--metadata", type=Path, default=DEFAULT_METADATA, help="HAM10000_metadata.csv")
    args = parser.parse_args(argv)
    try:
        dx = diagnoses(args.metadata)
        for run in args.runs:
            for path in needed_files(run):
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: not found (score the run first)")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    others = sorted(set(dx.values()) - {"mel"})
    print("| run | melanomas / others | melanoma AUC, all | " + " | ".join(f"vs {o}" for o in others)
          + " | alerted: mel | " + " | ".join(others) + " |")
    print("|---" * (3 + 2 * len(others) + 1) + "|")
    for run in args.runs:
        print(run_line(run, dx, others))
    return 0


if __name__ == "__main__":
    sys.exit(main())
