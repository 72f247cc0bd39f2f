"""The HTML report: from a tiny fake run folder (written here), from a real tiny training run and from a real
`melanoma evaluate` output folder; it says so when pieces are missing and its text is written for a reader."""

import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from melanoma import cli
from melanoma.errors import DataError
from melanoma.report import (STOCK_LIMITATIONS_START, build_report, describe_limitations, describe_training_data,
                             diagnose_fit, read_training_log)

LOG_HEADER = ["epoch", "lr-AdamW", "step", "train/acc", "train/bal_acc", "train/loss_epoch", "train/loss_step",
              "val/acc", "val/bal_acc", "val/loss", "val/mel_auc"]


def _write_log(path, train_acc, val_acc, train_loss, val_loss):
    """A Lightning CSVLogger-style metrics.csv: lr rows without epoch, step rows, val rows, train epoch rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, LOG_HEADER)
        w.writeheader()
        for e, (ta, va, tl, vl) in enumerate(zip(train_acc, val_acc, train_loss, val_loss)):
            w.writerow({"lr-AdamW": 1e-3, "step": e * 10})
            w.writerow({"epoch": e, "step": e * 10 + 5, "train/loss_step": tl + 0.3})
            w.writerow({"epoch": e, "step": e * 10 + 9, "val/acc": va, "val/bal_acc": va - 0.02, "val/loss": vl,
                        "val/mel_auc": 0.8})
            w.writerow({"epoch": e, "step": e * 10 + 9, "train/acc": ta, "train/bal_acc": ta - 0.02,
                        "train/loss_epoch": tl})


def _overfitting_log(path, epochs=10):
    t = np.arange(epochs)
    _write_log(path, 0.5 + 0.45 * (1 - np.exp(-t / 2)), 0.45 + 0.15 * (1 - np.exp(-t / 1.5)),
               1.5 * np.exp(-t / 3) + 0.1, 1.2 - 0.4 * (1 - np.exp(-t)) + 0.06 * np.maximum(t - 3, 0))


def _fake_run(root, tiny_isic, classes):
    """model.json, data_summary.json, logs/metrics.csv and val_predictions.csv (paths to real tiny images)."""
    run = root / "run"
    run.mkdir()
    meta = {"architecture": "seed-cnn", "class_names": classes, "melanoma_class": "melanoma",
            "preprocessing": {"input_size": 64}, "temperature": 1.3,
            "calibration": {"temperature": 1.3, "ece_before": 0.12, "ece_after": 0.04},
            "thresholds": {"melanoma_alert": 0.3, "target_sensitivity": 0.9, "refer_confidence": 0.4},
            "training": {"epochs": 10, "lr": 0.001, "batch_size": 32, "seed": 0},
            "model_card": {"intended_use": "Decision support for dermatologists, not a diagnosis.",
                           "limitations": "ISIC archive images only."}}
    (run / "model.json").write_text(json.dumps(meta))
    (run / "data_summary.json").write_text(json.dumps({"policy": "drop", "n_images_in": 46, "n_images": 45,
                                                       "counts": {c: 5 for c in classes}, "n_unreadable": 1,
                                                       "unreadable": [{"path": "x.jpg", "reason": "truncated"}]}))
    _overfitting_log(run / "logs" / "metrics.csv")
    rng = np.random.default_rng(0)
    with (run / "val_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "path", *classes, "prediction", "confidence", "melanoma_probability",
                    "melanoma_alert", "refer", "refer_reason", "label"])
        for k, name in enumerate(classes):
            for image in sorted((tiny_isic / name).glob("*.jpg")):
                logits = rng.normal(size=len(classes))
                logits[k] += 1.0
                p = np.exp(logits) / np.exp(logits).sum()
                mel = p[classes.index("melanoma")]
                w.writerow([image.name, str(image), *(f"{v:.6f}" for v in p), classes[int(p.argmax())],
                            f"{p.max():.6f}", f"{mel:.6f}", str(mel >= 0.3).lower(), "false", "", name])
    return run


@pytest.fixture()
def fake_run(tmp_path, tiny_isic):
    classes = sorted(p.name for p in tiny_isic.iterdir())
    return _fake_run(tmp_path, tiny_isic, classes)


def test_report_is_one_self_contained_html_with_every_section(fake_run, tiny_isic):
    path = build_report(fake_run, data=tiny_isic)
    assert path == fake_run / "report.html"
    page = path.read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from outside the file
    assert page.count("data:image/png;base64,") >= 10
    for text in ("Decision support", "Model card", "over-fitting", "pigmented benign keratosis",
                 "Most confident errors", "Audit summary", "truncated", "balanced accuracy", "0.040"):
        assert text in page, text
    assert "could not be built" not in page
    pngs = {p.name for p in (fake_run / "report").glob("*.png")}
    assert pngs >= {"class_distribution.png", "samples.png", "training_curves.png", "confusion_matrix.png",
                    "confusion_matrix_normalised.png", "roc_melanoma.png", "pr_melanoma.png", "reliability.png",
                    "roc_per_class.png", "confident_errors.png"}


def test_alert_threshold_is_compared_at_csv_precision(fake_run):
    """Training's threshold is one melanoma's exact probability; its 6-decimal CSV copy must still be flagged."""
    with (fake_run / "val_predictions.csv").open(newline="") as f:
        lowest = min(float(r["melanoma_probability"]) for r in csv.DictReader(f) if r["label"] == "melanoma")
    meta = json.loads((fake_run / "model.json").read_text())
    meta["thresholds"]["melanoma_alert"] = lowest + 3e-7  # the unrounded value behind the CSV's digits
    (fake_run / "model.json").write_text(json.dumps(meta))
    page = build_report(fake_run).read_text()
    assert re.search(r"sensitivity</td><td>1\.000 ", page)


def test_report_on_a_run_that_has_only_started_says_so(tmp_path):
    run = tmp_path / "started"
    run.mkdir()
    (run / "config.yaml").write_text("model: seed-cnn\n")
    page = build_report(run).read_text()
    assert "No model.json" in page and "No training log yet" in page and "No val_predictions.csv" in page
    assert "No data_summary.json" in page and "could not be built" not in page


def test_a_folder_that_is_neither_run_nor_evaluation_is_an_error(tmp_path, capsys):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path) in err and "\n" not in err and "Traceback" not in err
    with pytest.raises(DataError, match="neither a training run"):
        build_report(tmp_path)


def test_cv_run_diagnoses_each_fold(fake_run, tmp_path):
    (fake_run / "logs" / "metrics.csv").unlink()
    _overfitting_log(fake_run / "fold-0" / "logs" / "metrics.csv")
    _write_log(fake_run / "fold-1" / "logs" / "metrics.csv", [0.3, 0.35, 0.4], [0.3, 0.33, 0.38], [2, 1.9, 1.8],
               [2, 1.9, 1.85])
    page = build_report(fake_run).read_text()
    assert "fold-0" in page and "fold-1" in page and "under-fitting" in page and "over-fitting" in page
    assert "out-of-fold" in page


def test_read_training_log_takes_epoch_values(tmp_path):
    _overfitting_log(tmp_path / "metrics.csv", epochs=4)
    curves = read_training_log(tmp_path / "metrics.csv")
    assert set(curves) == {"train/loss", "val/loss", "train/acc", "val/acc", "train/bal_acc", "val/bal_acc"}
    assert sorted(curves["train/loss"]) == [0, 1, 2, 3]
    assert curves["train/loss"][0] == pytest.approx(1.6)  # the epoch value, not the step values


def _curves(train, val, train_loss, val_loss):
    as_dict = lambda xs: dict(enumerate(xs))  # noqa: E731
    return {"train/bal_acc": as_dict(train), "val/bal_acc": as_dict(val), "train/loss": as_dict(train_loss),
            "val/loss": as_dict(val_loss)}


@pytest.mark.parametrize("curves,verdict", [
    (_curves([0.5, 0.6], [0.5, 0.55], [1, 0.9], [1, 0.95]), "not enough epochs to judge"),
    (_curves([0.6, 0.8, 0.9, 0.97], [0.55, 0.65, 0.66, 0.66], [1, 0.6, 0.4, 0.2], [1, 0.8, 0.85, 0.9]),
     "over-fitting"),
    (_curves([0.6, 0.7, 0.75, 0.76, 0.77], [0.58, 0.7, 0.72, 0.72, 0.72], [1, 0.6, 0.4, 0.3, 0.25],
             [1, 0.7, 0.6, 0.75, 0.95]), "over-fitting"),  # val loss 0.6 -> 0.95 while train loss falls
    (_curves([0.3, 0.4, 0.45, 0.5], [0.3, 0.4, 0.45, 0.48], [2, 1.8, 1.7, 1.6], [2, 1.8, 1.7, 1.65]),
     "under-fitting"),
    (_curves([0.6, 0.7, 0.75, 0.85], [0.6, 0.65, 0.7, 0.78], [1, 0.7, 0.6, 0.5], [1, 0.8, 0.7, 0.6]),
     "under-fitting"),
    (_curves([0.6, 0.75, 0.8, 0.81], [0.6, 0.755, 0.76, 0.765], [1, 0.6, 0.5, 0.48], [1, 0.7, 0.62, 0.61]),
     "good fit"),
])
def test_diagnose_fit_rules(curves, verdict):
    got, reasons = diagnose_fit(curves)
    assert got == verdict and reasons


def test_cli_report(fake_run, capsys):
    assert cli.main(["report", str(fake_run)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert cli.main(["report", str(fake_run / "nope")]) == 2


def test_extra_training_sources_are_listed():
    from melanoma.report import _extra_sources_summary

    html = _extra_sources_summary({"n_images": 8194, "counts": {"nevus": 6495, "melanoma": 1086},
                                   "removed": {"shares_a_group_with_primary": 1773},
                                   "sources": [{"source": "/data/ham10000", "images": 10015, "mapped": 10015,
                                                "reference_only": 327, "unmapped_labels": {}}]})
    assert "Extra training data (8,194 images)" in html and "/data/ham10000" in html
    assert "shares a group with primary: 1,773" in html and "6,495" in html
    assert _extra_sources_summary(None) == ""


# ------------------------------------------------------------------------ text for readers, real runs and evaluations

REPR = re.compile(r"\['|\{'|'\]|\bTrue\b|\bFalse\b|\bNone\b")


def _visible_text(page: str) -> str:
    """The page without embedded images, styles and tags (what a reader sees)."""
    page = re.sub(r"data:image/png;base64,[^\"]+", "", page)
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_model_card_reads_as_text_and_states_the_data_actually_used(fake_run):
    meta = json.loads((fake_run / "model.json").read_text())
    meta["model_card"]["training_data"] = ["Train", "ham10000"]
    meta["model_card"]["limitations"] = STOCK_LIMITATIONS_START + "; stock text for every model."
    meta["data"] = {"source": "/data/isic-9class/Train", "extra_sources": [], "images": 135,
                    "class_counts": {c: 15 for c in meta["class_names"]},
                    "summary": {"n_images": 135, "counts": {c: 15 for c in meta["class_names"]}}}
    meta["training"]["folds"] = None
    (fake_run / "model.json").write_text(json.dumps(meta))
    page = build_report(fake_run).read_text()
    text = _visible_text(page)
    assert not REPR.search(text), REPR.search(text)
    assert "<code>melanoma threshold MODEL --predictions CSV</code>" in page  # `code` spans, not backticks
    assert "135 images of Train" in text and "Trained on 135 images only" in text
    assert "Every class has fewer than 50 training images" in text and "One source only (Train)" in text
    assert "stock text for every model" not in text and "ISIC archive images" not in text
    assert "test-time augmentation none: one view per image" in " ".join(text.split())
    meta["test_time_augmentation"] = {"views": 8, "fitted_on": "validation"}
    (fake_run / "model.json").write_text(json.dumps(meta))
    assert "8 views per image (flips and 90-degree rotations), their probabilities averaged; the alert threshold " \
        "was chosen on those averages" in " ".join(_visible_text(build_report(fake_run).read_text()).split())


def test_shipped_model_card_names_its_two_sources_and_its_one_tiny_class(tmp_path):
    shipped = json.loads((Path(__file__).parents[1] / "models" / "default" / "model.json").read_text())
    items = " ".join(describe_limitations(shipped))
    assert "seborrheic keratosis (2)" in items and "images only" not in items and "One source only" not in items
    assert "from a group-aware share of every training source (2,037 validation images)" in items
    assert describe_training_data(shipped).startswith("1,987 images of Train (split into training and validation)"
                                                      " + 8,194 images of ham10000 (split the same way")


@pytest.fixture(scope="module")
def evaluation(tiny_isic, tmp_path_factory):
    """A real `melanoma evaluate` output folder (random-weight model, the 45 tiny images)."""
    from melanoma.artifacts import build_test_model
    from melanoma.evaluate import evaluate

    root = tmp_path_factory.mktemp("evaluation")
    evaluate(build_test_model(root / "model", image_size=64), tiny_isic, out=root / "eval", bootstrap=100)
    return root / "eval"


def test_report_on_an_evaluate_folder(evaluation, capsys):
    assert cli.main(["report", str(evaluation)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (evaluation / "report.html").read_text()
    text = _visible_text(page)
    assert "model not finished" not in text and "could not be built" not in text and not REPR.search(text)
    for part in ("Evaluated data", "45 scored / 0 excluded (seen in training) / 45 in the dataset",
                 "was NOT checked", "Only 5 melanomas", "balanced accuracy", "Per class",
                 "Most confident errors", "Decision support", "does not record its training data"):
        assert part in text, part
    assert page.count("data:image/png;base64,") == 7  # evaluate's six plots + the error gallery
    assert not re.search(r'(src|href)="(?!data:|#)', page)


def test_evaluate_folder_with_a_corrupt_metrics_json_is_one_line(evaluation, tmp_path, capsys):
    bad = tmp_path / "bad-eval"
    bad.mkdir()
    (bad / "metrics.json").write_text((evaluation / "metrics.json").read_text()[:200])
    assert cli.main(["report", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "metrics.json: not valid JSON" in err and "\n" not in err


@pytest.mark.slow
def test_real_tiny_run_and_its_evaluation(tiny_isic, shared_train, tmp_path):
    """Train 3 epochs on the 45 tiny images, evaluate on 18 other Train images plus 9 of the training images:
    both reports render, the small model gets limitations about its 45 images, the evaluation counts the
    9 training images as excluded."""
    import shutil

    from melanoma.config import TrainConfig
    from melanoma.evaluate import evaluate
    from melanoma.training import train

    run = Path(train(TrainConfig(data=str(tiny_isic), out=str(tmp_path / "run"), model="seed-cnn", image_size=64,
                                 epochs=3, batch_size=8, max_train_batches=3, num_workers=0, seed=3,
                                 extra={"bootstrap": 50, "progress_bar": False}))["run"])
    text = _visible_text(build_report(run).read_text())
    assert "Trained on 45 images only" in text and "One source only" in text and not REPR.search(text)
    assert "Fit diagnosis" in text and "could not be built" not in text and "ISIC archive images" not in text

    other = tmp_path / "other"
    for class_dir in sorted(p for p in shared_train.iterdir() if p.is_dir()):
        (other / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[5:7]:  # not among the tiny copies (the first 5)
            shutil.copy2(image, other / class_dir.name)
        shutil.copy2(sorted((tiny_isic / class_dir.name).glob("*.jpg"))[0], other / class_dir.name / "seen.jpg")
    evaluate(run, other, out=run / "eval-other", bootstrap=50)
    assert "eval-other" in _visible_text(build_report(run).read_text())  # the run lists its evaluations
    text = _visible_text(build_report(run / "eval-other").read_text())
    # at least the 9 copies are excluded (Train also holds byte-identical copies filed under two classes)
    counts = re.search(r"(\d+) scored / (\d+) excluded \(seen in training\) / 27 in the dataset", text)
    assert counts and int(counts[2]) >= 9 and int(counts[1]) + int(counts[2]) == 27
    assert "Trained on 45 images only" in text and "checked against" in text and not REPR.search(text)


def test_headline_states_the_models_own_calibration_as_recorded(evaluation):
    """A single run records ECE before / after its temperature; an ensemble (or a model whose probabilities a new
    prior correction or view count changed) records the ECE of what it serves."""
    from melanoma.report import _headline

    result = json.loads((evaluation / "metrics.json").read_text())
    single = _visible_text(_headline(result, {"calibration": {"temperature": 1.3, "ece_before": 0.12,
                                                              "ece_after": 0.04}}))
    assert "ECE before / after (training)" in single and "0.120 / 0.040" in single
    served = _visible_text(_headline(result, {"calibration": {"temperature": 1.0, "ece": 0.031}}))
    assert "ECE on the model's validation images (model.json)" in served and "0.031" in served
