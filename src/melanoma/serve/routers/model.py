"""GET /v1/model (the model card: model.json) and GET /healthz."""

from __future__ import annotations

import sys

from fastapi import APIRouter, Depends, Request

from melanoma import __version__
from melanoma.serve.auth import require_token

router = APIRouter(tags=["model"])


@router.get("/v1/model", dependencies=[Depends(require_token)])
def model_card(request: Request):
    """The served model's model.json plus how it is served."""
    m = request.app.state.model
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "backend": m.backend, "device": m.device,
            "alert_threshold": m.alert_threshold, "tta_views": m.predictor.tta_views,
            "class_names": m.meta["class_names"],
            "melanoma_class": m.meta.get("melanoma_class"), "model_json": m.card}


@router.get("/healthz")
def healthz(request: Request):
    """Liveness and readiness: model loaded, database reachable, queue sizes (no authentication)."""
    from sqlalchemy import text

    state = request.app.state
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health check
        database = f"error: {type(exc).__name__}"
    workers = state.workers
    return {"status": "ok" if database == "ok" else "degraded", "version": __version__,
            "model": {"name": state.model.name, "version": state.model.version, "backend": state.model.backend},
            "database": database, "schema_revision": state.db_revision,
            "inference": {"workers": len(workers.threads), "queued": workers.queue.qsize(),
                          "batches": workers.batches, "images": workers.images},
            "alerts": state.alerts.stats() if state.alerts is not None else None,
            "torch_imported": "torch" in sys.modules}
