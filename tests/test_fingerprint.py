"""Training-set fingerprints: the images a model was trained on are recognised without the training folders."""

from __future__ import annotations

import numpy as np
from PIL import Image

from melanoma import fingerprint
from melanoma.audit import CROSS_SET_PHASH_DISTANCE
from melanoma.data import Sample, discover, scan


def _prints(table):
    return fingerprint.find(fingerprint.build(scan(table)))


def _samples(paths):
    return [Sample(path=p, label=None, group=str(p)) for p in paths]


def test_copies_renamed_copies_and_resaved_copies_are_recognised(tiny_isic, tmp_path):
    table = discover(tiny_isic)
    prints = _prints(table)
    assert len(prints["pixel"]) == len(table) == 45 and (prints["isic"] >= 0).all()
    original = table.samples[0].path
    renamed = tmp_path / "lesion.png"  # same pixels, other name and format
    Image.open(original).convert("RGB").save(renamed)
    resaved = tmp_path / "smaller.jpg"  # resized and recompressed: pixels differ, perceptual hash does not
    Image.open(original).convert("RGB").resize((150, 150)).save(resaved, quality=85)
    same_id = tmp_path / f"{original.stem}_downsampled.jpg"  # an unrelated picture carrying the ISIC id
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(same_id)
    other = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(other)
    paths = [renamed, resaved, same_id, other]
    entries = scan(discover(tmp_path))
    entries = [next(e for e in entries if e.path == str(p)) for p in paths]
    found = fingerprint.matches(prints, _samples(paths), entries, CROSS_SET_PHASH_DISTANCE)
    assert found[0] == "pixels" and found[1] == "phash" and found[2] == "isic-id" and 3 not in found
    assert fingerprint.summarize(found) == {"pixels": 1, "phash": 1, "isic-id": 1}


def test_saved_with_a_run_and_loaded_back(tiny_isic, tmp_path):
    tensors = fingerprint.build(scan(discover(tiny_isic)))
    fingerprint.save(tensors, tmp_path)
    back = fingerprint.load(tmp_path)
    assert set(back) == {"fingerprint.pixel", "fingerprint.phash", "fingerprint.isic"}
    assert all((back[k] == tensors[k]).all() for k in tensors)
    assert fingerprint.load(tmp_path / "elsewhere") == {} and fingerprint.find({}) is None
    assert fingerprint.isic_number("ISIC_0024306(1).jpg") == 24306 and fingerprint.isic_number("x.jpg") == -1
