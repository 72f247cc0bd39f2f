"""Offline augmentation: write augmented copies of a labelled dataset to a SEPARATE folder.

The copies use the train preset's geometric + colour augmentations (`transforms.augmentation_ops`) at each
image's original size. OUT/manifest.csv lists the originals (absolute paths) and the copies (paths relative
to OUT) with columns `image,label,source,group`: a copy's `source` is the absolute path of its original and its
`group` is the original's leak group, so a split never puts a copy and its source on different sides.
`melanoma.data.discover(OUT / "manifest.csv")` reads it back as a training table.
"""

from __future__ import annotations

import csv
import random
import zlib
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.transforms import v2

from melanoma.errors import ConfigError
from melanoma.transforms import augmentation_ops

MANIFEST = "manifest.csv"
JPEG_QUALITY = 95  # copies are re-encoded once; 95 keeps JPEG artefacts well below the augmentation noise


def _check_out(data_root: Path, out: Path) -> None:
    """Refuse OUT == DATA, OUT inside DATA, and a non-empty OUT (old copies would mix with new ones)."""
    if out == data_root or data_root in out.parents:
        raise ConfigError(f"--out {out} is inside the dataset {data_root}; choose a folder outside it "
                          "(augment never writes into its input)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; choose a new one")


def _originals_by_class(table) -> dict[str, list]:
    """Labelled original samples (not copies) per class, in path order."""
    by_class = defaultdict(list)
    for sample in table.samples:
        if sample.label is not None and sample.source is None:
            by_class[sample.label].append(sample)
    return dict(sorted(by_class.items()))


def _class_seed(seed: int, label: str) -> int:
    """Per-class seed, so one class's copies do not change when another class is added or removed."""
    return zlib.crc32(f"{seed}:{label}".encode())


def _augment_image(image, rng: torch.Generator):
    """One augmented copy of a PIL image at its original size (global torch RNG reseeded from `rng`)."""
    torch.manual_seed(int(torch.randint(0, 2**62, (), generator=rng)))  # v2 transforms draw from the global RNG
    ops = v2.Compose([v2.ToImage(), *augmentation_ops((image.height, image.width))])
    return v2.functional.to_pil_image(ops(image))


def _copy_name(source: Path, index: int) -> str:
    return f"{source.stem}_aug{index:05d}.jpg"


def _write_class_copies(samples: list, label: str, n_copies: int, out: Path, seed: int) -> list[dict]:
    """Write `n_copies` copies of `samples` (cycled in a seeded shuffled order) to OUT/<label>/."""
    from melanoma.data import load_image

    order = list(samples)
    random.Random(_class_seed(seed, label)).shuffle(order)
    rng = torch.Generator().manual_seed(_class_seed(seed, label))
    class_dir = out / label
    class_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_copies):
        sample = order[i % len(order)]
        path = class_dir / _copy_name(sample.path, i)
        _augment_image(load_image(sample.path), rng).save(path, quality=JPEG_QUALITY)
        rows.append({"image": path.relative_to(out).as_posix(), "label": label,
                     "source": str(sample.path), "group": sample.group})
    return rows


def _write_manifest(out: Path, rows: list[dict]) -> Path:
    path = out / MANIFEST
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "source", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def augment_dataset(data, out, per_class: int, seed: int = 0) -> dict:
    """Top up every class of `data` to `per_class` images (originals + copies) with augmented copies written
    to OUT/<class>/, and write OUT/manifest.csv (originals and copies, see the module docstring).
    Classes that already have `per_class` images or more get no copies. Deterministic for a given seed.
    Returns a JSON-able summary. ConfigError when OUT is DATA, inside it, or not empty."""
    from melanoma.data import discover

    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    table = discover(data)
    data_root = Path(table.root if Path(table.root).is_dir() else Path(table.root).parent).resolve()
    out = Path(out).expanduser().resolve()
    _check_out(data_root, out)
    by_class = _originals_by_class(table)
    if not by_class:
        raise ConfigError(f"{data}: no labelled images to augment")
    out.mkdir(parents=True, exist_ok=True)
    rows, classes = [], {}
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
        for label, samples in by_class.items():
            n_copies = max(0, per_class - len(samples))
            rows += [{"image": str(s.path), "label": label, "source": "", "group": s.group} for s in samples]
            rows += _write_class_copies(samples, label, n_copies, out, seed)
            classes[label] = {"originals": len(samples), "copies": n_copies, "total": len(samples) + n_copies}
    manifest = _write_manifest(out, rows)
    return {"data": str(data_root), "out": str(out), "manifest": str(manifest), "per_class": per_class,
            "seed": seed, "copies": sum(c["copies"] for c in classes.values()), "classes": classes}
