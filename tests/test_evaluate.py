"""`melanoma evaluate` end to end on real images (tiny_isic) with a random-weight test model artifact."""

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn import metrics as skm

from melanoma import cli
from melanoma.artifacts import HASH_KEY, file_sha256
from melanoma.errors import DataError
from melanoma.evaluate import evaluate, format_metrics, read_predictions_csv

PLOTS = {"confusion_matrix.png", "confusion_matrix_normalised.png", "roc_per_class.png", "reliability.png",
         "roc_melanoma.png", "pr_melanoma.png"}


@pytest.fixture(scope="module")
def test_model(tmp_path_factory):
    from melanoma.artifacts import build_test_model

    return build_test_model(tmp_path_factory.mktemp("model") / "run", image_size=64)


@pytest.fixture(scope="module")
def evaluated(test_model, tiny_isic, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(test_model, tiny_isic, out=out, bootstrap=200, seed=3), out


def _ham_rows(ham_dir):
    with open(ham_dir / "HAM10000_metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def _mini_ham(ham_dir, target, rows):
    """A HAM10000-layout folder holding only `rows` (metadata dicts) and copies of their images."""
    (target / "images").mkdir(parents=True)
    for r in rows:
        shutil.copy2(ham_dir / "images" / f"{r['image_id']}.jpg", target / "images")
    with open(target / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_writes_metrics_predictions_and_plots(evaluated):
    result, out = evaluated
    assert {p.name for p in out.iterdir()} >= PLOTS | {"metrics.json", "predictions.csv"}
    assert set(result["files"]["plots"]) == PLOTS
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert result["n_images"] == 45 and result["data"]["unreadable"] == 0 and result["uncovered_labels"] == {}
    rows = _rows(out / "predictions.csv")
    classes = result["classes"]
    assert list(rows[0])[:2] == ["image", "path"] and list(rows[0])[2:2 + len(classes)] == classes
    assert {"prediction", "confidence", "melanoma_probability", "melanoma_alert", "refer", "label"} <= set(rows[0])
    assert all(r["image"] == r["path"].rsplit("/", 1)[-1] for r in rows)


def test_numbers_equal_sklearn_on_the_written_csv(evaluated):
    result, out = evaluated
    classes = result["classes"]
    rows = _rows(out / "predictions.csv")
    y = np.array([classes.index(r["label"]) for r in rows])
    pred = np.array([classes.index(r["prediction"]) for r in rows])
    probs = np.array([[float(r[c]) for c in classes] for r in rows])
    assert result["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred))
    assert result["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert result["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(len(classes))).tolist()
    for k, name in enumerate(classes):
        assert result["per_class"][name]["auc"]["value"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))
    mel = classes.index("melanoma")
    p_mel = np.array([float(r["melanoma_probability"]) for r in rows])
    alert = np.array([r["melanoma_alert"] == "true" for r in rows])
    threshold = result["melanoma"]["alert_threshold"]
    assert threshold == result["model"]["thresholds"]["melanoma_alert"]  # the model's own alert threshold
    np.testing.assert_array_equal(alert, p_mel >= threshold)
    assert result["melanoma"]["auc"]["value"] == pytest.approx(skm.roc_auc_score(y == mel, p_mel))
    assert result["melanoma"]["sensitivity"]["value"] == pytest.approx(skm.recall_score(y == mel, alert))
    assert result["melanoma"]["specificity"]["value"] == pytest.approx(skm.recall_score(y != mel, ~alert))
    table = read_predictions_csv(out / "predictions.csv")
    assert table.class_names == classes and table.labels == [r["label"] for r in rows]


def test_format_metrics_is_a_short_table(evaluated):
    text = format_metrics(evaluated[0])
    assert "balanced accuracy" in text and "pigmented benign keratosis" in text and "pAUC" in text
    assert "the alert fires on: " in text and "referral clinic (10% melanoma) " in text
    assert len(text.splitlines()) < 40


def test_unreadable_images_are_skipped_and_counted(test_model, tiny_isic, tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("melanoma", "nevus"):
        shutil.copytree(tiny_isic / name, data / name)
    (data / "melanoma" / "broken.jpg").write_bytes(b"not a jpeg")
    result = evaluate(test_model, data, out=tmp_path / "out", bootstrap=20)
    assert result["unreadable_images"] == 1 and result["n_images"] == 10
    assert result["data"]["unreadable_files"][0]["path"].endswith("broken.jpg")
    err = capsys.readouterr().err
    assert err.count("broken.jpg") == 1


def test_a_picture_filed_under_two_labels_is_left_out_and_named(test_model, tiny_isic, tmp_path, capsys):
    data = tmp_path / "data"
    for name in ("melanoma", "nevus", "seborrheic keratosis"):
        shutil.copytree(tiny_isic / name, data / name)
    melanoma, nevus = sorted((data / "melanoma").glob("*.jpg"))[0], sorted((data / "nevus").glob("*.jpg"))[0]
    shutil.copyfile(melanoma, data / "nevus" / "copy-of-a-melanoma.jpg")   # one picture, two labels
    shutil.copyfile(nevus, data / "nevus" / "same-label-copy.jpg")          # a copy, same label: no conflict
    shutil.copyfile(nevus, data / "seborrheic keratosis" / "sk-copy.jpg")   # two labels; one target under binary
    result = evaluate(test_model, data, out=tmp_path / "out", bootstrap=20)
    conflicts = result["label_conflicts"]
    assert conflicts["n_pictures"] == 2 and conflicts["n_images"] == 5 and not conflicts["scored"]
    assert result["n_images"] == 18 - 5 and len(_rows(tmp_path / "out" / "predictions.csv")) == 18
    assert any(p.endswith("copy-of-a-melanoma.jpg") for p in conflicts["images"])
    assert "5 images are 2 pictures filed under two or more labels" in capsys.readouterr().err

    binary = evaluate(test_model, data, out=tmp_path / "binary", label_map="binary", bootstrap=20)
    assert binary["label_conflicts"]["n_pictures"] == 1 and binary["n_images"] == 18 - 2  # nevus = SK = other
    assert cli.main(["evaluate", "--model", str(test_model), "--data", str(data), "--out", str(tmp_path / "all"),
                     "--bootstrap", "0", "--score-label-conflicts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 18


def test_uncovered_labels_are_counted_not_dropped(test_model, tiny_isic, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_isic / "melanoma", data / "melanoma")
    shutil.copytree(tiny_isic / "nevus", data / "solar lentigo")  # a class the model does not know
    result = evaluate(test_model, data, out=tmp_path / "out", bootstrap=20)
    assert result["uncovered_labels"] == {"solar lentigo": 5}
    assert result["n_images"] == 5 and result["data"]["n_images"] == 10
    assert len(_rows(tmp_path / "out" / "predictions.csv")) == 10  # every image is still predicted


def test_isic2018_label_map_on_the_9_class_folders(test_model, tiny_isic, tmp_path):
    result = evaluate(test_model, tiny_isic, out=tmp_path / "out", label_map="isic2018", bootstrap=20)
    assert result["classes"] == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert result["per_class"]["AKIEC"]["support"] == 10 and result["per_class"]["BKL"]["support"] == 10
    assert result["melanoma"]["class"] == "MEL" and result["label_map"]["name"] == "isic2018"


def test_ham10000_dx_codes_with_isic2018(test_model, ham_dir, tmp_path):
    """A small HAM10000-layout copy (2 images per dx) evaluates with --label-map isic2018."""
    rows = _ham_rows(ham_dir)
    picked = [r for dx in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
              for r in [x for x in rows if x["dx"] == dx][:2]]
    ham = _mini_ham(ham_dir, tmp_path / "ham", picked)
    result = evaluate(test_model, ham, label_map="isic2018", bootstrap=20)
    assert result["uncovered_labels"] == {} and result["n_images"] == 14
    lesions = {r["lesion_id"] for r in picked}  # the first two bkl, df, mel, vasc images are one lesion each
    assert result["bootstrap"]["unit"] == "group" and result["bootstrap"]["n_units"] == len(lesions) < 14
    assert all(row["support"] == 2 for row in result["per_class"].values())
    assert (test_model / "eval-ham" / "metrics.json").is_file()  # default output folder


def test_unknown_labels_without_a_map_explain_the_fix(test_model, ham_dir, tmp_path):
    ham = _mini_ham(ham_dir, tmp_path / "ham", _ham_rows(ham_dir)[:3])
    with pytest.raises(DataError, match="--label-map"):
        evaluate(test_model, ham, out=tmp_path / "out", bootstrap=0)


def test_cli_evaluate(test_model, tiny_isic, tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(test_model), "--data", str(tiny_isic),
                     "--out", str(tmp_path / "out"), "--bootstrap", "30", "--label-map", "binary"]) == 0
    out = capsys.readouterr().out
    assert "melanoma vs rest" in out and "wrote" in out
    assert cli.main(["evaluate", "--model", str(test_model), "--data", str(tiny_isic),
                     "--out", str(tmp_path / "o2"), "--label-map", "nope"]) == 2


def _model_trained_on_three_classes(test_model, tiny_isic, tmp_path, recorded_source=None):
    """(copy of the test model, its "training" folder = 3 class folders of tiny_isic, image count); model.json
    records `recorded_source` (default: that folder) as the training data."""
    train_part = tmp_path / "train_part"
    for class_dir in sorted(p for p in tiny_isic.iterdir() if p.is_dir())[:3]:
        shutil.copytree(class_dir, train_part / class_dir.name)
    model = tmp_path / "model"
    shutil.copytree(test_model, model)
    meta = json.loads((model / "model.json").read_text())
    meta["data"] = {"source": str(recorded_source or train_part)}
    (model / "model.json").write_text(json.dumps(meta))
    return model, train_part, sum(1 for _ in train_part.glob("*/*.jpg"))


def test_images_seen_in_training_are_excluded(test_model, tiny_isic, tmp_path):
    """The model's training data (model.json data.source) is checked: overlapping images are never scored."""
    model, train_part, n_train = _model_trained_on_three_classes(test_model, tiny_isic, tmp_path)
    result = evaluate(model, tiny_isic, out=tmp_path / "eval", bootstrap=20)
    assert result["training_overlap"]["n_excluded"] == n_train
    assert result["n_images"] == 45 - n_train
    unchecked = evaluate(model, tiny_isic, out=tmp_path / "eval2", bootstrap=20, exclude_overlap_with=False)
    assert unchecked["training_overlap"]["n_excluded"] == 0 and unchecked["n_images"] == 45
    with pytest.raises(DataError, match="also occurs in the model's training data"):
        evaluate(model, train_part, out=tmp_path / "eval3", bootstrap=20)


def test_extra_training_sources_are_checked_too(test_model, tiny_isic, tmp_path):
    """A model trained with --extra-data: images of every recorded source are left out, each source named."""
    classes = sorted(p for p in tiny_isic.iterdir() if p.is_dir())
    parts = [tmp_path / "primary", tmp_path / "extra"]
    for part, chosen in zip(parts, (classes[:2], classes[2:3])):
        for class_dir in chosen:
            shutil.copytree(class_dir, part / class_dir.name)
    model = tmp_path / "model"
    shutil.copytree(test_model, model)
    meta = json.loads((model / "model.json").read_text())
    meta["data"] = {"source": str(parts[0]), "extra_sources": [str(parts[1])]}
    (model / "model.json").write_text(json.dumps(meta))
    result = evaluate(model, tiny_isic, out=tmp_path / "eval", bootstrap=20)
    assert result["training_overlap"]["n_excluded"] == 15 and result["n_images"] == 30
    assert result["training_overlap"]["checked_against"] == f"{parts[0]}, {parts[1]}"
    meta["data"]["extra_sources"] = [str(tmp_path / "gone")]
    (model / "model.json").write_text(json.dumps(meta))
    partly = evaluate(model, tiny_isic, out=tmp_path / "eval2", bootstrap=20)  # the sources still there are checked
    assert partly["training_overlap"]["missing"] == [str(tmp_path / "gone")] and partly["n_images"] == 35


def test_other_photos_of_a_trained_lesion_are_excluded_too(test_model, ham_dir, tmp_path):
    """HAM10000: a lesion with one photo in the training data is left out whole (group = lesion_id)."""
    by_lesion = {}
    for row in _ham_rows(ham_dir):
        by_lesion.setdefault(row["lesion_id"], []).append(row)
    twins = [v for v in by_lesion.values() if len(v) == 2][:3]
    singles = [v for v in by_lesion.values() if len(v) == 1][:5]
    ham = _mini_ham(ham_dir, tmp_path / "ham", [r for v in twins + singles for r in v])
    train = tmp_path / "train" / "nevus"
    train.mkdir(parents=True)
    for lesion in twins:  # only the FIRST photo of each twin lesion was trained on
        image_id = lesion[0]["image_id"]
        shutil.copy(ham_dir / "images" / f"{image_id}.jpg", train / f"{image_id}.jpg")
    model = tmp_path / "model"
    shutil.copytree(test_model, model)
    meta = json.loads((model / "model.json").read_text())
    meta["data"] = {"source": str(tmp_path / "train")}
    (model / "model.json").write_text(json.dumps(meta))
    result = evaluate(model, ham, out=tmp_path / "eval", bootstrap=20, label_map="isic2018")
    overlap = result["training_overlap"]
    assert overlap["n_shared_images"] == 3 and overlap["n_same_lesion_images"] == 3
    assert result["n_images"] == 5


def test_the_fingerprint_in_the_model_file_replaces_the_training_folders(test_model, tiny_isic, tmp_path):
    """A model carrying its training-set fingerprint is checked on a machine without its training data."""
    from safetensors.torch import load_file, save_file

    from melanoma import fingerprint
    from melanoma.data import discover, scan

    model, train_part, n_train = _model_trained_on_three_classes(test_model, tiny_isic, tmp_path,
                                                                 recorded_source=tmp_path / "moved-away")
    tensors = load_file(str(model / "model.safetensors"))
    prints = fingerprint.build(scan(discover(train_part)))
    save_file({**tensors, **{f"extra.{k}": v for k, v in prints.items()}}, str(model / "model.safetensors"))
    meta = json.loads((model / "model.json").read_text())  # the weights changed: record their new hash
    meta[HASH_KEY] = file_sha256(model / "model.safetensors")
    (model / "model.json").write_text(json.dumps(meta))
    result = evaluate(model, tiny_isic, out=tmp_path / "eval", bootstrap=20)
    overlap = result["training_overlap"]
    assert overlap["n_excluded"] == n_train and result["n_images"] == 45 - n_train
    assert overlap["checked_against"].startswith("training-set fingerprint of 15 images") and overlap["matched_by"]


@pytest.mark.slow
def test_default_model_on_its_own_training_images_still_leaves_them_out(shared_train, tmp_path, capsys):
    """Issue 15: `--exclude-overlap-with DIR` used to REPLACE the training-data check, so the shipped model scored
    its own training images. Now DIR only adds: real Train images, a turned and an enlarged copy are left out,
    only the new (synthetic) pictures are scored, and the counts say so."""
    from pathlib import Path

    from PIL import Image

    model = Path(__file__).resolve().parents[1] / "models" / "default"
    data = tmp_path / "data"
    for label, seed in (("melanoma", 0), ("nevus", 10)):
        (data / label).mkdir(parents=True)
        for image in sorted((shared_train / label).glob("*.jpg"))[:3]:
            shutil.copy(image, data / label / image.name)
        for i in range(3):  # pictures no model has seen
            noise = np.random.default_rng(seed + i).integers(0, 255, (120, 160, 3), dtype=np.uint8)
            Image.fromarray(noise).save(data / label / f"new{i}.png")
    trained = Image.open(sorted((shared_train / "melanoma").glob("*.jpg"))[5]).convert("RGB")
    trained.transpose(Image.Transpose.ROTATE_90).save(data / "melanoma" / "turned.png")
    trained.resize((300, 300)).save(data / "melanoma" / "enlarged.jpg", quality=92)
    elsewhere = tmp_path / "elsewhere" / "nevus"
    elsewhere.mkdir(parents=True)
    Image.new("RGB", (40, 40), (90, 60, 50)).save(elsewhere / "unrelated.png")

    assert cli.main(["evaluate", "--model", str(model), "--data", str(data), "--exclude-overlap-with",
                     str(elsewhere.parent), "--bootstrap", "0", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 scored / 8 excluded (in the training data) / 14 total images")
    overlap = json.loads((tmp_path / "out" / "metrics.json").read_text())["training_overlap"]
    assert overlap["checked_against"].startswith("training-set fingerprint of") and str(elsewhere.parent) in \
        overlap["checked_against"]
    assert overlap["matched_by"] == {"pixels+isic-id": 6, "phash": 1, "phash-turned": 1}

    assert cli.main(["evaluate", "--model", str(model), "--data", str(data), "--no-overlap-check",
                     "--bootstrap", "0", "--out", str(tmp_path / "all")]) == 0
    captured = capsys.readouterr()
    assert "warning: --no-overlap-check" in captured.err
    assert captured.out.startswith("14 scored / 0 excluded") and "WARNING: overlap check disabled" in captured.out
    recorded = json.loads((tmp_path / "all" / "metrics.json").read_text())["training_overlap"]
    assert recorded["checked"] is False and "--no-overlap-check" in recorded["note"]


def test_a_killed_evaluation_resumes_and_scores_the_same(test_model, tiny_isic, tmp_path, monkeypatch, capsys):
    from melanoma import partial
    from melanoma.predict import Predictor

    reference = evaluate(test_model, tiny_isic, out=tmp_path / "whole", bootstrap=20)
    left_before = set((partial.cache_root() / "partial").glob("*"))
    monkeypatch.setattr(partial, "CHUNK", 16)  # 45 images: 3 chunks
    original, calls = Predictor.predict_paths, []

    def killed_at_the_third_chunk(self, paths, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(paths))
        return original(self, paths, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_paths", killed_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        evaluate(test_model, tiny_isic, out=tmp_path / "out", bootstrap=20)
    assert not (tmp_path / "out" / "metrics.json").exists()
    calls.clear()
    monkeypatch.setattr(Predictor, "predict_paths", lambda self, paths, *a, **k: calls.append(len(paths))
                        or original(self, paths, *a, **k))
    result = evaluate(test_model, tiny_isic, out=tmp_path / "out", bootstrap=20)
    assert calls == [13]  # only the chunk the kill interrupted
    assert "resuming evaluate: 32 of 45 images" in capsys.readouterr().err
    assert result["melanoma"]["auc"] == reference["melanoma"]["auc"]
    assert (tmp_path / "out" / "predictions.csv").read_text() == (tmp_path / "whole" / "predictions.csv").read_text()
    assert set((partial.cache_root() / "partial").glob("*")) == left_before  # removed once the outputs are written
