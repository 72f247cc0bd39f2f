"""Audit: bad files reported (never a crash), exact/near duplicates, label conflicts, overlap between sets, CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from melanoma import audit as audit_module
from melanoma import data
from melanoma.cli import main
from melanoma.images import scan_file


def _copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _write_bomb_bmp(path: Path, width: int, height: int) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    raw = bytearray(buf.getvalue())
    raw[18:26] = struct.pack("<ii", width, height)
    path.write_bytes(bytes(raw))


def _shared_duplicate_names(shared_train: Path, a: str, b: str, n: int) -> list[str]:
    names = {p.name for p in (shared_train / a).glob("*.jpg")} & {p.name for p in (shared_train / b).glob("*.jpg")}
    return sorted(names)[:n]


def test_cli_audit_reports_each_broken_file_once_and_exits_0(tiny_isic, tmp_path, capsys):
    root = _copy_tree(tiny_isic, tmp_path / "mixed")
    nevus = root / "nevus"
    good = sorted(nevus.glob("*.jpg"))[0].read_bytes()
    broken = {
        "zero.jpg": b"",
        "text.jpg": b"hello, I am a text file\n",
        "truncated.jpg": good[: len(good) // 3],
    }
    for name, content in broken.items():
        (nevus / name).write_bytes(content)
    _write_bomb_bmp(nevus / "bomb.bmp", 4000, 4000)
    out_json = tmp_path / "audit.json"

    rc = main(["audit", str(root), "--json", str(out_json), "--max-pixels", "1000000", "--workers", "1"])

    assert rc == 0
    stdout = capsys.readouterr().out
    for name in [*broken, "bomb.bmp"]:
        lines = [line for line in stdout.splitlines() if f"nevus/{name}:" in line]
        assert len(lines) == 1, name
    assert "unreadable 4" in stdout and "image too large (4000x4000" in stdout
    assert "empty file" in stdout and "not an image" in stdout and "truncated" in stdout
    report = json.loads(out_json.read_text())
    assert report["n_readable"] == 45 and report["n_unreadable"] == 4
    assert report["images_per_class"]["nevus"] == 9 and report["sizes"] == {"180x180": 45}


def test_audit_finds_exact_and_near_cross_class_duplicates(tiny_isic, shared_train, tmp_path):
    root = _copy_tree(tiny_isic, tmp_path / "dups")
    for name in _shared_duplicate_names(shared_train, "melanoma", "seborrheic keratosis", 2):
        for cls in ("melanoma", "seborrheic keratosis"):
            shutil.copy(shared_train / cls / name, root / cls / name)
    # a near (not exact) duplicate: a slightly brighter re-encoded copy filed under another class
    source = sorted((root / "nevus").glob("*.jpg"))[0]
    brighter = ImageEnhance.Brightness(Image.open(source)).enhance(1.03)
    brighter.save(root / "vascular lesion" / "brighter_copy.jpg", quality=90)
    report = data.audit(data.discover(root), workers=1)

    exact = report["exact_duplicates"]
    assert exact["n_cross_class_groups"] >= 2
    assert any(g["classes"] == ["melanoma", "seborrheic keratosis"] for g in exact["groups"])
    near = [g for g in report["near_duplicates"]["groups"]
            if "vascular lesion/brighter_copy.jpg" in {f["path"] for f in g["files"]}]
    assert len(near) == 1 and near[0]["classes"] == ["nevus", "vascular lesion"]
    assert report["label_conflicts"]["exact"]["n_groups"] >= 2
    assert report["label_conflicts"]["near"]["n_groups"] >= 1
    json.dumps(report)  # JSON-able


def test_near_duplicates_leave_out_pairs_that_are_exact_copies(tmp_path):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        picture.save(tmp_path / cls / "same.png")
    report = data.audit(data.discover(tmp_path), workers=1)
    assert report["exact_duplicates"]["n_groups"] == 1
    assert report["near_duplicates"]["n_groups"] == 0


def _ham_with(ham_dir: Path, target: Path, image_ids: set[str], extra_rows: int) -> Path:
    """A HAM10000 folder listing the given image ids plus a few others; images come through a symlink."""
    target.mkdir()
    (target / "images").symlink_to(ham_dir / "images")
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = [r for r in rows if r["image_id"] in image_ids] + [r for r in rows if r["dx"] == "nv"][:extra_rows]
    with open(target / "HAM10000_metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return target


def _phash_distance(a: Path, b: Path) -> int:
    ha, hb = (np.array([scan_file(p).phash], dtype=np.int64).view(np.uint64)[0] for p in (a, b))
    return int(np.bitwise_count(ha ^ hb))


def test_overlap_against_matches_by_content_and_isic_id(shared_train, ham_dir, tmp_path):
    ham_ids = {line.split(",")[1] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:]}
    in_ham = sorted(p for p in (shared_train / "basal cell carcinoma").glob("*.jpg") if p.stem in ham_ids)
    bcc = [p for p in in_ham[:20] if _phash_distance(p, ham_dir / "images" / p.name) <= 2][:3]
    other = tmp_path / "other"
    (other / "basal cell carcinoma").mkdir(parents=True)
    (other / "melanoma").mkdir()
    for p in bcc[:2]:
        shutil.copy(p, other / "basal cell carcinoma" / p.name)
    shutil.copy(bcc[2], other / "basal cell carcinoma" / "renamed.jpg")  # no id in the name: content only
    for p in sorted((shared_train / "melanoma").glob("*.jpg"))[:2]:  # old archive melanomas: not in HAM10000
        shutil.copy(p, other / "melanoma" / p.name)
    ham = data.discover(_ham_with(ham_dir, tmp_path / "ham", {p.stem for p in bcc}, extra_rows=10))

    overlap = data.audit(ham, against=data.discover(other), workers=1)["overlap"]

    assert overlap["n_overlap"] == 3
    found = {m["path"]: m for m in overlap["images"]}
    assert set(found) == {f"basal cell carcinoma/{p.name}" for p in bcc[:2]} | {"basal cell carcinoma/renamed.jpg"}
    assert found["basal cell carcinoma/renamed.jpg"]["matched_by"] == "phash"
    assert all(m["labels_data"] == ["bcc"] and m["label_other"] == "basal cell carcinoma" for m in found.values())
    assert "isic-id" in found[f"basal cell carcinoma/{bcc[0].name}"]["matched_by"]
    assert "phash" in overlap["rule"] and overlap["phash_distance"] == 2


def test_hamming_pairs_matches_brute_force(monkeypatch):
    monkeypatch.setattr(audit_module, "_CHUNK_ROWS", 7)  # several chunks
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2 ** 63, 40, dtype=np.uint64) | np.uint64(1 << 63)  # high bit set: "negative" as int64
    a[5] = a[3] ^ np.uint64(0b1011)  # distance 3
    b = a.copy()
    b[::2] ^= np.uint64(1)
    i, j, d = audit_module.hamming_pairs(a, max_distance=4)
    brute = {(x, y) for x in range(40) for y in range(x + 1, 40) if bin(int(a[x]) ^ int(a[y])).count("1") <= 4}
    assert set(zip(i.tolist(), j.tolist())) == brute and (3, 5) in brute
    assert d[list(zip(i, j)).index((3, 5))] == 3
    i, j, d = audit_module.hamming_pairs(a, b, max_distance=0)
    assert set(zip(i.tolist(), j.tolist())) == {(x, x) for x in range(1, 40, 2)}


def test_format_audit_truncates_long_lists(tiny_isic, shared_train, tmp_path, monkeypatch):
    root = _copy_tree(tiny_isic, tmp_path / "many")
    for name in _shared_duplicate_names(shared_train, "actinic keratosis", "nevus", 4):
        for cls in ("actinic keratosis", "nevus"):
            shutil.copy(shared_train / cls / name, root / cls / name)
    monkeypatch.setattr(audit_module, "LIST_LIMIT", 2)
    text = data.format_audit(data.audit(data.discover(root), workers=1))
    assert "exact duplicate groups 4 (8 images), 4 across classes" in text
    assert "  ... and 2 more" in text
    assert "seborrheic keratosis" in text and "total" in text


def test_cli_audit_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file or folder" in err and err.count("\n") == 1
