"""POST /v1/explain: the Grad-CAM overlay of one image as a PNG (needs the PyTorch model, loaded on first use)."""

from __future__ import annotations

import io
import threading
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from melanoma.serve.auth import require_token
from melanoma.serve.routers.predict import ERRORS, read_checked

router = APIRouter(prefix="/v1", tags=["explain"], dependencies=[Depends(require_token)])
_LOCK = threading.Lock()  # Grad-CAM hooks the model: one explanation at a time
DISPLAY = 320             # px: the overlay is computed at the model input size, shown larger


def _explainer(app):
    """The PyTorch predictor for Grad-CAM (imports torch on the first explanation only)."""
    if getattr(app.state, "explainer", None) is None:
        model = app.state.model
        if model.folder is None:
            raise HTTPException(409, "Grad-CAM needs the PyTorch model folder; this service runs a bare .onnx file")
        from melanoma.predict import Predictor

        app.state.explainer = Predictor.load(model.folder)
    return app.state.explainer


def _overlay_png(app, image, target: str) -> bytes:
    from PIL import Image

    from melanoma.explain import gradcam_overlays

    with _LOCK:
        predictor = _explainer(app)
        if target == "melanoma" and predictor.melanoma_index is not None:
            index = predictor.melanoma_index
        else:
            index = predictor.class_names.index(predictor.predict([image])[0].prediction)
        overlay = gradcam_overlays(predictor, image, {target: index})[target]
    buf = io.BytesIO()
    overlay.resize((DISPLAY, DISPLAY), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


@router.post("/explain", responses={**ERRORS, 200: {"content": {"image/png": {}}}}, response_class=Response)
async def explain(request: Request, file: Annotated[UploadFile, File(description="one lesion image")],
                  target: Annotated[Literal["melanoma", "predicted"], Query()] = "melanoma"):
    """Grad-CAM heatmap over the model's view of the image (where it looked for `target`), as a PNG."""
    checked = (await read_checked(request, [file]))[0]
    png = await run_in_threadpool(_overlay_png, request.app, checked.image, target)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
