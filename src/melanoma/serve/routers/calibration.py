"""Site calibration: GET /v1/calibration (current alert on reviewed cases + proposed threshold) and
POST /v1/calibration/apply (write a calibrated COPY of the model; only with confirm=true)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from melanoma.errors import MelanomaError
from melanoma.serve import calibration
from melanoma.serve.auth import require_token
from melanoma.serve.db import get_session

router = APIRouter(prefix="/v1", tags=["calibration"], dependencies=[Depends(require_token)])
SessionDep = Annotated[Session, Depends(get_session)]
Target = Annotated[float, Query(gt=0, le=1, description="melanoma sensitivity the new threshold must keep")]


class ApplyIn(BaseModel):
    target_sensitivity: float = Field(0.9, gt=0, le=1)
    confirm: bool = Field(False, description="must be true: writes a new model folder")


@router.get("/calibration")
async def calibration_status(request: Request, session: SessionDep, target_sensitivity: Target = 0.9):
    """Sensitivity/specificity of the current alert on reviewed cases, and the threshold
    `melanoma threshold --predictions` would choose from them (null with a reason when there are too few)."""
    model = request.app.state.model
    cases = await run_in_threadpool(calibration.reviewed_cases, session, model)
    current = calibration.operating_point(cases, model, model.alert_threshold)
    proposed, reason = None, None
    try:
        proposed = await run_in_threadpool(calibration.preview, cases, model, target_sensitivity)
    except MelanomaError as exc:
        reason = str(exc)
    return {"reviewed_cases": len(cases), "model": {"name": model.name, "version": model.version},
            "current": current, "proposed": proposed, "reason": reason}


@router.post("/calibration/apply")
async def calibration_apply(body: ApplyIn, request: Request, session: SessionDep):
    """Write `<state-dir>/models/<model>-site-<time>/` with the new threshold. The served model is not changed:
    restart with --model on the new folder to use it."""
    if not body.confirm:
        raise HTTPException(400, "set confirm=true to write a calibrated copy of the model")
    app = request.app
    cases = await run_in_threadpool(calibration.reviewed_cases, session, app.state.model)
    try:
        result = await run_in_threadpool(calibration.apply, cases, app.state.model, body.target_sensitivity,
                                         app.state.settings.state_dir / "models")
    except MelanomaError as exc:
        raise HTTPException(409, str(exc)) from None
    return result
