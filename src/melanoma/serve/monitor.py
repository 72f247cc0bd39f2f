"""Site monitor of the service: the site check (melanoma.site_check) on the newest audit records of the served model.

Records count when the served weights predicted them at the served alert threshold (a site-calibrated copy of the
same weights has its own threshold, and its records are its own).
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from melanoma.serve.db import PredictionRecord
from melanoma.serve.inference import LoadedModel
from melanoma.site_check import site_report

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
