"""Would the site check (melanoma.site_check, the service's site monitor) have caught an alert that fails at a
source the model never saw, without any diagnosis? (session 46)

Each RUN is a leave-one-source-out run (scripts/loso_insource.sh: trained on HAM10000, or with TRAIN_SOURCE=older
on the older archive's own images; its alert chosen for 90% sensitivity on its own source's validation images,
model.json holding that operating point) scored on the never-seen source (RUN/heldout-eval/predictions.csv and
metrics.json; images metrics.json lists as label conflicts are left out, as its scores leave them out). The
never-seen source's mix is not a clinic's (the older archive is 56% melanoma), so a clinic is drawn from it: all its
non-melanomas and as many melanomas as make `--prevalence` (default 10%), `--draws` times (default 20). Printed per
run: the alert's sensitivity and specificity on the never-seen source (what a site could only learn from diagnoses),
the share alerted at the drawn clinics, the range the run's validation operating point predicts for a prevalence up
to 30%, and how many draws the check flags.

--adapt STATED... also chooses, on each drawn clinic's images and without their diagnoses, the threshold that
alerts the share the validation operating point predicts at the STATED prevalence (site_check.share_matched_threshold,
what `melanoma site-threshold` does) and prints its mean sensitivity / specificity over the draws on the whole
never-seen source, and the lowest sensitivity of any draw.

    .venv/bin/python scripts/site_check_proxy.py RUN... [--prevalence 0.1] [--draws 20] [--seed 0]
        [--adapt 0.05 0.1 0.2] [--clinic-size 100]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from melanoma.labelmaps import is_melanoma_label
from melanoma.site_check import share_matched_threshold, site_report


def scored_rows(run: Path) -> list[dict]:
    """The never-seen source's prediction rows that its metrics.json scored (label conflicts left out)."""
    metrics = json.loads((run / "heldout-eval" / "metrics.json").read_text())
    conflicts = metrics.get("label_conflicts") or {}
    left_out = set() if conflicts.get("scored") else set(conflicts.get("images") or [])
    with (run / "heldout-eval" / "predictions.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["path"] not in left_out]


def drawn_clinic(melanomas: list, others: list, prevalence: float, rng) -> list:
    """All `others` and as many randomly drawn `melanomas` as make `prevalence` (at most all of them)."""
    k = min(len(melanomas), round(prevalence * len(others) / (1 - prevalence)))
    return others + [melanomas[i] for i in rng.choice(len(melanomas), k, replace=False)]


def adapted_alert(rows: list[dict], is_mel: list[bool], meta: dict, stated: float, prevalence: float, draws: int,
                  seed: int, clinic_size: int | None) -> tuple[float, float, float]:
    """Mean sensitivity and specificity, and the lowest sensitivity of any draw, on the whole never-seen source of the
    share-matched threshold (site_check.share_matched_threshold at the `stated` prevalence) chosen on each drawn
    clinic's images, without their diagnoses; clinics of `clinic_size` images (None: all non-melanomas and their
    melanomas)."""
    p = np.array([float(r["melanoma_probability"]) for r in rows])
    mel = np.array(is_mel)
    rng, points = np.random.default_rng(seed), []
    for _ in range(draws):
        clinic = np.array(drawn_clinic(list(np.flatnonzero(mel)), list(np.flatnonzero(~mel)), prevalence, rng))
        if clinic_size:
            clinic = rng.choice(clinic, min(clinic_size, len(clinic)), replace=False)
        threshold, _ = share_matched_threshold(p[clinic], meta, stated)
        points.append((np.mean(p[mel] >= threshold), np.mean(p[~mel] < threshold)))
    sens, spec = np.array(points).T
    return float(sens.mean()), float(spec.mean()), float(sens.min())


def check_run(run: Path, prevalence: float, draws: int, seed: int, stated=(), clinic_size: int | None = None
              ) -> dict:
    rows, meta = scored_rows(run), json.loads((run / "model.json").read_text())
    alerted = [r["melanoma_alert"] == "true" for r in rows]
    is_mel = [is_melanoma_label(r["label"]) for r in rows]
    melanomas = [a for a, m in zip(rows, is_mel) if m]
    others = [a for a, m in zip(rows, is_mel) if not m]
    rng, shares, flagged, report = np.random.default_rng(seed), [], 0, {}
    for _ in range(draws):
        clinic = drawn_clinic(melanomas, others, prevalence, rng)
        report = site_report(len(clinic), alerted=sum(r["melanoma_alert"] == "true" for r in clinic),
                             referred=sum(r["refer"] == "true" for r in clinic), warned=0, refer_reasons={},
                             meta=meta)
        shares.append(report["alerted"]["share"])
        flagged += report["status"] == "check"
    adapted = {p0: adapted_alert(rows, is_mel, meta, p0, prevalence, draws, seed, clinic_size)
               for p0 in stated}
    mel_alerts = [a for a, m in zip(alerted, is_mel) if m]
    other_alerts = [a for a, m in zip(alerted, is_mel) if not m]
    return {"run": str(run), "sensitivity": float(np.mean(mel_alerts)),
            "specificity": 1 - float(np.mean(other_alerts)), "clinic_images": len(clinic),
            "alerted": float(np.mean(shares)), "expected": report["alerted"].get("expected"),
            "flagged": flagged, "draws": draws, "adapted": adapted}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="leave-one-source-out run folders")
    ap.add_argument("--prevalence", type=float, default=0.1, help="melanoma share of a drawn clinic (default 0.1)")
    ap.add_argument("--draws", type=int, default=20, help="clinics drawn per run (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    ap.add_argument("--adapt", type=float, nargs="+", default=[], metavar="STATED",
                    help="also choose a share-matched threshold on each drawn clinic's images for each stated "
                         "prevalence (site_check.share_matched_threshold) and print its sensitivity / specificity "
                         "on the whole never-seen source")
    ap.add_argument("--clinic-size", type=int, help="images per drawn clinic for --adapt (default: all drawn)")
    args = ap.parse_args(argv)
    if not 0 < args.prevalence < 1 or args.draws < 1 or not all(0 < p < 1 for p in args.adapt):
        print("error: --prevalence and --adapt must be in (0, 1) and --draws at least 1", file=sys.stderr)
        return 2
    adapt_columns = "".join(f" share-matched at {p:g}: sensitivity / specificity (lowest sensitivity) |"
                            for p in args.adapt)
    print("| run | never-seen source: sensitivity / specificity at its alert | drawn clinic: images, share alerted "
          f"| validation predicts | check flags |{adapt_columns}")
    print("|---|---|---|---|---|" + "---|" * len(args.adapt))
    for run in args.runs:
        try:
            r = check_run(run, args.prevalence, args.draws, args.seed, args.adapt, args.clinic_size)
        except (OSError, KeyError, ValueError) as exc:
            print(f"error: {run}: {exc}", file=sys.stderr)
            return 2
        expected = "-" if r["expected"] is None else f"{r['expected'][0]:.0%}-{r['expected'][1]:.0%}"
        adapted = "".join(f" {sens:.2f} / {spec:.2f} ({low:.2f}) |" for sens, spec, low in r["adapted"].values())
        print(f"| {run} | {r['sensitivity']:.2f} / {r['specificity']:.2f} | {r['clinic_images']}, "
              f"{r['alerted']:.0%} | {expected} | {r['flagged']} of {r['draws']} |{adapted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
