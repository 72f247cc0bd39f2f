"""Detail calibration: images with less detail than the model trained on get their melanoma odds lowered so that
the one alert threshold acts as the threshold fitted at their level; fitted by `melanoma threshold
--detail-levels` on the model's validation images reduced to each level (real images, a random-weight model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma import cli, detail_calibration
from melanoma.artifacts import build_test_model
from melanoma.errors import ConfigError
from melanoma.finalize import rethreshold
from melanoma.metrics import choose_alert_threshold
from melanoma.predict import LOW_DETAIL, Predictor, write_predictions_csv

CALIBRATION = {"levels": [{"shorter_side": 120, "melanoma_logit_shift": 0.4},
                          {"shorter_side": 100, "melanoma_logit_shift": 1.0}]}


def test_logit_shift_is_zero_at_the_models_detail_and_linear_between_levels():
    shift = detail_calibration.logit_shift
    assert shift(150, CALIBRATION, 150) == 0 and shift(900, CALIBRATION, 150) == 0
    assert shift(120, CALIBRATION, 150) == pytest.approx(0.4)
    assert shift(135, CALIBRATION, 150) == pytest.approx(0.2)   # halfway between 150 (0) and 120 (0.4)
    assert shift(110, CALIBRATION, 150) == pytest.approx(0.7)
    assert shift(60, CALIBRATION, 150) == pytest.approx(1.0)    # below the smallest level: its shift, no more
    assert shift(60, None, 150) == 0 and shift(60, CALIBRATION, None) == 0


def test_shifted_probability_crosses_the_threshold_exactly_where_the_level_threshold_does():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(9), 200)
    mel, threshold, level_threshold = 3, 0.08, 0.13
    shift = math.log(level_threshold / (1 - level_threshold)) - math.log(threshold / (1 - threshold))
    shifted = detail_calibration.shift_melanoma(probs, mel, np.full(200, shift))
    assert np.array_equal(shifted[:, mel] >= threshold, probs[:, mel] >= level_threshold - 1e-12)
    assert np.allclose(shifted.sum(axis=1), 1)
    others = [i for i in range(9) if i != mel]  # the other classes keep their proportions
    assert np.allclose(shifted[:, others] / shifted[:, others].sum(1, keepdims=True),
                       probs[:, others] / probs[:, others].sum(1, keepdims=True))
    assert detail_calibration.shift_melanoma(probs, mel, np.zeros(200)) is probs


def test_levels_must_lie_below_the_models_detail_size():
    assert detail_calibration.check_levels([100, 135, 120, 120], 150) == [135, 120, 100]
    with pytest.raises(ConfigError, match="--detail-levels 150: .*below the model's detail_size"):
        detail_calibration.check_levels([120, 150], 150)
    with pytest.raises(ConfigError, match="--detail-levels 8"):
        detail_calibration.check_levels([8], 150)
    with pytest.raises(ConfigError, match="no preprocessing.detail_size"):
        detail_calibration.check_levels([120], None)


def _model_with_validation(tiny_isic: Path, folder: Path) -> tuple[Path, list[str], np.ndarray]:
    """A random-weight model trained 'at' 150 px (detail_size) whose val_predictions.csv holds the tiny images
    (5 per class) with their labels, predicted by the model itself."""
    run = build_test_model(folder, image_size=64)
    meta = json.loads((run / "model.json").read_text())
    meta["preprocessing"]["detail_size"] = 150
    (run / "model.json").write_text(json.dumps(meta))
    paths = sorted(str(p) for p in tiny_isic.glob("*/*.jpg"))
    labels = [Path(p).parent.name for p in paths]
    write_predictions_csv(Predictor.load(run).predict_paths(paths), run / "val_predictions.csv", labels=labels)
    return run, paths, np.array([label == "melanoma" for label in labels])


def _reduced(path: str, side: int, out: Path) -> Path:
    with Image.open(path) as im:
        scale = side / min(im.size)
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC).save(out)
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::melanoma.errors.ThresholdWarning")  # 5 melanomas: warned, on purpose
def test_fitted_calibration_makes_a_smaller_image_alert_at_its_levels_threshold(tiny_isic, tmp_path, capsys):
    run, paths, is_mel = _model_with_validation(tiny_isic, tmp_path / "run")
    result = rethreshold(run, 0.8, out=tmp_path / "calibrated", detail_levels=[120, 90])
    meta = json.loads((tmp_path / "calibrated" / "model.json").read_text())
    levels = meta["detail_calibration"]["levels"]
    assert [lv["shorter_side"] for lv in levels] == [120, 90] and result["detail_calibration_refitted"]
    assert meta["detail_calibration"]["target_sensitivity"] == 0.8
    assert "detail_calibration" not in json.loads((run / "model.json").read_text())  # --out leaves RUN alone

    raw = Predictor.load(run)
    raw.pre["detail_size"] = 120  # what the fit does: every validation image first reduced to 120 px
    t120 = float(choose_alert_threshold(is_mel, raw.predict_paths(paths).melanoma_probability, 0.8))
    assert levels[0]["alert_threshold"] == pytest.approx(t120)
    threshold = meta["thresholds"]["melanoma_alert"]
    assert levels[0]["melanoma_logit_shift"] == pytest.approx(
        math.log(t120 / (1 - t120)) - math.log(threshold / (1 - threshold)))

    calibrated, plain = Predictor.load(tmp_path / "calibrated"), Predictor.load(run)
    small = [str(_reduced(p, 120, tmp_path / f"small{i}.png")) for i, p in enumerate(paths)]
    before, after = plain.predict_paths(small), calibrated.predict_paths(small)
    assert np.array_equal(after.alert, before.melanoma_probability >= t120 - 1e-9)
    uncalibrated = Predictor.load(tmp_path / "calibrated")
    uncalibrated.detail_calibration = None  # the same model and threshold without the shift
    unshifted = uncalibrated.predict_paths(small).alert
    assert 0 < after.alert.sum() < len(small) and not np.array_equal(after.alert, unshifted)
    assert np.allclose(after.probs.sum(axis=1), 1, atol=1e-5)
    assert all(w.startswith(LOW_DETAIL) and "adjusted" in w for w in after.warnings)
    as_stored = calibrated.predict_paths(paths[:6])  # 180 px, above detail_size: untouched, no warning
    assert np.allclose(as_stored.probs, plain.predict_paths(paths[:6]).probs)
    assert as_stored.warnings == [""] * 6

    from melanoma.export import export_onnx  # the calibration travels inside the ONNX file's model.json

    export_onnx(tmp_path / "calibrated", tmp_path / "calibrated.onnx")
    onnx = Predictor.load(tmp_path / "calibrated.onnx").predict_paths(small)
    assert np.allclose(onnx.probs, after.probs, atol=1e-4) and onnx.warnings == after.warnings

    assert cli.main(["threshold", str(tmp_path / "calibrated"), "--target-sensitivity", "0.9", "--in-place"]) == 0
    assert "detail calibration kept (fitted for sensitivity 0.800)" in capsys.readouterr().out
    assert json.loads((tmp_path / "calibrated" / "model.json").read_text())["detail_calibration"]["levels"] == levels


@pytest.mark.slow
def test_detail_levels_bad_input_is_one_line_and_writes_nothing(tiny_isic, tmp_path, capsys):
    run, _, _ = _model_with_validation(tiny_isic, tmp_path / "run")
    before = (run / "model.json").read_bytes()
    base = ["threshold", str(run), "--target-sensitivity", "0.9"]
    assert cli.main([*base, "--detail-levels", "150", "--in-place"]) == 2
    assert "--detail-levels 150" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert cli.main([*base, "--detail-levels", "120", "--out", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err  # named before any image is predicted
    assert cli.main([*base, "--detail-levels", "120", "--predictions", str(run / "val_predictions.csv"),
                     "--in-place"]) == 2
    assert "cannot be combined with --predictions" in capsys.readouterr().err
    assert (run / "model.json").read_bytes() == before
    plain = build_test_model(tmp_path / "mixed-detail", image_size=64)  # no detail_size
    (plain / "val_predictions.csv").write_text((run / "val_predictions.csv").read_text())
    assert cli.main(["threshold", str(plain), "--target-sensitivity", "0.9", "--detail-levels", "120",
                     "--in-place"]) == 2
    err = capsys.readouterr().err
    assert "no preprocessing.detail_size" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::melanoma.errors.ThresholdWarning")  # 5 melanomas: warned, on purpose
def test_a_new_prior_correction_refits_the_levels_under_the_new_probabilities(tiny_isic, tmp_path):
    """The shift is applied after the prior correction, so the levels are fitted under the correction that is
    stored with them, not the one the model had before."""
    run, paths, is_mel = _model_with_validation(tiny_isic, tmp_path / "run")
    result = rethreshold(run, 0.8, out=tmp_path / "mixed", detail_levels=[120], prior_correction="training-mix")
    assert result["prior_correction_changed"] and result["detail_calibration_refitted"]
    corrected = Predictor.load(tmp_path / "mixed")
    assert corrected.class_weights is not None
    corrected.detail_calibration = None
    corrected.pre["detail_size"] = 120
    t120 = float(choose_alert_threshold(is_mel, corrected.predict_paths(paths).melanoma_probability, 0.8))
    level = json.loads((tmp_path / "mixed" / "model.json").read_text())["detail_calibration"]["levels"][0]
    assert level["alert_threshold"] == pytest.approx(t120)
