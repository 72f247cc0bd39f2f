"""`melanoma serve`: argparse definition and runner (heavy modules are imported inside the runner)."""

from __future__ import annotations

import sys
from pathlib import Path

import melanoma

DEFAULT_MODEL = Path(melanoma.__file__).resolve().parents[2] / "models" / "default"


def _numbers():
    from melanoma.cli import PREVALENCE, POSITIVE_INT, _number  # the command line's range-checked argparse types

    return POSITIVE_INT, _number(int, 1, 65535), _number(float, 0.0, 1024.0, low_open=True), PREVALENCE


def add_serve(sub) -> None:
    positive_int, port, megabytes, prevalence = _numbers()
    help_ = ("Serve the clinic service: browser UI at /, REST API under /v1 (OpenAPI docs at /docs), audit trail "
             "in a database, melanoma alerts to a webhook.")
    p = sub.add_parser("serve", help=help_, description=f"{help_}\n\nexample:\n  melanoma serve --model "
                       "models/default --db sqlite:///.melanoma/audit.sqlite",
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (model.json + model.safetensors) or "
                   ".onnx file (default: the shipped models/default)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="TCP port to listen on, 1-65535 (default 8000)")
    p.add_argument("--workers", type=positive_int, default=1, help="inference threads sharing the loaded model (default 1; "
                   "each batches the requests waiting)")
    p.add_argument("--db", default="sqlite:///.melanoma/audit.sqlite",
                   help="database URL: sqlite:///PATH (default .melanoma/audit.sqlite) or postgresql://USER:PW@HOST/DB")
    p.add_argument("--alert-webhook", metavar="URL", help="POST every melanoma alert as JSON to this URL")
    p.add_argument("--token-file", help="file holding a bearer token that every /v1 call must send")
    p.add_argument("--keep-images", metavar="DIR", help="also store the uploaded images (named by SHA-256) in DIR")
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                   help="onnx: ONNX Runtime on CPU, exported on first start and cached (default); torch: PyTorch, "
                        "on the GPU when there is one")
    p.add_argument("--device", help="--backend torch only: cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--max-upload-mb", type=megabytes, default=20.0, help="largest accepted image file (default 20)")
    p.add_argument("--max-files", type=positive_int, default=16, help="most images per request (default 16)")
    p.add_argument("--state-dir", default=".melanoma", help="ONNX cache when the model folder is read-only, and "
                   "calibrated model copies (default .melanoma)")
    p.add_argument("--public-url", help="base URL of the case links in alerts (default http://HOST:PORT)")
    p.add_argument("--site-prevalence", type=prevalence, default=0.1,
                   help="this site's share of melanomas among its lesions, (0, 1): about 0.1 in a referral clinic, "
                        "0.01-0.02 in screening; the site monitor adapts the alert threshold to it without "
                        "diagnoses (default 0.1)")
    p.set_defaults(func=run_serve)


def read_token(path: str) -> str:
    from melanoma.errors import ConfigError

    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read ({exc.strerror})") from None
    if len(token) < 16 or any(ch.isspace() for ch in token):
        raise ConfigError(f"--token-file {path}: the token must be one line of at least 16 characters, no spaces")
    return token


def build_settings(args):
    from pydantic import ValidationError

    from melanoma.errors import ConfigError
    from melanoma.serve.settings import MB, Settings

    try:
        return Settings(model=args.model, host=args.host, port=args.port, workers=args.workers, db=args.db,
                        alert_webhook=args.alert_webhook, keep_images=args.keep_images, backend=args.backend,
                        device=args.device, token=read_token(args.token_file) if args.token_file else None,
                        max_upload_bytes=int(args.max_upload_mb * MB), max_files=args.max_files,
                        state_dir=args.state_dir, public_url=args.public_url,
                        site_prevalence=args.site_prevalence)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"--{'-'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}") from None


def run_serve(args) -> int:
    import logging

    import uvicorn

    from melanoma.serve.app import create_app

    settings = build_settings(args)
    if not settings.is_loopback() and not settings.token:
        print(f"warning: serving on {settings.host} without --token-file: anyone who can reach this address can "
              "upload images and read the audit trail", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = create_app(settings)
    m = app.state.model
    if m.backend == "onnx":
        from melanoma.serve.inference import limit_math_threads

        limit_math_threads()
    print(f"melanoma serve: model {m.name} {m.version} ({m.backend}, {m.device}), database "
          f"{app.state.engine.url.render_as_string(hide_password=True)}")
    print(f"open {settings.base_url}/ in a browser (API docs: {settings.base_url}/docs)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                timeout_graceful_shutdown=10)
    return 0
