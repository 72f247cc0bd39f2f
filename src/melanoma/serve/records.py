"""Reading and writing the audit trail (the routers stay thin)."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from melanoma.serve.db import PredictionRecord, Review, utcnow
from melanoma.serve.inference import LoadedModel
from melanoma.serve.uploads import CheckedImage


def _finite(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def keep_image(folder: Path, item: CheckedImage) -> str:
    """Store the upload under its SHA-256 (never the client's name); returns the stored file name."""
    name = item.sha256 + item.extension
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(item.data)
        tmp.replace(target)
    return name


def add_predictions(session: Session, model: LoadedModel, items: list[CheckedImage], predictions,
                    case_ref: str | None, patient_ref: str | None, keep: Path | None) -> list[PredictionRecord]:
    """One audit row per image, committed together."""
    rows = []
    for item, p in zip(items, predictions):
        rows.append(PredictionRecord(
            created_at=utcnow(), image_sha256=item.sha256, case_ref=case_ref, patient_ref=patient_ref,
            model_name=model.name, model_version=model.version, model_sha256=model.sha256, backend=model.backend,
            probabilities={k: float(v) for k, v in p.probabilities.items()}, prediction=p.prediction,
            confidence=float(p.confidence), melanoma_probability=_finite(p.melanoma_probability),
            alert_threshold=_finite(model.alert_threshold), alert=bool(p.melanoma_alert), refer=bool(p.refer),
            refer_reason=p.refer_reason or "", warning=p.warning or "",
            image_file=keep_image(keep, item) if keep else None))
    session.add_all(rows)
    session.commit()
    return rows


def record_json(r: PredictionRecord) -> dict:
    review = None
    if r.review_decision:
        review = {"decision": r.review_decision, "final_diagnosis": r.final_diagnosis,
                  "reviewed_at": r.reviewed_at.isoformat() if r.reviewed_at else None}
    return {"record_id": r.id, "created_at": r.created_at.isoformat(), "image_sha256": r.image_sha256,
            "case_ref": r.case_ref, "patient_ref": r.patient_ref,
            "model": {"name": r.model_name, "version": r.model_version, "sha256": r.model_sha256},
            "backend": r.backend, "probabilities": r.probabilities, "prediction": r.prediction,
            "confidence": r.confidence, "melanoma_probability": r.melanoma_probability,
            "melanoma_alert": r.alert, "alert_threshold": r.alert_threshold, "refer": r.refer,
            "refer_reason": r.refer_reason, "warning": r.warning or "", "image_kept": r.image_file is not None,
            "review": review}


def list_records(session: Session, since: datetime | None = None, alert: bool | None = None,
                 reviewed: bool | None = None, case: str | None = None, order: str = "time", limit: int = 100,
                 offset: int = 0) -> tuple[list[PredictionRecord], int]:
    """Filtered records and the total number matching. order="priority": alerts first, then by melanoma
    probability (the worklist); "time": newest first."""
    query = select(PredictionRecord)
    if since is not None:
        query = query.where(PredictionRecord.created_at >= since)
    if alert is not None:
        query = query.where(PredictionRecord.alert.is_(alert))
    if reviewed is not None:
        column = PredictionRecord.review_decision
        query = query.where(column.is_not(None) if reviewed else column.is_(None))
    if case:
        query = query.where(PredictionRecord.case_ref.contains(case, autoescape=True))
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    if order == "priority":
        query = query.order_by(PredictionRecord.alert.desc(), PredictionRecord.melanoma_probability.desc().nulls_last(),
                               PredictionRecord.id.desc())
    else:
        query = query.order_by(PredictionRecord.id.desc())
    return list(session.scalars(query.limit(limit).offset(offset))), int(total or 0)


def add_review(session: Session, record: PredictionRecord, decision: str, final_diagnosis: str | None,
               reviewer: str | None, note: str | None) -> Review:
    review = Review(prediction_id=record.id, created_at=utcnow(), decision=decision,
                    final_diagnosis=final_diagnosis, reviewer=reviewer, note=note)
    record.review_decision, record.final_diagnosis, record.reviewed_at = decision, final_diagnosis, review.created_at
    session.add(review)
    session.commit()
    return review


def review_json(r: Review) -> dict:
    return {"review_id": r.id, "created_at": r.created_at.isoformat(), "decision": r.decision,
            "final_diagnosis": r.final_diagnosis, "reviewer": r.reviewer, "note": r.note}
