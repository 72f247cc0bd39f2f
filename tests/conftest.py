"""Shared fixtures: the read-only datasets under ../shared/data and a tiny copy of the 9-class Train split.

The shared data is required: a missing folder FAILS the tests that use it (never a silent skip).
Dataset images are only ever copied into pytest's tmp folders, never into the repository.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Training in tests uses fp32 unless a test says otherwise: the fast path's one-off speed probe (fastpath.py) would
# cost more than the tiny runs themselves, and a fixed precision keeps results comparable between runs.
os.environ.setdefault("MELANOMA_PRECISION", "32-true")
# Partial results of interrupted commands (partial.py) go to a throw-away folder, never the user's ~/.cache.
os.environ["MELANOMA_CACHE_DIR"] = tempfile.mkdtemp(prefix="melanoma-test-cache-")
atexit.register(shutil.rmtree, os.environ["MELANOMA_CACHE_DIR"], True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # repo is /work/main, data /work/shared/data
TINY_PER_CLASS = 5


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: the tests need the shared datasets (see README, ../shared/data)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared, read-only data folder (../shared/data relative to the repository root)."""
    return _require(SHARED_DATA, "shared data folder")


@pytest.fixture(scope="session")
def shared_train(shared_data) -> Path:
    """The 9-class ISIC Train split: 9 class folders (names with spaces) of 180x180 JPEGs."""
    return _require(shared_data / "isic-9class" / "Train", "9-class Train split")


@pytest.fixture(scope="session")
def ham_dir(shared_data) -> Path:
    """The HAM10000 folder: HAM10000_metadata.csv + images/."""
    ham = _require(shared_data / "ham10000", "HAM10000 folder")
    _require(ham / "HAM10000_metadata.csv", "HAM10000 metadata")
    return ham


@pytest.fixture(scope="session")
def tiny_isic(shared_train, tmp_path_factory) -> Path:
    """A copy of the first 5 images (sorted by name) of each of the 9 Train classes, same class-folder layout."""
    root = tmp_path_factory.mktemp("tiny_isic")
    for class_dir in sorted(p for p in shared_train.iterdir() if p.is_dir()):
        target = root / class_dir.name
        target.mkdir()
        for image in sorted(class_dir.glob("*.jpg"))[:TINY_PER_CLASS]:
            shutil.copy2(image, target / image.name)
    return root


def make_mini_ham(ham_dir: Path, target: Path, n: int, dx: tuple[str, ...] | None = None) -> Path:
    """A HAM10000 folder with the first n metadata rows (of each diagnosis in `dx`, if given; images symlinked
    from the shared copy)."""
    target.mkdir()
    (target / "images").symlink_to(ham_dir / "images")
    header, *lines = (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()
    if dx is None:
        chosen = lines[:n]
    else:
        column = header.split(",").index("dx")
        chosen = [row for d in dx for row in [r for r in lines if r.split(",")[column] == d][:n]]
    (target / "HAM10000_metadata.csv").write_text("\n".join([header, *chosen]) + "\n")
    return target
