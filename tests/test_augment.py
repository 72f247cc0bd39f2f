"""Offline augmentation: never writes into its input, tops classes up, manifest ties copies to sources."""

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.augment import augment_dataset
from melanoma.errors import ConfigError

SHARED_TRAIN = Path("/work/shared/data/isic-9class/Train")


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    """Three classes: two with 3 images (copied from the shared set when present), one with 6."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label, count in [("melanoma", 3), ("nevus", 3), ("vascular lesion", 6)]:
        (root / label).mkdir(parents=True)
        shared = sorted((SHARED_TRAIN / label).glob("*.jpg"))[:count] if SHARED_TRAIN.is_dir() else []
        for i in range(count):
            target = root / label / f"img{i}.jpg"
            if i < len(shared):
                shutil.copy(shared[i], target)
            else:
                Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(target)
    return root


def _manifest(out: Path) -> list[dict]:
    with (out / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_tops_up_classes_and_writes_manifest(dataset, tmp_path):
    before = _tree_digest(dataset)
    out = tmp_path / "out"
    summary = augment_dataset(dataset, out, per_class=5, seed=0)
    assert _tree_digest(dataset) == before  # input untouched
    assert summary["classes"]["melanoma"] == {"originals": 3, "copies": 2, "total": 5}
    assert summary["classes"]["vascular lesion"]["copies"] == 0  # already above per_class
    rows = _manifest(out)
    assert list(rows[0]) == ["image", "label", "source", "group"]
    copies = [r for r in rows if r["source"]]
    assert len(copies) == 4 and len(rows) == 3 + 3 + 6 + 4
    for row in copies:
        copy = out / row["image"]
        source = Path(row["source"])
        assert copy.is_file() and source.is_absolute() and source.parent.name == row["label"]
        assert row["group"] == source.relative_to(dataset).as_posix()  # same leak group as the original
        assert Image.open(copy).size == Image.open(source).size  # augmented at the original size


def test_deterministic_given_seed(dataset, tmp_path):
    augment_dataset(dataset, tmp_path / "a", per_class=4, seed=3)
    augment_dataset(dataset, tmp_path / "b", per_class=4, seed=3)
    augment_dataset(dataset, tmp_path / "c", per_class=4, seed=4)
    a, b, c = (_tree_digest(tmp_path / d / "melanoma") for d in "abc")
    assert a == b and a != c


@pytest.mark.parametrize("where", [".", "melanoma", "melanoma/output"])
def test_refuses_to_write_into_data(dataset, where):
    before = _tree_digest(dataset)
    with pytest.raises(ConfigError, match="inside the dataset"):
        augment_dataset(dataset, dataset / where, per_class=5)
    assert _tree_digest(dataset) == before


def test_refuses_non_empty_out(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        augment_dataset(dataset, out, per_class=5)


def test_manifest_reads_back_with_copies_grouped_with_sources(dataset, tmp_path):
    data = pytest.importorskip("melanoma.data")
    out = tmp_path / "out"
    augment_dataset(dataset, out, per_class=5)
    table = data.discover(out / "manifest.csv")
    assert len(table) == 16 and table.classes == ["melanoma", "nevus", "vascular lesion"]
    groups_of_originals = {s.path: s.group for s in table.samples if s.source is None}
    for sample in table.samples:
        if sample.source is not None:
            assert sample.group == groups_of_originals[sample.source]
