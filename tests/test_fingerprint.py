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


def test_rotated_flipped_and_resized_copies_are_recognised(tiny_isic, tmp_path):
    """phash alone misses a turned picture; the 8 dihedral turns of the evaluated image find it."""
    table = discover(tiny_isic)
    prints = _prints(table)
    original = Image.open(table.samples[7].path).convert("RGB")
    copies = {"rot90.png": original.transpose(Image.Transpose.ROTATE_90),
              "flipped.png": original.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              "rot270-bigger.jpg": original.transpose(Image.Transpose.ROTATE_270).resize((400, 400)),
              "resized.jpg": original.resize((260, 200))}
    paths = []
    for name, picture in copies.items():
        picture.save(tmp_path / name, quality=90)
        paths.append(tmp_path / name)
    entries = [next(e for e in scan(discover(tmp_path)) if e.path == str(p)) for p in paths]
    found = fingerprint.matches(prints, _samples(paths), entries, CROSS_SET_PHASH_DISTANCE)
    assert [found.get(i) for i in range(4)] == ["phash-turned", "phash-turned", "phash-turned", "phash"]
    turned = fingerprint.dihedral_phashes(paths[0])
    assert len(turned) == 8 and turned[0] == entries[0].phash  # identity: the same hash the scan computes


def test_the_fingerprint_is_read_from_a_model_file_without_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model = Path(__file__).resolve().parents[1] / "models" / "default" / "model.safetensors"
    code = ("import sys; from melanoma import fingerprint\n"
            f"f = fingerprint.read_model_file({str(model)!r})\n"
            "print(len(f['pixel']), len(f['phash']) == len(f['isic']), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    count, same, torch_loaded = done.stdout.split()
    assert int(count) > 10_000 and same == "True" and torch_loaded == "False", done.stderr
