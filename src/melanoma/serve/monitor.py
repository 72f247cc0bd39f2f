"""Site monitor of the service: the site check (melanoma.site_check) on the newest audit records of the served model,
and the threshold adapted to them without diagnoses (site_check.share_matched_threshold), written as a NEW model
folder only on explicit confirmation (as the site calibration does).

Records count when the served weights predicted them at the served alert threshold (a site-calibrated copy of the
same weights has its own threshold, and its records are its own).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from melanoma.serve.db import PredictionRecord
from melanoma.serve.inference import LoadedModel
from melanoma.site_check import share_matched_threshold, site_report, write_site_threshold

THRESHOLD_MATCH = 1e-9  # float equality of the stored and the served threshold, whatever the database's rounding


def recent_records(session: Session, model: LoadedModel, last: int) -> list[PredictionRecord]:
    """The `last` newest records predicted by the served weights at the served alert threshold."""
    query = select(PredictionRecord).where(PredictionRecord.model_sha256 == model.sha256)
    if model.alert_threshold is not None:
        query = query.where(PredictionRecord.alert_threshold.between(model.alert_threshold - THRESHOLD_MATCH,
                                                                    model.alert_threshold + THRESHOLD_MATCH))
    return list(session.scalars(query.order_by(PredictionRecord.id.desc()).limit(last)))


def report(rows: list[PredictionRecord], meta: dict, max_prevalence: float) -> dict:
    """site_report of `rows`, with the time span they cover."""
    counts = {"alerted": sum(r.alert for r in rows), "referred": sum(r.refer for r in rows),
              "warned": sum(bool(r.warning) for r in rows),
              "refer_reasons": Counter(r.refer_reason or "unspecified" for r in rows if r.refer)}
    return {**site_report(len(rows), meta=meta, max_prevalence=max_prevalence, **counts),
            "from": min((r.created_at for r in rows), default=None),
            "to": max((r.created_at for r in rows), default=None)}


def proposal(rows: list[PredictionRecord], meta: dict, prevalence: float) -> dict | None:
    """The share-matched threshold for these records at the stated prevalence, and the share it alerts; None when
    the card holds no operating point or no record has a melanoma probability."""
    p = [r.melanoma_probability for r in rows if r.melanoma_probability is not None]
    try:
        threshold, share = share_matched_threshold(p, meta, prevalence)
    except ValueError:
        return None
    return {"prevalence": prevalence, "threshold": threshold, "target_share": share,
            "alerted_at_threshold": sum(x >= threshold for x in p) / len(p)}


def apply(rows: list[PredictionRecord], model: LoadedModel, prevalence: float, out_root: Path) -> dict:
    """Write `<out_root>/<model>-share-<time>/`: a copy of the served model with the share-matched threshold, and
    the records it was chosen on (site_alert_share.csv: id, time, melanoma probability). The served model is not
    changed."""
    folder, out = model.require_folder("adapting the threshold"), model.site_copy_path(out_root, "share")
    kept = [r for r in rows if r.melanoma_probability is not None]
    result = write_site_threshold(folder, out, [r.melanoma_probability for r in kept], prevalence,
                                  chosen_on=f"{len(kept)} images of this site's audit trail (alert share matched, "
                                            "no diagnoses)")
    with (out / "site_alert_share.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["record_id", "created_at", "melanoma_probability"])
        writer.writerows([r.id, r.created_at.isoformat(), f"{r.melanoma_probability:.6f}"] for r in kept)
    return {**result, "model_folder": str(out.resolve())}
