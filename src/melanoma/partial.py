"""Partial results of long predictions, kept so that a killed command resumes where it stopped.

`melanoma evaluate`, `threshold --detail-levels`, `referral` and `ensemble` predict hundreds to thousands of images
before they write anything: killed after 14 of 15 minutes, they used to start again from the first image. Now their
images are predicted in chunks of CHUNK; each finished chunk is saved (atomically; plain arrays, no pickle) under
`cache_root()/partial/KEY/`, and the same command run again loads the saved chunks instead of predicting them.

KEY is a SHA-256 over everything the predictions depend on: the caller's purpose and settings (the model's
model.json, which holds its weights' SHA-256, the preprocessing, TTA, backend) and every image's path, size and
content digest -- so a re-trained model, other settings or an edited image never reuse old results, while a copy of
the same files with new modification times (a data folder provisioned again, a restored backup) still does. The folder
is removed once the command has written its outputs; a folder left by a job nobody resumes is only a cache,
removed after STALE_DAYS untouched (`rm -r ~/.cache/melanoma/partial` is always safe).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 256  # images per saved chunk: ~1 min of CPU prediction, the most a kill loses
STALE_DAYS = 30  # a job's folder untouched this long is removed when any job runs: nobody is resuming it


def cache_root() -> Path:
    """$MELANOMA_CACHE_DIR, else ~/.cache/melanoma: measured fast paths and partial results."""
    return Path(os.environ.get("MELANOMA_CACHE_DIR") or Path.home() / ".cache" / "melanoma")


def job_key(purpose: str, settings: dict, items: list[str]) -> str:
    """Hex key of one job: its purpose, settings (JSON; other objects by str) and each file's path and stamp."""
    digest = hashlib.sha256(json.dumps([purpose, settings], sort_keys=True, default=str).encode())
    for item in items:
        digest.update(f"\0{item}\0{file_stamp(item)}".encode())
    return digest.hexdigest()[:32]


def file_stamp(path) -> str:
    """"size:SHA-256" of a file's bytes ("missing" if it cannot be read): changes whenever its content does, not
    when only its modification time does. Modification times were the stamp until session 52: every session's
    re-provisioned data folder then invalidated a 70-minute calibration's saved chunks. Hashing HAM10000's 10,015
    JPEGs (4 KB each) took 0.3 s (session 52, 2 cores, a training run beside it), against minutes of prediction."""
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
            return f"{os.fstat(handle.fileno()).st_size}:{digest}"
    except OSError:
        return "missing"


def prune_stale(root: Path, days: float = STALE_DAYS) -> None:
    """Remove the job folders under `root` not written to for `days` (a failed or abandoned job's chunks)."""
    if not root.is_dir():
        return
    cutoff = time.time() - days * 86400
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # another process removed it first
            pass


class PartialJob:
    """One resumable job over `items` (image paths): `run(compute)` computes or reloads each chunk, `finish()`
    removes the saved chunks once the command's outputs are written."""

    def __init__(self, purpose: str, settings: dict, items, chunk: int | None = None, log=None):
        self.items = [str(item) for item in items]
        self.purpose, self.chunk = purpose, max(1, int(chunk or CHUNK))
        self.folder = cache_root() / "partial" / job_key(purpose, settings, self.items)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))  # stdout may be --json

    def run(self, compute: Callable[[list[str]], dict[str, np.ndarray]], progress: bool = False
            ) -> list[dict[str, np.ndarray]]:
        """compute(chunk of items) -> named arrays, for every chunk in order; saved chunks are loaded instead."""
        from tqdm import tqdm

        prune_stale(self.folder.parent)
        chunks = [self.items[i:i + self.chunk] for i in range(0, len(self.items), self.chunk)]
        saved = [self._load(i) for i in range(len(chunks))]
        reused = sum(len(c) for c, s in zip(chunks, saved) if s is not None)
        if reused:
            self.log(f"resuming {self.purpose}: {reused} of {len(self.items)} images were predicted by an "
                     f"interrupted run ({self.folder})")
        parts = []
        with tqdm(total=len(self.items), initial=reused, unit="img", file=sys.stderr, disable=not progress) as bar:
            for index, (chunk, arrays) in enumerate(zip(chunks, saved)):
                if arrays is None:
                    arrays = compute(chunk)
                    self._save(index, arrays)
                    bar.update(len(chunk))
                parts.append(arrays)
        return parts

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:05d}.npz"

    def _load(self, index: int) -> dict[str, np.ndarray] | None:
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError):  # unreadable (a disk problem): predicted again
            return None

    def _save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        from melanoma.artifacts import atomic_write_bytes

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._path(index), buffer.getvalue())  # makes the folder; a kill leaves no half chunk
