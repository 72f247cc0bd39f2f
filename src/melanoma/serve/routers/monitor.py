"""Site monitor: GET /v1/monitor (how the served alert behaves on this site's recent images; no diagnoses needed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from melanoma.serve import monitor
from melanoma.serve.auth import require_token
from melanoma.serve.db import get_session

router = APIRouter(prefix="/v1", tags=["monitor"], dependencies=[Depends(require_token)])
SessionDep = Annotated[Session, Depends(get_session)]


@router.get("/monitor")
async def site_monitor(request: Request, session: SessionDep,
                       last: Annotated[int, Query(ge=1, le=100_000, description="the newest N images")] = 500,
                       max_prevalence: Annotated[float, Query(
                           gt=0, le=1, description="the highest melanoma prevalence this site may have")] = 0.3):
    """Shares of this site's newest images (predicted by the served model at its threshold) alerted, referred and
    warned; the range of alerted shares the validation images predict for a melanoma prevalence up to
    `max_prevalence`, the prevalence the observed share would need, and `status`: ok, check (see `findings`),
    too few, or unknown (the model card holds no validation operating point)."""
    model = request.app.state.model
    rows = await run_in_threadpool(monitor.recent_records, session, model, last)
    report = monitor.report(rows, model.meta, max_prevalence)
    return {"model": {"name": model.name, "version": model.version, "alert_threshold": model.alert_threshold},
            "last": last, **report}
