"""The audit trail and the worklist: GET /v1/audit, GET /v1/cases/{id}, its kept image, and reviews."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from melanoma.serve import records
from melanoma.serve.auth import require_token
from melanoma.serve.db import PredictionRecord, get_session
from melanoma.serve.uploads import MEDIA_TYPES

router = APIRouter(prefix="/v1", tags=["audit"], dependencies=[Depends(require_token)])
SessionDep = Annotated[Session, Depends(get_session)]
OTHER = "other"  # final diagnosis outside the model's classes


class ReviewIn(BaseModel):
    decision: Literal["agree", "disagree"]
    final_diagnosis: str | None = Field(None, max_length=100,
                                        description="one of the model's class names, or 'other'; omit if unknown")
    reviewer: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=2000)


@router.get("/audit")
def audit(session: SessionDep,
          since: Annotated[datetime | None, Query(description="ISO 8601 time; records at or after it")] = None,
          alert: Annotated[bool | None, Query(description="only alerts (true) or only non-alerts (false)")] = None,
          reviewed: Annotated[bool | None, Query(description="only reviewed (true) or only unreviewed (false)")] = None,
          case: Annotated[str | None, Query(max_length=200, description="case reference contains this")] = None,
          order: Annotated[Literal["time", "priority"], Query(
              description="time: newest first; priority: alerts first, then by melanoma probability")] = "time",
          limit: Annotated[int, Query(ge=1, le=1000)] = 100,
          offset: Annotated[int, Query(ge=0)] = 0):
    """List prediction records (the audit trail; with order=priority, the worklist)."""
    rows, total = records.list_records(session, since, alert, reviewed, case, order, limit, offset)
    return {"total": total, "limit": limit, "offset": offset, "records": [records.record_json(r) for r in rows]}


def _record(session: Session, record_id: int) -> PredictionRecord:
    row = session.get(PredictionRecord, record_id)
    if row is None:
        raise HTTPException(404, f"no record {record_id}")
    return row


@router.get("/cases/{record_id}")
def case(record_id: int, session: SessionDep):
    """One record with every review of it."""
    row = _record(session, record_id)
    return {**records.record_json(row), "reviews": [records.review_json(r) for r in row.reviews]}


@router.get("/cases/{record_id}/image", response_class=FileResponse)
def case_image(record_id: int, request: Request, session: SessionDep):
    """The uploaded image, when the service keeps images (--keep-images)."""
    row = _record(session, record_id)
    keep = request.app.state.settings.keep_images
    if keep is None or row.image_file is None or not (keep / row.image_file).is_file():
        raise HTTPException(404, f"the image of record {record_id} was not kept (start with --keep-images DIR)")
    suffix = "." + row.image_file.rsplit(".", 1)[-1]
    return FileResponse(keep / row.image_file, media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"))


@router.post("/cases/{record_id}/review")
def review(record_id: int, body: ReviewIn, request: Request, session: SessionDep):
    """Store a dermatologist's decision (agree / disagree with the alert and prediction, final diagnosis if known).
    Reviews are appended; the newest is shown in the worklist."""
    row = _record(session, record_id)
    classes = request.app.state.model.meta["class_names"]
    diagnosis = (body.final_diagnosis or "").strip() or None
    if diagnosis is not None and diagnosis not in classes and diagnosis != OTHER:
        raise HTTPException(422, f"final_diagnosis {diagnosis!r} is not one of the model's classes "
                                 f"({', '.join(classes)}) nor '{OTHER}'")
    added = records.add_review(session, row, body.decision, diagnosis, body.reviewer, body.note)
    return {**records.record_json(row), "review_id": added.id}
