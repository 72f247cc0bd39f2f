"""POST /v1/predict: one or more images -> probabilities, alert, referral and the audit record id of each."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from melanoma.serve import records, uploads
from melanoma.serve.auth import require_token

router = APIRouter(prefix="/v1", tags=["predict"], dependencies=[Depends(require_token)])

ERRORS = {413: {"description": "a file over the size limit, or too many files"},
          415: {"description": "a file that is not an image"}, 422: {"description": "a corrupt image"},
          401: {"description": "missing or wrong bearer token (only with --token-file)"}}


async def read_checked(request: Request, files: list[UploadFile]) -> list[uploads.CheckedImage]:
    """Every upload read (at most limit + 1 bytes each) and decoded off the event loop, or the first error."""
    settings = request.app.state.settings
    if len(files) > settings.max_files:
        raise HTTPException(413, f"{len(files)} files in one request; the limit is {settings.max_files}")
    checked = []
    for index, upload in enumerate(files):
        data = await upload.read(settings.max_upload_bytes + 1)
        checked.append(await run_in_threadpool(uploads.check, index, upload.filename, data,
                                               settings.max_upload_bytes))
    return checked


def _alert_payload(settings, model, row) -> dict:
    return {"event": "melanoma_alert", "record_id": row.id, "melanoma_probability": row.melanoma_probability,
            "alert_threshold": row.alert_threshold, "refer": row.refer, "created_at": row.created_at.isoformat(),
            "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
            "case_url": f"{settings.base_url}/#/case/{row.id}",
            "record_url": f"{settings.base_url}/v1/cases/{row.id}"}


@router.post("/predict", responses=ERRORS)
async def predict(request: Request,
                  files: Annotated[list[UploadFile], File(description="one or more lesion images (JPEG, PNG...)")],
                  case_ref: Annotated[str | None, Form(max_length=200, description="your case reference")] = None,
                  patient_ref: Annotated[str | None, Form(max_length=200, description="patient reference")] = None):
    """Predict every image; each is recorded in the audit trail. Decision support, not a diagnosis."""
    app = request.app
    model = app.state.model
    checked = await read_checked(request, files)
    predictions = await asyncio.wrap_future(app.state.workers.submit([c.image for c in checked]))

    def save():
        with app.state.sessions() as session:
            rows = records.add_predictions(session, model, checked, predictions, case_ref or None,
                                           patient_ref or None, app.state.settings.keep_images)
            return [records.record_json(r) for r in rows], rows

    results, rows = await run_in_threadpool(save)
    if app.state.alerts is not None:
        for row in rows:
            if row.alert:
                app.state.alerts.send(_alert_payload(app.state.settings, model, row))
    for result, item, index in zip(results, checked, range(len(checked))):
        result.update(file_index=index, filename=item.filename)
    return {"model": {"name": model.name, "version": model.version, "backend": model.backend},
            "disclaimer": "decision support, not a diagnosis", "results": results}
