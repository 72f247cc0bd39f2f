"""Predictor and `melanoma predict`: typed results, probabilities/alert from model.json, bad files, formats, TTA."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from melanoma import cli, referral
from melanoma.artifacts import build_test_model, load_model
from melanoma.errors import ModelError
from melanoma.predict import Prediction, Predictor, expand_paths, write_predictions_csv
from melanoma.transforms import eval_transform

CLASSES = ["actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma", "nevus",
           "pigmented benign keratosis", "seborrheic keratosis", "squamous cell carcinoma", "vascular lesion"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("model"), class_names=CLASSES, image_size=64)


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.load(model_dir)


def _edit_meta(model_dir: Path, out: Path, **changes) -> Path:
    shutil.copytree(model_dir, out)
    meta = json.loads((out / "model.json").read_text())
    for key, value in changes.items():
        meta[key] = value
    (out / "model.json").write_text(json.dumps(meta))
    return out


def _images(tiny_isic) -> list[Path]:
    return sorted(tiny_isic.rglob("*.jpg"))


def test_predictor_on_tiny_isic(predictor, tiny_isic):
    paths = _images(tiny_isic)
    result = predictor.predict_paths(paths, batch_size=16)
    assert len(result) == len(paths) == 45 and not result.errors
    assert result.probs.shape == (45, 9)
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-6)
    assert predictor.class_names == CLASSES and predictor.melanoma_index == 3
    np.testing.assert_array_equal(result.melanoma_probability, result.probs[:, 3])
    rows = result.predictions()
    assert isinstance(rows[0], Prediction) and rows[0].image == str(paths[0])
    assert rows[0].prediction == max(rows[0].probabilities, key=rows[0].probabilities.get)
    with pytest.raises(Exception):
        rows[0].refer = True  # frozen


def test_predict_accepts_pil_path_and_array_alike(predictor, tiny_isic):
    path = _images(tiny_isic)[0]
    pil = Image.open(path).convert("RGB")
    by_path, by_pil, by_array = predictor.predict([path, pil, np.asarray(pil)])
    assert by_path.probabilities == pytest.approx(by_pil.probabilities, abs=1e-6)
    assert by_array.probabilities == pytest.approx(by_pil.probabilities, abs=1e-6)


def test_probabilities_use_temperature_and_alert_threshold(model_dir, tiny_isic, tmp_path):
    edited = _edit_meta(model_dir, tmp_path / "m", temperature=2.0,
                        thresholds={"melanoma_alert": 0.0, "refer_confidence": 1.01})
    paths = _images(tiny_isic)[:4]
    result = Predictor.load(edited).predict_paths(paths)
    model, meta = load_model(edited)
    x = torch.stack([Predictor.load(edited).preprocess(p) for p in paths])
    _, logits = referral.embed(model, x)
    np.testing.assert_allclose(result.probs, referral.softmax(logits.numpy(), 2.0), atol=1e-6)
    assert result.alert.all(), "threshold 0 -> every image alerts"
    assert result.refer.all() and set(result.refer_reason) == {referral.REASON_LOW_CONFIDENCE}


def test_tta(predictor, tiny_isic):
    paths = _images(tiny_isic)[:6]
    plain = predictor.predict_paths(paths)
    one_view = predictor.predict_paths(paths, tta=True, tta_views=1)
    eight = predictor.predict_paths(paths, tta=True, tta_views=8)
    np.testing.assert_allclose(one_view.probs, plain.probs, atol=1e-7)
    np.testing.assert_allclose(eight.probs.sum(axis=1), 1.0, atol=1e-6)
    assert not np.allclose(eight.probs, plain.probs, atol=1e-9), "8 views should average to something else"


def _folder_with_bad_files(tiny_isic, tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = _images(tiny_isic)[:5]
    for i, src in enumerate(good):
        shutil.copy(src, (folder / "sub" if i % 2 else folder) / (src.stem + (".JPG" if i == 0 else ".jpg")))
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "text.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder, good


def test_cli_predict_skips_bad_files(model_dir, tiny_isic, tmp_path, capsys):
    folder, good = _folder_with_bad_files(tiny_isic, tmp_path)
    out = tmp_path / "preds.csv"
    assert cli.main(["predict", str(folder), "--model", str(model_dir), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["image"]).stem for r in rows) == sorted(p.stem for p in good)
    assert list(rows[0])[:3] == ["image", "path", CLASSES[0]]
    assert list(rows[0])[-7:] == ["prediction", "confidence", "melanoma_probability", "melanoma_alert", "refer",
                                  "refer_reason", "warning"]
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 3 and all(name in err for name in ("truncated.jpg", "text.jpg", "empty.png"))
    assert "5 predicted, 3 skipped" in err


def test_cli_predict_exit_1_when_nothing_readable(model_dir, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("nope")
    assert cli.main(["predict", str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png"),
                     "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "no such file" in err


def test_isic_and_json_formats(model_dir, tiny_isic, tmp_path, capsys):
    paths = [str(p) for p in _images(tiny_isic)[:3]]
    out = tmp_path / "isic.csv"
    assert cli.main(["predict", *paths, "--model", str(model_dir), "--format", "isic", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert rows[0]["image"] == Path(paths[0]).stem
    probs = Predictor.load(model_dir).predict_paths(paths).probs
    assert float(rows[0]["AKIEC"]) == pytest.approx(probs[0, 0] + probs[0, 7], abs=2e-6)
    assert float(rows[0]["BKL"]) == pytest.approx(probs[0, 5] + probs[0, 6], abs=2e-6)
    assert sum(float(v) for k, v in rows[0].items() if k != "image") == pytest.approx(1.0, abs=1e-5)

    assert cli.main(["predict", *paths, "--model", str(model_dir), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["predictions"]) == 3 and doc["model"]["class_names"] == CLASSES
    assert set(doc["predictions"][0]) >= {"image", "path", "probabilities", "melanoma_alert", "refer", "refer_reason"}


def test_isic_format_needs_the_isic_classes(tmp_path, tiny_isic, capsys):
    other = build_test_model(tmp_path / "m2", class_names=["benign", "melanoma"])
    code = cli.main(["predict", str(_images(tiny_isic)[0]), "--model", str(other), "--format", "isic"])
    assert code == 2
    assert "error: --format isic needs" in capsys.readouterr().err


def test_default_model_missing_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("melanoma.predict.DEFAULT_MODEL_DIR", tmp_path / "nothing")
    assert cli.main(["predict", "x.jpg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no default model") and "--model" in err and "\n" not in err


def test_expand_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.tiff", "a/b/z.txt", "a/.hidden.jpg", "w.png"):
        (tmp_path / name).write_bytes(b"")
    files, problems = expand_paths([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "missing.jpg",
                                    str(tmp_path / "none*.bmp"), tmp_path / "w.png"])
    assert [Path(f).name for f in files] == ["y.tiff", "x.JPG", "w.png"]
    assert [reason for _, reason in problems] == ["no such file or folder", "no file matches this pattern"]


def test_write_predictions_csv_with_labels(predictor, tiny_isic):
    result = predictor.predict_paths(_images(tiny_isic)[:2])
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        write_predictions_csv(result, None, labels=["melanoma", None])
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["label"] for r in rows] == ["melanoma", ""]
    assert rows[0]["melanoma_alert"] in ("true", "false")


def test_missing_model_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        Predictor.load(tmp_path / "nope.onnx")


def test_cli_predict_explain_writes_pngs(model_dir, tiny_isic, tmp_path):
    image = _images(tiny_isic)[0]
    assert cli.main(["predict", str(image), "--model", str(model_dir), "--out", str(tmp_path / "p.csv"),
                     "--explain", str(tmp_path / "cams")]) == 0
    assert sorted(p.name for p in (tmp_path / "cams").glob("*.png"))[0].startswith(image.stem + "_")
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2


@pytest.mark.parametrize("constancy,detail", [("none", None), ("shades_of_gray", None), ("shades_of_gray", 150),
                                              ("shades_of_gray_standardised", 150)])
@pytest.mark.parametrize("size", [(180, 180), (200, 150)], ids=["square", "landscape"])
def test_preprocess_matches_the_trainers_decode_cache(tmp_path, tiny_isic, size, constancy, detail):
    """Predict must feed the model the pixels validation (thresholds, temperature, referral) was computed on:
    the trainer decodes through transforms.prepare_image (PIL resize, colour constancy), then eval_transform."""
    from melanoma.datamodule import decode_prepared  # the trainer's cache decoder

    predictor = Predictor.load(build_test_model(tmp_path / "m", image_size=64))
    predictor.meta["preprocessing"]["color_constancy"] = constancy
    if detail:
        predictor.meta["preprocessing"]["detail_size"] = detail
    path = tmp_path / "img.png"
    Image.open(_images(tiny_isic)[0]).convert("RGB").resize(size).save(path)
    cached = eval_transform(predictor.pre)(decode_prepared(path, predictor.pre))
    torch.testing.assert_close(predictor.preprocess(path), cached, atol=1e-6, rtol=0)


@pytest.mark.parametrize("constancy", ["none", "shades_of_gray", "shades_of_gray_standardised"])
def test_numpy_preprocessing_equals_the_torch_eval_transform_on_real_images(ham_dir, shared_train, constancy):
    """The ONE inference preprocessing (images.model_input, numpy + PIL) vs torchvision's eval preset on real
    images of both shapes (9-class 180x180 JPEGs; HAM10000 600x450), with the shipped model's preprocessing."""
    from melanoma.images import load_image, model_input, prepare_image
    from melanoma.predict import DEFAULT_MODEL_DIR

    pre = {**json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())["preprocessing"],
           "color_constancy": constancy}
    paths = sorted((shared_train / "melanoma").glob("*.jpg"))[:4] + sorted((ham_dir / "images").glob("*.jpg"))[:4]
    transform = eval_transform(pre)
    for path in paths:
        image = load_image(path)
        expected = transform(prepare_image(image, pre)).numpy()
        np.testing.assert_allclose(model_input(image, pre), expected, atol=1e-4, rtol=0)
        assert np.abs(model_input(image, pre) - expected).max() < 1e-6  # in fact float32-exact


def test_numpy_tta_views_equal_the_torch_views():
    from melanoma.images import tta_views as numpy_views
    from melanoma.transforms import tta_views as torch_views

    x = torch.randn(2, 3, 8, 8)
    for a, b in zip(numpy_views(x.numpy(), 8), torch_views(x, 8)):
        np.testing.assert_array_equal(a, b.numpy())


def test_the_shipped_default_model_loads_and_flags_images(tiny_isic):
    """models/default (what `melanoma predict` uses without --model) is a complete, self-describing artifact."""
    from melanoma.predict import DEFAULT_MODEL_DIR

    predictor = Predictor.load()
    assert Path(predictor.source) == DEFAULT_MODEL_DIR
    meta = predictor.meta
    assert predictor.class_names == CLASSES and meta["melanoma_class"] == "melanoma"
    assert 0.0 < predictor.alert_threshold < 1.0 and meta["thresholds"]["target_sensitivity"] == 0.9
    assert meta["model_card"]["intended_use"].startswith("Decision support")
    assert "licence" in meta["model_card"] and meta["referral"]["version"] == referral.METHOD_VERSION
    assert "melanoma threshold" in meta["model_card"]["limitations"]  # the measured cross-source loss, and the fix
    assert meta["referral"]["input_check"]["statistics"] == ["contrast", "edge_ratio"]
    assert len(meta["extra"]["fingerprint.pixel"]) > 12000  # 9-class Train + HAM10000 images, for evaluate
    melanomas = sorted((tiny_isic / "melanoma").glob("*.jpg"))
    results = predictor.predict([Image.open(p) for p in melanomas])
    assert len(results) == len(melanomas)
    assert all(abs(sum(r.probabilities.values()) - 1.0) < 1e-5 for r in results)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    assert predictor.predict(noise)[0].refer  # not a dermoscopic image


def test_the_shipped_model_carries_the_validation_outputs_behind_its_threshold(tmp_path):
    """`melanoma threshold models-copy --target-sensitivity S` must work on the shipped model (README): its
    validation predictions travel with it and give back the stored threshold at the stored target."""
    from melanoma.finalize import rethreshold
    from melanoma.predict import DEFAULT_MODEL_DIR

    copy = tmp_path / "clinic-model"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    stored = json.loads((copy / "model.json").read_text())["thresholds"]
    again = rethreshold(copy, stored["target_sensitivity"])
    assert again["new"] == pytest.approx(stored["melanoma_alert"], abs=1e-5)  # CSV keeps 6 decimals
    assert again["sensitivity"] >= stored["target_sensitivity"] and again["n_melanoma"] >= 50
    stricter = rethreshold(copy, 0.95)
    assert stricter["new"] < again["new"] and stricter["sensitivity"] >= 0.95


# ------------------------------------------------------------------------------------------------ --resume
def _small_images(folder: Path, n: int, seed: int = 0) -> Path:
    """n generated 40x40 PNGs (random colour blobs), names with a space like the real class folders."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        pixels[10:30, 10:30] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img {i:04d}.png")
    return folder


def test_predict_notes_when_the_alert_fires_unlike_the_validation_images(model_dir, tmp_path, capsys):
    """The site check on a batch (melanoma.site_check): an alert on every image of 60, where the card's validation
    operating point (sensitivity 0.9, specificity 0.7) predicts 30-48%, gets one `note:` naming the share and the
    remedy; 40 images are too few to say anything; other views than the alert's are not judged."""
    meta = json.loads((model_dir / "model.json").read_text())
    always = _edit_meta(model_dir, tmp_path / "always", thresholds={**meta["thresholds"], "melanoma_alert": 0.0},
                        metrics={**meta.get("metrics", {}), "melanoma_sensitivity": 0.9, "melanoma_specificity": 0.7})
    folder = _small_images(tmp_path / "site", 60)
    assert cli.main(["predict", str(folder), "--model", str(always), "--out", str(tmp_path / "p.csv")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "fired on 100% (94%-100%) of these 60 images" in notes[0]
    assert "30%-48%" in notes[0] and "melanoma threshold MODEL --predictions CSV" in notes[0]
    assert cli.main(["predict", str(folder), "--model", str(always), "--tta-views", "2"]) == 0
    assert "note: " not in capsys.readouterr().err
    for path in sorted(folder.glob("*.png"))[:20]:
        path.unlink()
    assert cli.main(["predict", str(folder), "--model", str(always), "--out", str(tmp_path / "q.csv")]) == 0
    assert "note: " not in capsys.readouterr().err


def _rows_by_path(csv_path: Path) -> tuple[list[str], dict[str, list[str]], int]:
    text = csv_path.read_text()
    assert text.endswith("\n"), "the CSV ends inside a row"
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == len(header) for r in rows), "a broken row"
    return header, {r[1]: r for r in rows}, len(rows)


def _assert_same_rows(a: dict, b: dict, header: list[str]) -> None:
    assert set(a) == set(b)
    numeric = [i for i, name in enumerate(header) if name in CLASSES or name in ("confidence", "melanoma_probability")]
    for path, row in a.items():
        other = b[path]
        # another batch composition may move a float32 logit in the last place: compare numbers to 1e-5
        np.testing.assert_allclose([float(row[i]) for i in numeric], [float(other[i]) for i in numeric], atol=1e-5)
        assert [v for i, v in enumerate(row) if i not in numeric] == [v for i, v in enumerate(other) if i not in numeric]


@pytest.mark.slow
def test_predict_killed_with_sigkill_then_resumed_writes_every_image_once(tmp_path):
    """A real `melanoma predict` subprocess killed with SIGKILL at a random point, then --resume: no missing,
    duplicated or broken row, the same rows as an uninterrupted run, and the summary counts every image once."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    n = 400
    folder = _small_images(tmp_path / "photos", n)
    model = build_test_model(tmp_path / "model", image_size=48)
    command = [sys.executable, "-m", "melanoma", "predict", str(folder), "--model", str(model), "--batch-size", "4"]
    full = tmp_path / "full.csv"
    subprocess.run([*command, "--out", str(full)], check=True, capture_output=True, timeout=600)
    header, expected, _ = _rows_by_path(full)
    assert len(expected) == n

    killed = tmp_path / "killed.csv"
    kill_after = random.Random().randint(8, n // 2)  # rows on disk before the kill: a random point of the run
    proc = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if killed.exists() and killed.read_bytes().count(b"\n") > kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill ({kill_after} rows)"
    before = killed.read_bytes().count(b"\n") - 1
    assert 0 < before < n

    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n} predicted" in resumed.stderr and "from the earlier run" in resumed.stderr
    got_header, got, count = _rows_by_path(killed)
    assert got_header == header and count == len(got) == n  # no duplicate, none missing
    _assert_same_rows(got, expected, header)


def test_resume_drops_a_half_written_last_row(model_dir, tmp_path, capsys):
    folder = _small_images(tmp_path / "photos", 6)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(folder), "--model", str(model_dir), "--out", str(out)]) == 0
    header, rows, _ = _rows_by_path(out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # header, 2 rows, and a row cut mid-way
    capsys.readouterr()
    assert cli.main(["predict", str(folder), "--model", str(model_dir), "--out", str(out), "--resume"]) == 0
    assert "6 predicted (2 from the earlier run)" in capsys.readouterr().err
    _, resumed, count = _rows_by_path(out)
    assert count == 6
    _assert_same_rows(resumed, rows, header)


def test_resume_without_an_existing_file_starts_fresh(model_dir, tmp_path, capsys):
    folder = _small_images(tmp_path / "photos", 3)
    out = tmp_path / "new.csv"
    assert cli.main(["predict", str(folder), "--model", str(model_dir), "--out", str(out), "--resume"]) == 0
    assert _rows_by_path(out)[2] == 3 and "3 predicted, 0 skipped" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--format", "json", "--out", "p.json"], "--resume works with --format csv only"),
    ([], "--resume needs --out FILE"),
])
def test_resume_option_errors(model_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    image = _small_images(tmp_path / "photos", 1)
    assert cli.main(["predict", str(image), "--model", str(model_dir), "--resume", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and message in err


def test_resume_refuses_another_models_csv(model_dir, tmp_path, capsys):
    folder = _small_images(tmp_path / "photos", 2)
    out = tmp_path / "p.csv"
    out.write_text("image,path,a,b\nx.png,x.png,0.1,0.9\n")
    assert cli.main(["predict", str(folder), "--model", str(model_dir), "--out", str(out), "--resume"]) == 2
    assert "its columns are not this model's" in capsys.readouterr().err
    assert out.read_text() == "image,path,a,b\nx.png,x.png,0.1,0.9\n"  # nothing already done is lost


def test_detail_warning_only_below_the_models_detail_size():
    from melanoma.predict import LOW_DETAIL, detail_warning

    assert detail_warning(120, {"input_size": 64}) == ""  # no detail_size: trained on mixed detail, no claim
    assert detail_warning(150, {"detail_size": 150}) == "" and detail_warning(4000, {"detail_size": 150}) == ""
    text = detail_warning(120, {"detail_size": 150})
    assert text.startswith(LOW_DETAIL) and "120 px" in text and "150 px" in text


def test_images_with_less_detail_than_training_carry_a_warning_everywhere(model_dir, tiny_isic, tmp_path, capsys):
    """A model trained at detail_size 150: a real 180 px image predicts without warning, the same image reduced
    to 100 px carries one -- in Prediction, the batch path, the CSV column and the command's summary."""
    model = _edit_meta(model_dir, tmp_path / "detail", preprocessing={
        **json.loads((model_dir / "model.json").read_text())["preprocessing"], "detail_size": 150})
    sharp = _images(tiny_isic)[0]
    small = tmp_path / "small.png"
    Image.open(sharp).convert("RGB").resize((100, 100), Image.BICUBIC).save(small)
    predictor = Predictor.load(model)
    one_sharp, one_small = predictor.predict([sharp, small])
    assert one_sharp.warning == "" and "shorter side 100 px" in one_small.warning
    batch = predictor.predict_paths([sharp, small])
    assert batch.warnings == [one_sharp.warning, one_small.warning]
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(sharp), str(small), "--model", str(model), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["warning"] for r in rows] == ["", one_small.warning]
    assert "1 with less detail than the training images" in capsys.readouterr().err
    # a model without detail_size (the fixture) never warns
    assert predictor.predict(small)[0].warning != "" and Predictor.load(model_dir).predict(small)[0].warning == ""


def test_a_prediction_result_survives_its_arrays(predictor, tiny_isic):
    from melanoma.predict import PredictionResult

    paths = sorted(str(p) for p in (tiny_isic / "melanoma").glob("*.jpg"))[:3]
    result = predictor.predict_paths([*paths, str(tiny_isic / "missing.jpg")])
    result.warning = ["", "less detail", ""]
    back = PredictionResult.from_arrays(result.to_arrays(), result.class_names)
    assert back.paths == result.paths and back.errors == result.errors and back.warnings == result.warnings
    assert back.refer_reason == result.refer_reason and back.alert.dtype == bool
    assert np.array_equal(back.probs, result.probs) and np.array_equal(back.refer, result.refer)
    assert PredictionResult.from_arrays(PredictionResult.concat([], ["a"]).to_arrays(), ["a"]).paths == []


def test_the_models_own_views_are_the_default_and_the_referral_sees_the_unaugmented_view(model_dir, tiny_isic,
                                                                                         tmp_path, capsys):
    """model.json test_time_augmentation (written by `threshold --tta-views`): predict averages those views unless
    told otherwise; the referral keeps deciding on the un-augmented view it was fitted on."""
    four = Predictor.load(_edit_meta(model_dir, tmp_path / "four", test_time_augmentation={"views": 4}))
    paths = _images(tiny_isic)[:6]
    default, one = four.predict_paths(paths), four.predict_paths(paths, tta=False)
    np.testing.assert_allclose(default.probs, four.predict_paths(paths, tta=True, tta_views=4).probs, atol=1e-7)
    np.testing.assert_allclose(one.probs, Predictor.load(model_dir).predict_paths(paths).probs, atol=1e-7)
    assert not np.allclose(default.probs, one.probs, atol=1e-9)
    four.referrer.refer_confidence = float(np.median(one.probs.max(axis=1)))  # refers about half on one view
    referred = four.predict_paths(paths, tta=False)
    assert 0 < referred.refer.sum() < len(paths)
    assert np.array_equal(four.predict_paths(paths).refer, referred.refer)
    assert four.views(tta=True) == 8 and four.views(tta_views=2) == 2 and four.views(tta=False, tta_views=5) == 1
    assert four.views_warning(4) == "" and "chosen on 4" in four.views_warning(1)

    assert cli.main(["predict", *map(str, paths[:2]), "--model", str(tmp_path / "four"), "--no-tta"]) == 0
    assert "warning: predicting with 1 test-time view(s); the model's alert threshold was chosen on 4" in \
        capsys.readouterr().err
    assert cli.main(["predict", *map(str, paths[:2]), "--model", str(tmp_path / "four")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("section", [{"views": 9}, {"views": "8"}, {"views": 0}, "eight"])
def test_a_bad_view_count_in_model_json_is_named_at_load(model_dir, tmp_path, section):
    bad = _edit_meta(model_dir, tmp_path / "bad", test_time_augmentation=section)
    with pytest.raises(ModelError, match="test_time_augmentation.views must be an integer from 1 to 8"):
        Predictor.load(bad)


def test_explain_panels_show_the_prediction_the_csv_holds_at_any_view_count(model_dir, tiny_isic, tmp_path,
                                                                            monkeypatch):
    """Grad-CAM panels predict with the model's own views; `--no-tta` on a TTA model hands them its one-view
    predictions instead, so panel and CSV agree."""
    from melanoma.predict import run_predict

    four = _edit_meta(model_dir, tmp_path / "four", test_time_augmentation={"views": 4})
    handed = []
    monkeypatch.setattr("melanoma.explain.write_explanations",
                        lambda predictor, paths, out, predictions=None: handed.append(predictions) or [])
    image = str(_images(tiny_isic)[0])
    assert run_predict([image], model=str(four), out=str(tmp_path / "one.csv"), tta=False,
                       explain_dir=str(tmp_path / "cam")) == 0
    with open(tmp_path / "one.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert handed[0][0].melanoma_probability == pytest.approx(float(row["melanoma_probability"]), abs=1e-6)
    assert run_predict([image], model=str(four), out=str(tmp_path / "four.csv"), explain_dir=str(tmp_path / "cam")) == 0
    assert handed[1] is None  # the model's own views: write_explanations predicts them itself
