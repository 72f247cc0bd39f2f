"""Dataset layer: discovery of every layout, image loading of awkward files, scanning, leak-free splits."""

from __future__ import annotations

import csv
import io
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma import data, images
from melanoma.errors import ConfigError, DataError, ImageError

UUID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def _jpeg(path: Path, color=(200, 30, 30), size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG")
    return path


def _noise_jpeg(path: Path, seed: int, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", quality=95)
    return path


def _bmp_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny BMP whose header claims width x height pixels (a decompression-bomb header, no pixel data)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    raw = bytearray(buf.getvalue())
    raw[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER biWidth, biHeight
    path.write_bytes(bytes(raw))
    return path


# ---------------------------------------------------------------- load_image

def test_load_image_converts_every_mode_to_8bit_rgb(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "grey.png")
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (8, 6), 3).save(tmp_path / "palette.png")
    Image.new("1", (8, 6), 1).save(tmp_path / "bilevel.png")
    for name in ["grey.png", "cmyk.jpg", "palette.png", "bilevel.png"]:
        im = data.load_image(tmp_path / name)
        assert (im.mode, im.size) == ("RGB", (8, 6)), name
    assert data.load_image(tmp_path / "grey.png").getpixel((0, 0)) == (77, 77, 77)
    assert data.load_image(tmp_path / "cmyk.jpg").getpixel((0, 0))[0] > 200  # red stays red


def test_load_image_composites_alpha_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.save(tmp_path / "rgba.png")
    im = data.load_image(tmp_path / "rgba.png")
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 1)) == (255, 0, 0)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "ptrans.png", transparency=0)
    im = data.load_image(tmp_path / "ptrans.png")
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((1, 1)) == (0, 255, 0)


def test_load_image_scales_16bit_grey_instead_of_clipping(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    im = data.load_image(tmp_path / "deep.png")
    assert [im.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_load_image_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "rotated.jpg", exif=exif)
    assert data.load_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_load_image_reads_heic_turned_once(tmp_path):
    """HEIC (iPhones' default, also through a clip-on dermoscope): decoded to RGB with its rotation (HEIF's irot, which
    pillow-heif applies, resetting the EXIF orientation) applied once, not twice; a truncated one is a one-line
    error."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (200, 40, 40)   # left half red, right half blue
    arr[:, 20:] = (40, 40, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "phone.HEIC", exif=exif.tobytes(), quality=90)  # written as an irot
    im = data.load_image(tmp_path / "phone.HEIC")
    assert (im.mode, im.size) == ("RGB", (20, 40))
    top, bottom = np.asarray(im)[2, 10].astype(int), np.asarray(im)[-3, 10].astype(int)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # turned clockwise: the left (red) half on top
    assert data.is_image_file(tmp_path / "phone.HEIC") and data.is_image_file(tmp_path / "x.heif")
    whole = (tmp_path / "phone.HEIC").read_bytes()
    for share in (0.5, 0.75):  # cut in its header boxes ("not an image") or in its coded data ("truncated")
        (tmp_path / "cut.heic").write_bytes(whole[: int(len(whole) * share)])
        with pytest.raises(ImageError) as info:
            data.load_image(tmp_path / "cut.heic")
        assert "cut.heic" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "empty file"),
    ("notes.jpg", b"this is a text file, not a picture\n", "not an image"),
    ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_load_image_rejects_bad_files_with_one_line(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError) as info:
        data.load_image(tmp_path / name)
    assert reason in info.value.reason and "\n" not in str(info.value)
    assert info.value.path == str(tmp_path / name)


def test_load_image_rejects_truncated_jpeg(tmp_path):
    good = _noise_jpeg(tmp_path / "good.jpg", seed=1)
    raw = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match="truncated"):
        data.load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="file not found"):
        data.load_image(tmp_path / "missing.jpg")


def test_bomb_header_is_rejected_before_decoding_with_our_message(tmp_path):
    small_bomb = _bmp_claiming(tmp_path / "bomb.bmp", 5000, 5000)
    with pytest.raises(ImageError, match=r"image too large \(5000x5000 = 25,000,000 pixels > max_pixels 1,000"):
        data.load_image(small_bomb, max_pixels=1000)
    # Above Pillow's own limit (2 x 89M pixels) Pillow must not get in first with its warning or error.
    big_bomb = _bmp_claiming(tmp_path / "big.bmp", 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="max_pixels 100,000,000"):
            data.load_image(big_bomb)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's global limit is restored


# ---------------------------------------------------------------- discover: class folders

def test_discover_class_folders_with_spaces_and_any_extension_case(tmp_path):
    _jpeg(tmp_path / "basal cell carcinoma" / "a.JPG")
    Image.new("RGB", (8, 8)).save(tmp_path / "basal cell carcinoma" / "b.png")
    (tmp_path / "melanoma").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "melanoma" / "c.Tiff")
    Image.new("RGB", (8, 8)).save(tmp_path / "melanoma" / "d.webp")  # the formats the service accepts, too
    Image.new("RGB", (8, 8)).save(tmp_path / "melanoma" / "e.heic")
    (tmp_path / "melanoma" / "README.txt").write_text("not an image")
    table = data.discover(tmp_path)
    assert table.kind == "folders" and len(table) == 5
    assert table.classes == ["basal cell carcinoma", "melanoma"]
    assert table.label_indices().tolist() == [0, 0, 1, 1, 1]
    assert table.samples[0].group == "basal cell carcinoma/a.JPG" and table.samples[0].path.is_absolute()
    sub = table.subset([2])
    assert len(sub) == 1 and sub.classes == table.classes and sub.label_indices().tolist() == [1]


def test_augmentor_output_copies_are_tied_to_their_source(tmp_path):
    source = _jpeg(tmp_path / "nevus" / "ISIC_0000001.jpg")
    _jpeg(tmp_path / "melanoma" / "ISIC_0000002.jpg")
    copy = _jpeg(tmp_path / "nevus" / "output" / f"nevus_original_ISIC_0000001.jpg_{UUID}.jpg", color=(1, 2, 3))
    table = data.discover(tmp_path)
    by_path = {s.path: s for s in table.samples}
    assert len(table) == 3
    assert by_path[copy].source == source and by_path[copy].label == "nevus"
    assert by_path[copy].group == by_path[source].group == "nevus/ISIC_0000001.jpg"


def test_output_file_without_source_name_is_an_error(tmp_path):
    _jpeg(tmp_path / "nevus" / "a.jpg")
    _jpeg(tmp_path / "nevus" / "output" / "random.jpg")
    with pytest.raises(DataError, match="random.jpg"):
        data.discover(tmp_path)


def test_empty_class_folder_and_missing_path_are_data_errors(tmp_path):
    _jpeg(tmp_path / "nevus" / "a.jpg")
    (tmp_path / "melanoma").mkdir()
    with pytest.raises(DataError, match="melanoma: empty class folder"):
        data.discover(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        data.discover(tmp_path / "nope")


def test_plain_folder_and_single_image_are_unlabelled_files(tmp_path):
    _jpeg(tmp_path / "x.jpg")
    _jpeg(tmp_path / "y.jpeg")
    table = data.discover(tmp_path)
    assert table.kind == "files" and table.classes == [] and [s.label for s in table.samples] == [None, None]
    single = data.discover(tmp_path / "x.jpg")
    assert single.kind == "files" and len(single) == 1


# ---------------------------------------------------------------- discover: CSV layouts

def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_paths_are_relative_to_the_csv(tmp_path):
    _jpeg(tmp_path / "imgs" / "a.jpg")
    _jpeg(tmp_path / "imgs" / "b.jpg")
    manifest = _write_csv(tmp_path / "list.csv", ["image", "label"], [["imgs/a.jpg", "nevus"], ["imgs/b.jpg", "mel"]])
    table = data.discover(manifest)
    assert table.kind == "manifest" and table.classes == ["mel", "nevus"]
    assert [s.path.name for s in table.samples] == ["a.jpg", "b.jpg"]
    _write_csv(manifest, ["image", "label"], [["imgs/zzz.jpg", "nevus"]])
    with pytest.raises(DataError, match=r"list.csv: line 2: missing file imgs/zzz.jpg"):
        data.discover(manifest)


def test_csv_without_the_needed_columns_is_a_data_error(tmp_path):
    bad = _write_csv(tmp_path / "x.csv", ["file", "class"], [["a.jpg", "nevus"]])
    with pytest.raises(DataError, match="x.csv: CSV lacks the needed columns"):
        data.discover(bad)


def test_isic_ground_truth_csv_with_sibling_image_folder(tmp_path):
    for name in ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]:
        _jpeg(tmp_path / "Training_Input" / f"{name}.jpg")
    header = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    gt = _write_csv(tmp_path / "GroundTruth.csv", header, [
        ["ISIC_0000001", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0", "0.0"],
        ["ISIC_0000002", "0.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0"],
        ["ISIC_0000003", "0.0", "1.0", "0.0", "0.0", "0.0", "0.0", "0.0"]])
    table = data.discover(gt)
    assert table.kind == "isic-csv" and table.classes == ["MEL", "NV"]
    assert [s.label for s in table.samples] == ["MEL", "NV", "NV"]
    assert data.discover(tmp_path).kind == "isic-csv"  # the folder holding the CSV works too
    _write_csv(gt, header, [["ISIC_0000001", "1", "1", "0", "0", "0", "0", "0"]])
    with pytest.raises(DataError, match="line 2: image ISIC_0000001 has 2 classes marked"):
        data.discover(gt)


def test_isic2017_ground_truth_csv_neither_column_means_nevus(tmp_path):
    for name in ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]:
        _jpeg(tmp_path / "ISIC-2017_Test_v2_Data" / f"{name}.jpg")
    header = ["image_id", "melanoma", "seborrheic_keratosis"]
    gt = _write_csv(tmp_path / "ISIC-2017_Test_v2_Part3_GroundTruth.csv", header, [
        ["ISIC_0000001", "1.0", "0.0"], ["ISIC_0000002", "0.0", "1.0"], ["ISIC_0000003", "0.0", "0.0"]])
    table = data.discover(tmp_path)
    assert [s.label for s in table.samples] == ["melanoma", "seborrheic keratosis", "nevus"]
    assert table.classes == ["melanoma", "nevus", "seborrheic keratosis"]
    _write_csv(gt, header, [["ISIC_0000001", "1", "1"]])
    with pytest.raises(DataError, match="line 2: image ISIC_0000001 needs .* at most one of them 1"):
        data.discover(gt)


def test_isic2020_ground_truth_csv_target_decides_melanoma_and_patients_are_groups(tmp_path):
    names = ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    for name in names:
        _jpeg(tmp_path / "train" / f"{name}.jpg")
    header = ["image_name", "patient_id", "lesion_id", "diagnosis", "benign_malignant", "target"]
    gt = _write_csv(tmp_path / "ISIC_2020_Training_GroundTruth_v2.csv", header, [
        ["ISIC_0000001", "IP_1", "IL_1", "melanoma", "malignant", "1"],
        ["ISIC_0000002", "IP_1", "IL_2", "unknown", "benign", "0"],
        ["ISIC_0000003", "IP_2", "IL_3", "nevus", "benign", "0"],
        ["ISIC_0000004", "", "", "lentigo NOS", "benign", "0"]])
    table = data.discover(tmp_path)
    assert [s.label for s in table.samples] == ["melanoma", "benign", "nevus", "lentigo NOS"]
    assert [s.group for s in table.samples] == ["IP_1", "IP_1", "IP_2", "ISIC_0000004"]  # a patient is one group
    _write_csv(gt, header, [["ISIC_0000001", "IP_1", "IL_1", "melanoma", "benign", "0"]])
    with pytest.raises(DataError, match="line 2: image ISIC_0000001 has diagnosis melanoma but target 0"):
        data.discover(gt)
    _write_csv(gt, header, [["ISIC_0000001", "IP_1", "IL_1", "melanoma", "malignant", "yes"]])
    with pytest.raises(DataError, match="line 2: image ISIC_0000001 has target 'yes'"):
        data.discover(gt)


def _ham_subset(ham_dir: Path, target: Path, every: int) -> Path:
    """A HAM10000 folder with every `every`-th lesion (all its images) and a symlink to the shared images."""
    target.mkdir()
    (target / "images").symlink_to(ham_dir / "images")
    header, *rows = (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()
    lesions = list(dict.fromkeys(row.split(",")[0] for row in rows))
    chosen = set(lesions[::every])
    kept = [row for row in rows if row.split(",")[0] in chosen]
    (target / "HAM10000_metadata.csv").write_text("\n".join([header] + kept) + "\n")
    return target


def test_ham10000_uses_lesion_id_as_group(ham_dir, tmp_path):
    table = data.discover(_ham_subset(ham_dir, tmp_path / "ham", 150))
    assert table.kind == "ham10000" and 40 < len(table) < 100
    assert set(table.classes) <= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert all(s.group.startswith("HAM_") for s in table.samples)
    assert len({s.group for s in table.samples}) < len(table)  # several images of one lesion
    assert len(data.discover(tmp_path / "ham" / "HAM10000_metadata.csv")) == len(table)


def test_full_shared_train_is_discovered(shared_train):
    table = data.discover(shared_train)
    assert len(table) == 2241 and len(table.classes) == 9 and "seborrheic keratosis" in table.classes


# ---------------------------------------------------------------- scan and prepare_training_table

def test_scan_hashes_pixels_not_bytes(tmp_path):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    picture.save(tmp_path / "a.png")
    picture.save(tmp_path / "b.bmp")
    (tmp_path / "c.jpg").write_bytes(b"")
    table = data.discover(tmp_path)
    a, b, c = data.scan(table, workers=1)
    assert a.pixel_hash == b.pixel_hash and a.phash == b.phash and a.error is None
    assert (a.width, a.height, a.mode) == (30, 20, "RGB") and a.file_size > 0
    assert -(2 ** 63) <= a.phash < 2 ** 63
    assert c.error == "empty file (0 bytes)" and c.pixel_hash is None


def test_scan_with_a_process_pool_keeps_order(tiny_isic, monkeypatch):
    monkeypatch.setattr(images, "_MIN_IMAGES_FOR_POOL", 0)
    table = data.discover(tiny_isic)
    entries = data.scan(table, workers=2)
    assert [e.path for e in entries] == [str(s.path) for s in table.samples]
    assert all(e.error is None and (e.width, e.height) == (180, 180) for e in entries)


def _conflict_dataset(root: Path) -> Path:
    """nevus/melanoma folders where one picture is filed under both classes, plus an unreadable file."""
    shared = _noise_jpeg(root / "nevus" / "dup.jpg", seed=7)
    (root / "melanoma").mkdir(parents=True)
    shutil.copy(shared, root / "melanoma" / "dup.jpg")
    for i in range(3):
        _noise_jpeg(root / "nevus" / f"n{i}.jpg", seed=10 + i)
        _noise_jpeg(root / "melanoma" / f"m{i}.jpg", seed=20 + i)
    (root / "melanoma" / "broken.jpg").write_bytes(b"nope")
    return root


@pytest.mark.parametrize("policy, n_kept, labels_of_dup", [
    ("drop", 6, []), ("keep", 8, ["melanoma", "nevus"]), ("first", 7, ["melanoma"])])
def test_prepare_training_table_conflict_policies(tmp_path, policy, n_kept, labels_of_dup):
    table = data.discover(_conflict_dataset(tmp_path))
    prepared, summary = data.prepare_training_table(table, conflict_policy=policy, workers=1)
    assert len(prepared) == n_kept == summary["n_images"]
    assert sorted(s.label for s in prepared.samples if s.path.name == "dup.jpg") == labels_of_dup
    assert summary["n_unreadable"] == 1 and summary["unreadable"][0]["path"].endswith("broken.jpg")
    assert summary["n_exact_duplicate_groups"] == 1 and summary["n_conflict_groups"] == 1
    assert summary["n_images_dropped"] == 9 - n_kept and summary["policy"] == policy
    assert sum(summary["counts"].values()) == n_kept
    dup_groups = {s.group for s in prepared.samples if s.path.name == "dup.jpg"}
    assert len(dup_groups) <= 1  # copies share one group


def test_prepare_merges_augmented_copies_and_rejects_unknown_policy(tmp_path):
    _noise_jpeg(tmp_path / "nevus" / "a.jpg", seed=1)
    _noise_jpeg(tmp_path / "nevus" / "output" / f"nevus_original_a.jpg_{UUID}.jpg", seed=2)
    _noise_jpeg(tmp_path / "melanoma" / "b.jpg", seed=3)
    prepared, summary = data.prepare_training_table(data.discover(tmp_path), workers=1)
    groups = {s.path.name: s.group for s in prepared.samples}
    assert groups["a.jpg"] == groups[f"nevus_original_a.jpg_{UUID}.jpg"] != groups["b.jpg"]
    with pytest.raises(ConfigError, match="conflict policy"):
        data.prepare_training_table(data.discover(tmp_path), conflict_policy="vote")


def test_real_cross_class_duplicates_are_merged(shared_train, tmp_path):
    """Byte-identical files under actinic keratosis and nevus in the shared Train split end up in one group."""
    ak, nv = shared_train / "actinic keratosis", shared_train / "nevus"
    both = sorted({p.name for p in ak.glob("*.jpg")} & {p.name for p in nv.glob("*.jpg")})[:3]
    assert len(both) == 3
    for name in both:
        for src in (ak, nv):
            (tmp_path / src.name).mkdir(exist_ok=True)
            shutil.copy(src / name, tmp_path / src.name / name)
    prepared, summary = data.prepare_training_table(data.discover(tmp_path), conflict_policy="keep", workers=1)
    assert summary["n_exact_duplicate_groups"] == 3 and summary["n_conflict_groups"] == 3
    assert len({s.group for s in prepared.samples}) == 3


# ---------------------------------------------------------------- splits

def _assert_groups_disjoint(table, train_idx, val_idx):
    groups = np.array([s.group for s in table.samples])
    assert not set(groups[train_idx]) & set(groups[val_idx])
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) == len(table)


def test_kfold_keeps_lesions_together_and_stratifies(ham_dir, tmp_path):
    table = data.discover(_ham_subset(ham_dir, tmp_path / "ham", 6))
    y = table.label_indices()
    overall = np.bincount(y, minlength=len(table.classes)) / len(y)
    folds = data.stratified_group_kfold(table, k=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen.tolist()) == list(range(len(table)))  # each image validated exactly once
    for train_idx, val_idx in folds:
        _assert_groups_disjoint(table, train_idx, val_idx)
        share = np.bincount(y[val_idx], minlength=len(table.classes)) / len(val_idx)
        assert np.abs(share - overall).max() < 0.05


def test_single_split_is_fold_zero_and_deterministic(ham_dir, tmp_path):
    table = data.discover(_ham_subset(ham_dir, tmp_path / "ham", 12))
    train_idx, val_idx = data.stratified_group_split(table, val_fraction=0.2, seed=3)
    _assert_groups_disjoint(table, train_idx, val_idx)
    assert 0.12 < len(val_idx) / len(table) < 0.28
    again = data.stratified_group_split(table, val_fraction=0.2, seed=3)
    assert np.array_equal(val_idx, again[1]) and val_idx.dtype == np.int64


def test_split_warns_when_a_class_has_fewer_groups_than_folds(tmp_path):
    for i in range(6):
        _jpeg(tmp_path / "nevus" / f"n{i}.jpg")
    _jpeg(tmp_path / "melanoma" / "m0.jpg")
    _jpeg(tmp_path / "melanoma" / "m1.jpg")
    table = data.discover(tmp_path)
    assert data.sparse_classes(table, 3) == {"melanoma": 2}
    with pytest.warns(data.SparseClassWarning, match="class 'melanoma' has only 2 independent group"):
        folds = data.stratified_group_kfold(table, k=3, seed=0)
    assert len(folds) == 3
    for train_idx, val_idx in folds:
        _assert_groups_disjoint(table, train_idx, val_idx)
    with pytest.raises(DataError, match="only 8 independent group"):
        data.stratified_group_kfold(table, k=9, seed=0)
    with pytest.raises(ConfigError):
        data.stratified_group_split(table, val_fraction=1.5, seed=0)


def _recompressed(src: Path, dst: Path, quality: int) -> Path:
    """The same picture saved again at another JPEG quality: other pixels, same perceptual hash."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).save(dst, "JPEG", quality=quality)
    return dst


def test_near_duplicates_share_a_group(shared_train, tmp_path):
    real = sorted((shared_train / "nevus").glob("*.jpg"))[:3]
    for f in real:
        _recompressed(f, tmp_path / "nevus" / f.name, 95)
    _recompressed(real[0], tmp_path / "nevus" / "copy_q60.jpg", 60)
    table = data.discover(tmp_path)
    near, _ = data.prepare_training_table(table, near_distance=4)
    off, _ = data.prepare_training_table(table, near_distance=None)
    group = {s.path.name: s.group for s in near.samples}
    assert group["copy_q60.jpg"] == group[real[0].name]
    assert len({s.group for s in near.samples}) == 3 and len({s.group for s in off.samples}) == 4


def test_lesion_metadata_keeps_photos_of_one_lesion_together(tmp_path):
    for i in range(8):
        _noise_jpeg(tmp_path / "data" / ("nevus" if i % 2 else "melanoma") / f"ISIC_000000{i}.jpg", seed=i)
    meta = tmp_path / "meta.csv"
    meta.write_text("lesion_id,image_id,dx\nHAM_A,ISIC_0000001,nv\nHAM_A,ISIC_0000003,nv\nHAM_A,ISIC_0000005,nv\n"
                    "HAM_B,ISIC_0000000,mel\nHAM_B,ISIC_0000002,mel\n")
    table = data.discover(tmp_path / "data")
    prepared, summary = data.prepare_training_table(table, lesion_ids=data.read_lesion_ids(meta))
    assert summary["n_images_with_lesion_id"] == 5 and summary["n_lesions_with_several_images"] == 2
    group = {s.path.stem: s.group for s in prepared.samples}
    assert group["ISIC_0000001"] == group["ISIC_0000003"] == group["ISIC_0000005"]
    assert group["ISIC_0000000"] == group["ISIC_0000002"] != group["ISIC_0000001"]
    for train_idx, val_idx in data.stratified_group_kfold(prepared, k=2, seed=0):
        _assert_groups_disjoint(prepared, train_idx, val_idx)
    with pytest.raises(DataError, match="image_id and lesion_id"):
        data.read_lesion_ids(_bad_csv(tmp_path))


def _bad_csv(tmp_path: Path) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text("image,label\na.jpg,nevus\n")
    return path
