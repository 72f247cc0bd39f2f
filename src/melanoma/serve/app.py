"""The app factory: `create_app(settings)` loads the model, migrates the database and wires the routers and UI."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from melanoma import __version__
from melanoma.serve.db import make_engine, migrate, session_factory
from melanoma.serve.inference import InferenceWorkers, LoadedModel, load_model
from melanoma.serve.middleware import AccessLogAndHeaders, BodyLimit
from melanoma.serve.routers import audit, calibration, explain, model, monitor, predict
from melanoma.serve.settings import Settings
from melanoma.serve.webhook import AlertSender

STATIC = Path(__file__).resolve().parent / "static"
DOCS_ASSETS = "/api-docs-assets"
DESCRIPTION = ("Flags dermoscopic lesion images that need a dermatologist's second look. Every prediction is "
               "recorded in the audit trail. **Decision support, not a diagnosis.**")


def default_threads(settings: Settings) -> int:
    """ONNX intra-op threads per inference worker: the cores shared out between the workers."""
    return settings.onnx_threads or max(1, (os.cpu_count() or 1) // settings.workers)


def create_app(settings: Settings, loaded: LoadedModel | None = None) -> FastAPI:
    """Build the service. Raises MelanomaError (one line) for a bad model, database URL or unreachable database."""
    engine = make_engine(settings.db)
    revision = migrate(engine)
    loaded = loaded or load_model(settings.model, settings.backend, settings.state_dir, default_threads(settings),
                                  settings.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.workers = InferenceWorkers(loaded.predictor, settings.workers, settings.max_batch)
        app.state.alerts = (AlertSender(settings.alert_webhook, settings.webhook_queue, settings.webhook_retries)
                            if settings.alert_webhook else None)
        yield
        app.state.workers.close()
        if app.state.alerts is not None:
            app.state.alerts.close()
        engine.dispose()

    # /docs (Swagger UI) and /redoc load their scripts from the installed package: FastAPI's own pages fetch them
    # from a CDN, which a clinic network without internet access cannot reach (the pages stayed blank)
    app = FastAPIOffline(title="melanoma clinic service", version=__version__, description=DESCRIPTION,
                         lifespan=lifespan, static_url=DOCS_ASSETS)
    app.state.settings, app.state.model, app.state.engine = settings, loaded, engine
    app.state.sessions, app.state.db_revision, app.state.explainer = session_factory(engine), revision, None
    for router in (predict.router, explain.router, audit.router, model.router, calibration.router, monitor.router):
        app.include_router(router)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="ui")  # last: the API routes win
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(AccessLogAndHeaders)
    return app
