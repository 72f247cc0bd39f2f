"""Training-set fingerprint: the content hashes of every image of every training source, stored in the model file.

`melanoma evaluate` must leave out the images a model was trained on. Without a fingerprint it re-reads the
training folders named in model.json, which only works on the machine that trained the model (and costs a scan of
every training image per evaluation). The fingerprint travels with the weights: three int64 tensors per image,
`fingerprint.pixel` (first 64 bits of the decoded-pixel hash), `fingerprint.phash` (perceptual hash) and
`fingerprint.isic` (the ISIC_nnnnnnn number in the file name, -1 when none), about 24 bytes per image. Every
readable image of the training folders is listed, including those training left out (validation, duplicates,
conflicts): none of them is independent of the model.

The matching rule is the same as `audit --against` (audit._overlap): identical pixels, phash within Hamming
distance `CROSS_SET_PHASH_DISTANCE`, or the same ISIC id.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from melanoma.audit import ISIC_ID, hamming_pairs
from melanoma.images import ScanEntry, phashes_as_uint64

PREFIX = "fingerprint."
NAMES = ("pixel", "phash", "isic")
FILE_NAME = "training_fingerprint.safetensors"  # in the run folder, picked up by finalize


def _pixel64(pixel_hash: str) -> int:
    """First 16 hex digits of the pixel hash as a signed int64 (tensors have no uint64)."""
    return int(np.array([int(pixel_hash[:16], 16)], dtype=np.uint64).view(np.int64)[0])


def isic_number(path) -> int:
    """The number of the first ISIC_nnnnnnn in a file name, or -1."""
    found = ISIC_ID.search(Path(path).stem)
    return int(found.group(0)[len("ISIC_"):]) if found else -1


def build(entries: list[ScanEntry]) -> dict[str, torch.Tensor]:
    """Fingerprint tensors (names prefixed `fingerprint.`) of the readable scanned images."""
    good = [e for e in entries if not e.error]
    return {
        PREFIX + "pixel": torch.tensor([_pixel64(e.pixel_hash) for e in good], dtype=torch.int64),
        PREFIX + "phash": torch.tensor([int(e.phash) for e in good], dtype=torch.int64),
        PREFIX + "isic": torch.tensor([isic_number(e.path) for e in good], dtype=torch.int64),
    }


def find(tensors: dict | None) -> dict[str, np.ndarray] | None:
    """The fingerprint arrays in a model's extra tensors (meta["extra"]), or None when the model has none."""
    out = {}
    for key, value in (tensors or {}).items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = np.asarray(value.numpy() if torch.is_tensor(value) else value, dtype=np.int64)
    return out if all(n in out for n in NAMES) else None


def save(tensors: dict[str, torch.Tensor], run) -> Path:
    """Write the fingerprint next to a run's config (finalize adds it to every model file of the run)."""
    from safetensors.torch import save_file

    path = Path(run) / FILE_NAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # DDP ranks write the same file: one temp name each
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return path


def load(run) -> dict[str, torch.Tensor]:
    """The run's fingerprint tensors, or {} (runs made before fingerprints, tests that skip it)."""
    from safetensors.torch import load_file

    path = Path(run) / FILE_NAME
    return load_file(str(path)) if path.is_file() else {}


def matches(fingerprint: dict[str, np.ndarray], samples, entries: list[ScanEntry], distance: int) -> dict[int, str]:
    """{index in `samples`: how it matched ("pixels", "phash", "isic-id", joined by "+")} for the images that
    occur in the fingerprinted training set."""
    pixels = set(fingerprint["pixel"].tolist())
    ids = set(fingerprint["isic"][fingerprint["isic"] >= 0].tolist())
    ok = [i for i, e in enumerate(entries) if not e.error]
    near = set()
    if ok and len(fingerprint["phash"]):
        rows, _, _ = hamming_pairs(phashes_as_uint64([entries[i] for i in ok]),
                                   fingerprint["phash"].view(np.uint64), max_distance=distance)
        near = {ok[r] for r in rows}
    found = {}
    for i, (sample, entry) in enumerate(zip(samples, entries)):
        exact = not entry.error and _pixel64(entry.pixel_hash) in pixels
        how = [name for name, hit in (("pixels", exact), ("phash", i in near and not exact),
                                      ("isic-id", isic_number(sample.path) in ids)) if hit]
        if how:
            found[i] = "+".join(how)
    return found


def summarize(found: dict[int, str]) -> dict:
    """Counts by matching rule, for the evaluation report."""
    return dict(Counter(found.values()).most_common())
