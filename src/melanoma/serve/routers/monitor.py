"""Site monitor: GET /v1/monitor (how the served alert behaves on this site's recent images, and the threshold adapted
to them; no diagnoses needed) and POST /v1/monitor/apply (write that threshold into a COPY of the model; only with
confirm=true)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from melanoma.errors import MelanomaError
from melanoma.serve import monitor
from melanoma.serve.auth import require_token
from melanoma.serve.db import get_session

router = APIRouter(prefix="/v1", tags=["monitor"], dependencies=[Depends(require_token)])
SessionDep = Annotated[Session, Depends(get_session)]
Last = Annotated[int, Query(ge=1, le=100_000, description="the newest N images")]
Prevalence = Annotated[float | None, Query(gt=0, lt=1, description="this site's melanoma prevalence, for the "
                                                                   "adapted threshold (default: --site-prevalence)")]


class ApplyIn(BaseModel):
    prevalence: float | None = Field(None, gt=0, lt=1, description="this site's melanoma prevalence (default: "
                                                                    "--site-prevalence)")
    last: int = Field(500, ge=1, le=100_000, description="choose on the newest N images")
    confirm: bool = Field(False, description="must be true: writes a new model folder")


@router.get("/monitor")
async def site_monitor(request: Request, session: SessionDep,
                       last: Last = 500, prevalence: Prevalence = None,
                       max_prevalence: Annotated[float, Query(
                           gt=0, le=1, description="the highest melanoma prevalence this site may have")] = 0.3):
    """Shares of this site's newest images (predicted by the served model at its threshold) alerted, referred and
    warned; the range of alerted shares the validation images predict for a melanoma prevalence up to
    `max_prevalence`, the prevalence the observed share would need, and `status`: ok, check (see `findings`),
    too few, or unknown (the model card holds no validation operating point). `proposed`: the threshold that would
    alert the share the validation operating points predict at the stated `prevalence` (null under 50 images)."""
    model = request.app.state.model
    rows = await run_in_threadpool(monitor.recent_records, session, model, last)
    report = monitor.report(rows, model.meta, max_prevalence)
    prevalence = prevalence or request.app.state.settings.site_prevalence
    proposed = monitor.proposal(rows, model.meta, prevalence) if report["status"] != "too few" else None
    return {"model": {"name": model.name, "version": model.version, "alert_threshold": model.alert_threshold},
            "last": last, **report, "proposed": proposed}


@router.post("/monitor/apply")
async def site_monitor_apply(body: ApplyIn, request: Request, session: SessionDep):
    """Write `<state-dir>/models/<model>-share-<time>/` with the threshold adapted to the newest `last` images at the
    stated prevalence. The served model is not changed: restart with --model on the new folder to use it."""
    if not body.confirm:
        raise HTTPException(400, "set confirm=true to write a copy of the model with the adapted threshold")
    app = request.app
    rows = await run_in_threadpool(monitor.recent_records, session, app.state.model, body.last)
    try:
        return await run_in_threadpool(monitor.apply, rows, app.state.model,
                                       body.prevalence or app.state.settings.site_prevalence,
                                       app.state.settings.state_dir / "models")
    except MelanomaError as exc:
        raise HTTPException(409, str(exc)) from None
