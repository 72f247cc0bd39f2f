"""Training-set fingerprint: the content hashes of every image of every training source, stored in the model file.

`melanoma evaluate` must leave out the images a model was trained on. Without a fingerprint it re-reads the
training folders named in model.json, which only works on the machine that trained the model (and costs a scan of
every training image per evaluation). The fingerprint travels with the weights: three int64 tensors per image,
`fingerprint.pixel` (first 64 bits of the decoded-pixel hash), `fingerprint.phash` (perceptual hash) and
`fingerprint.isic` (the ISIC_nnnnnnn number in the file name, -1 when none), about 24 bytes per image. Every
readable image of the training folders is listed, including those training left out (validation, duplicates,
conflicts): none of them is independent of the model.

A model without a stored fingerprint is checked against its training folders instead: `arrays` builds the same
three arrays from a scan. Torch is imported only where tensors are written (`build`, `save`, `load`).

The matching rule is the same as `audit --against` (audit._overlap): identical pixels, phash within Hamming
distance `CROSS_SET_PHASH_DISTANCE`, or the same ISIC id; `matches` also compares the phash of the evaluated image
turned by each of the 8 dihedral transforms (rotations by 90 degrees, flips), so rotated or flipped copies are found
(resized copies already match: phash works on a 32x32 thumbnail).
"""

from __future__ import annotations

import os
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from melanoma.audit import ISIC_ID, hamming_pairs
from melanoma.images import ScanEntry, load_image, phash_int64

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


def arrays(entries: list[ScanEntry]) -> dict[str, np.ndarray]:
    """Fingerprint arrays {pixel, phash, isic} (int64) of the readable scanned images."""
    good = [e for e in entries if not e.error]
    return {"pixel": np.array([_pixel64(e.pixel_hash) for e in good], dtype=np.int64),
            "phash": np.array([int(e.phash) for e in good], dtype=np.int64),
            "isic": np.array([isic_number(e.path) for e in good], dtype=np.int64)}


def combine(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One fingerprint holding every image of `parts` (e.g. the stored one plus a folder scanned now)."""
    return {n: np.concatenate([p[n] for p in parts]) if parts else np.empty(0, np.int64) for n in NAMES}


def build(entries: list[ScanEntry]) -> dict:
    """Fingerprint tensors (names prefixed `fingerprint.`) of the readable scanned images."""
    import torch

    return {PREFIX + name: torch.from_numpy(values) for name, values in arrays(entries).items()}


def find(tensors: dict | None) -> dict[str, np.ndarray] | None:
    """The fingerprint arrays in a model's extra tensors (meta["extra"]), or None when the model has none."""
    out = {}
    for key, value in (tensors or {}).items():
        if key.startswith(PREFIX):
            out[key[len(PREFIX):]] = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.int64)
    return out if all(n in out for n in NAMES) else None


def read_model_file(path) -> dict[str, np.ndarray] | None:
    """The fingerprint stored in a model.safetensors file, read with numpy (no torch); None when it has none."""
    from safetensors import safe_open

    from melanoma.artifacts import EXTRA_PREFIX  # model files store extra tensors as "extra.fingerprint.*"

    with safe_open(str(path), framework="np") as f:
        return find({k[len(EXTRA_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(EXTRA_PREFIX + PREFIX)})


def save(tensors: dict, run) -> Path:
    """Write the fingerprint next to a run's config (finalize adds it to every model file of the run)."""
    from safetensors.torch import save_file

    path = Path(run) / FILE_NAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # DDP ranks write the same file: one temp name each
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return path


def load(run) -> dict:
    """The run's fingerprint tensors, or {} (runs made before fingerprints, tests that skip it)."""
    from safetensors.torch import load_file

    path = Path(run) / FILE_NAME
    return load_file(str(path)) if path.is_file() else {}


# PIL transposes giving the 8 symmetries of a square (identity first): rotations by 0/90/180/270 degrees and
# their mirror images
DIHEDRAL = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
            Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
            Image.Transpose.TRANSVERSE)


def dihedral_phashes(path) -> list[int]:
    """The phash (int64) of the image turned by each DIHEDRAL transform; [] for an unreadable file.

    Trap: imagehash.phash first shrinks to a 32x32 greyscale thumbnail; turning that thumbnail (not the full
    image) gives the same hash for the identity and costs one decode per image instead of eight."""
    try:
        thumb = load_image(path).convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    except Exception:  # noqa: BLE001 - the scan already reported why this file is unreadable
        return []
    return [phash_int64(thumb if t is None else thumb.transpose(t)) for t in DIHEDRAL]


def _all_dihedral_phashes(paths: list) -> list[list[int]]:
    """dihedral_phashes of every path, in order; a process pool (like images.scan_paths) for large sets."""
    workers = os.cpu_count() or 1
    if workers <= 1 or len(paths) < 200:
        return [dihedral_phashes(p) for p in paths]
    with Pool(processes=workers) as pool:
        return pool.map(dihedral_phashes, [str(p) for p in paths], chunksize=max(1, min(64, len(paths) // (workers * 8))))


def _near_any_turn(fingerprint: dict, samples, ok: list[int], distance: int) -> dict[int, bool]:
    """{sample index: matched only when turned} for the images whose phash, in any of the 8 orientations, is
    within `distance` of a training image's."""
    turns = [(i, k, h) for i, hashes in zip(ok, _all_dihedral_phashes([samples[i].path for i in ok]))
             for k, h in enumerate(hashes)]
    if not turns or not len(fingerprint["phash"]):
        return {}
    hashes = np.array([h for _, _, h in turns], dtype=np.int64).view(np.uint64)
    rows, _, _ = hamming_pairs(hashes, fingerprint["phash"].view(np.uint64), max_distance=distance)
    near: dict[int, bool] = {}
    for r in rows.tolist():
        i, k, _ = turns[r]
        near[i] = near.get(i, True) and k > 0
    return near


def matches(fingerprint: dict[str, np.ndarray], samples, entries: list[ScanEntry], distance: int) -> dict[int, str]:
    """{index in `samples`: how it matched ("pixels", "phash", "phash-turned", "isic-id", joined by "+")} for the
    images that occur in the fingerprinted training set (phash-turned: only once rotated or flipped)."""
    pixels = set(fingerprint["pixel"].tolist())
    ids = set(fingerprint["isic"][fingerprint["isic"] >= 0].tolist())
    ok = [i for i, e in enumerate(entries) if not e.error]
    near = _near_any_turn(fingerprint, samples, ok, distance)
    found = {}
    for i, (sample, entry) in enumerate(zip(samples, entries)):
        exact = not entry.error and _pixel64(entry.pixel_hash) in pixels
        phash = "phash-turned" if near.get(i) else "phash"
        how = [name for name, hit in (("pixels", exact), (phash, i in near and not exact),
                                      ("isic-id", isic_number(sample.path) in ids)) if hit]
        if how:
            found[i] = "+".join(how)
    return found


def summarize(found: dict[int, str]) -> dict:
    """Counts by matching rule, for the evaluation report."""
    return dict(Counter(found.values()).most_common())
