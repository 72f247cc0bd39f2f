"""Every setting of the service in one typed object (pydantic), filled from the command line."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MB = 1024 * 1024


class Settings(BaseModel):
    """What `melanoma serve` was started with; `app.state.settings` in the running app."""

    model: Path = Path("models/default")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="inference threads sharing one loaded model")
    db: str = "sqlite:///.melanoma/audit.sqlite"
    alert_webhook: str | None = None
    token: str | None = Field(None, repr=False)  # read from --token-file; never logged
    keep_images: Path | None = None
    backend: Literal["onnx", "torch"] = "onnx"
    device: str | None = None            # torch backend only: "cuda", "cpu" (default: cuda when available)
    state_dir: Path = Path(".melanoma")  # ONNX cache when the model folder is read-only, calibrated model copies
    max_upload_bytes: int = Field(20 * MB, ge=1)
    max_files: int = Field(16, ge=1)
    max_batch: int = Field(32, ge=1, description="images per model call when requests are batched")
    onnx_threads: int | None = None      # intra-op threads per inference worker (default: cores / workers)
    public_url: str | None = None        # base of the case links sent by the webhook (default http://host:port)
    webhook_queue: int = Field(1000, ge=1)
    webhook_retries: int = Field(5, ge=0)
    site_prevalence: float = Field(0.1, gt=0, lt=1, description="this site's share of melanomas among its lesions: "
                                   "the site monitor's threshold adapted without diagnoses starts from it")

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (self.public_url or f"http://{host}:{self.port}").rstrip("/")

    @property
    def max_request_bytes(self) -> int:
        """Whole request body limit: every file at the limit plus room for the multipart framing and fields."""
        return self.max_files * self.max_upload_bytes + MB

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
