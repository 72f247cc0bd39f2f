"""Model loading for the service and the batching inference worker.

Default backend: ONNX Runtime on CPU. The ONNX file is exported once from the model folder (in a subprocess,
`melanoma export`, which checks parity with PyTorch) and cached beside the model as `model-<key>.onnx`, where the
key hashes model.json and model.safetensors, so a changed model is never served from a stale export. When the model
folder is read-only the cache goes under `<state_dir>/onnx-cache/`. The server process itself then never needs
torch for prediction. `--backend torch` serves the PyTorch model (GPU when available).

Inference runs in worker threads, off the event loop: each worker takes every request already waiting (up to
`max_batch` images) and runs them as one model call, so batches grow with the load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from melanoma.errors import ModelError

log = logging.getLogger("melanoma.serve")
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def model_folder(path: Path) -> Path | None:
    """The model folder (model.json + model.safetensors) named by `path`, or None for a bare .onnx file."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return None
    folder = path if path.is_dir() else path.parent
    if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelError(f"{path}: not a model folder (needs model.json and model.safetensors) nor an .onnx file")
    return folder


def _export_key(folder: Path, weights_sha256: str) -> str:
    digest = hashlib.sha256((folder / "model.json").read_bytes())
    digest.update(weights_sha256.encode())
    return digest.hexdigest()[:16]


def cached_onnx(folder: Path, weights_sha256: str, state_dir: Path) -> Path:
    """Path of the parity-checked ONNX export of `folder`, exporting it first when not cached yet."""
    name = f"model-{_export_key(folder, weights_sha256)}.onnx"
    beside = folder / name
    fallback = Path(state_dir) / "onnx-cache" / f"{folder.resolve().name}-{name}"
    for candidate in (beside, fallback):
        if candidate.is_file():
            return candidate
    target = beside if os.access(folder, os.W_OK) else fallback
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"exporting {folder} to ONNX (first start with this model; about a minute) -> {target}", flush=True)
    # A subprocess: the export needs torch, the serving process should not carry it.
    done = subprocess.run([sys.executable, "-m", "melanoma", "export", str(folder), "--out", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not target.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise ModelError(f"{folder}: ONNX export failed: {lines[-1][:300]}")
    return target


class _DeviceTorchBackend:
    """PyTorch model on a chosen device (the shipped torch backend runs on CPU only)."""

    kind = "pytorch"

    def __init__(self, model, device: str, layers=()):
        self.model, self.device, self.layers = model.to(device).eval(), device, list(layers)

    def __call__(self, x):
        import torch

        from melanoma.referral import embed

        with torch.inference_mode():
            features, logits = embed(self.model, torch.as_tensor(x).to(self.device), self.layers)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()


@dataclass
class LoadedModel:
    """The predictor plus what the audit trail records about the model."""

    predictor: object             # melanoma.predict.Predictor
    meta: dict
    name: str
    version: str
    sha256: str                   # of model.safetensors (or of the .onnx file when served without a folder)
    backend: str                  # "onnx" | "torch"
    device: str
    folder: Path | None
    onnx_path: Path | None = None
    card: dict = field(default_factory=dict)

    @property
    def alert_threshold(self) -> float | None:
        return (self.meta.get("thresholds") or {}).get("melanoma_alert")

    def require_folder(self, what: str) -> Path:
        """The model's folder; ModelError naming `what` when the service runs on a bare .onnx file."""
        if self.folder is None:
            raise ModelError(f"{what} needs the model folder (model.json + model.safetensors); this service was "
                             "started on a bare .onnx file")
        return self.folder

    def site_copy_path(self, out_root: Path, kind: str) -> Path:
        """`<out_root>/<name>-<kind>-<UTC time>[-N]`, a new folder name for a site's copy of this model (out_root is
        created; -2, -3, ... when copies are written within one second)."""
        Path(out_root).mkdir(parents=True, exist_ok=True)
        base = Path(out_root) / f"{self.name}-{kind}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        path, n = base, 1
        while path.exists():
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        return path


def _resolve_device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_math_threads() -> None:
    """One thread for numpy's BLAS and OpenMP (and torch, if loaded) in the whole process (the server's, never a
    library user's); ONNX Runtime keeps its own pool. Trap: the referral's small matrix products with multi-threaded OpenBLAS took 340 ms per image on two
    busy cores instead of 25 ms (measured, single-image predict)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def load_model(path: Path, backend: str, state_dir: Path, threads: int | None, device: str | None = None
               ) -> LoadedModel:
    """Load the model the service will use (ModelError, one line, when it cannot)."""
    from melanoma.predict import Predictor

    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model folder or file")
    folder = model_folder(path)
    weights = folder / "model.safetensors" if folder else path
    sha = file_sha256(weights)
    onnx_path = None
    if backend == "torch":
        if folder is None:
            raise ModelError(f"{path}: --backend torch needs the model folder (model.json + model.safetensors)")
        predictor = Predictor.load(folder)
        device = _resolve_device(device)
        predictor.backend = _DeviceTorchBackend(predictor.backend.model, device, predictor.backend.layers)
    else:
        onnx_path = cached_onnx(folder, sha, state_dir) if folder else path
        # spinning off: the service shares the cores with the web server and the database
        predictor = Predictor.load(onnx_path, threads=threads, spinning=False)
        device = "cpu"
    meta = dict(predictor.meta)
    card = json.loads((folder / "model.json").read_text()) if folder else {
        k: v for k, v in meta.items() if k != "extra"}
    name = folder.resolve().name if folder else path.stem
    # model.json counts too: a re-thresholded or detail-calibrated model alerts differently with the same weights
    key = _export_key(folder, sha) if folder else sha
    version = str(meta.get("version") or f"{meta.get('package_version', '0')}+{key[:12]}")
    return LoadedModel(predictor, meta, name, version, sha, backend, device, folder, onnx_path, card)


class _Job:
    __slots__ = ("images", "future")

    def __init__(self, images):
        self.images, self.future = images, Future()


class InferenceWorkers:
    """`workers` threads that batch whatever requests are waiting into one model call each."""

    def __init__(self, predictor, workers: int = 1, max_batch: int = 32):
        self.predictor, self.max_batch = predictor, max_batch
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.batches = 0
        self.images = 0
        self.threads = [threading.Thread(target=self._loop, name=f"inference-{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, images: list) -> Future:
        """Future of the list of Prediction objects for `images` (PIL images, already validated)."""
        job = _Job(images)
        self.queue.put(job)
        return job.future

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=10)

    def _take_batch(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` plus the jobs already waiting (no timer: batches only form when requests pile up)."""
        jobs, count = [first], len(first.images)
        while count < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.images)
        return jobs, False

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, stop = self._take_batch(first)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        images = [image for job in jobs for image in job.images]
        try:
            predictions = self.predictor.predict(images, batch_size=len(images))
        except Exception:  # noqa: BLE001 - one bad job must not fail the others: run them one by one
            if len(jobs) > 1:
                for job in jobs:
                    self._run([job])
                return
            log.exception("inference failed")
            jobs[0].future.set_exception(RuntimeError("inference failed"))
            return
        self.batches += 1
        self.images += len(images)
        start = 0
        for job in jobs:
            job.future.set_result(predictions[start:start + len(job.images)])
            start += len(job.images)
