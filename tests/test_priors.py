"""Prior correction: probabilities moved from the balanced training classes to the training sources' class mix."""

import json

import numpy as np
import pytest

from melanoma import priors
from melanoma.artifacts import build_test_model
from melanoma.errors import ConfigError
from melanoma.predict import Predictor

CLASSES = ["melanoma", "nevus", "seborrheic keratosis"]


def _meta(**training) -> dict:
    return {"class_names": CLASSES, "training": {"imbalance": "sampler", **training}}


def test_reweight_is_bayes_with_the_class_mix_and_moves_back_exactly():
    probs = np.array([[0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    weights = np.array([0.5, 2.4, 0.1])
    moved = priors.reweight(probs, weights)
    expected = probs * weights / (probs * weights).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(moved, expected)
    np.testing.assert_allclose(moved.sum(axis=1), 1.0)
    np.testing.assert_allclose(priors.reweight(moved, priors.change(weights, None, 3)), probs)
    assert priors.reweight(probs, None) is probs
    assert priors.change(None, None, 3) is None


def test_training_mix_counts_the_validation_labels_add_one_smoothed():
    labels = ["nevus"] * 70 + ["melanoma"] * 29 + ["seborrheic keratosis"] * 0 + [None, "not a class"]
    section = priors.training_mix(_meta(), labels)
    assert section["class_counts"] == {"melanoma": 29, "nevus": 70, "seborrheic keratosis": 0}
    np.testing.assert_allclose(section["weights"], np.array([30, 71, 1]) / 102 * 3, atol=1e-6)
    assert priors.weights_of({"class_names": CLASSES, "prior_correction": section}).shape == (3,)
    assert "training mix" in priors.describe({"prior_correction": section})


@pytest.mark.parametrize("training, labels, message", [
    ({"holdout_source": "Train"}, ["nevus"] * 60, "held-out source"),
    ({"imbalance": "none"}, ["nevus"] * 60, "natural class mix"),
    ({"imbalance": "source-balanced"}, ["nevus"] * 60, "natural class mix"),
    ({}, ["nevus"] * 19, "at least 20"),
])
def test_training_mix_refuses_what_is_not_a_training_mix(training, labels, message):
    with pytest.raises(ConfigError, match=message):
        priors.training_mix(_meta(**training), labels)


def test_bad_weights_in_model_json_are_named():
    with pytest.raises(ConfigError, match="3 positive numbers"):
        priors.weights_of({"class_names": CLASSES, "prior_correction": {"weights": [1.0, 0.0, 2.0]}})


def test_the_predictor_applies_the_correction_after_the_referral(tmp_path, tiny_isic):
    plain = build_test_model(tmp_path / "plain", image_size=64)
    meta = json.loads((plain / "model.json").read_text())
    weights = np.linspace(0.2, 3.0, len(meta["class_names"]))
    corrected = build_test_model(tmp_path / "corrected", image_size=64)
    meta["prior_correction"] = {"method": "training mix", "fitted_on": "validation labels", "class_counts": {},
                                "weights": weights.tolist()}
    (corrected / "model.json").write_text(json.dumps(meta))
    paths = sorted(tiny_isic.rglob("*.jpg"))[:6]
    before, after = Predictor.load(plain).predict_paths(paths), Predictor.load(corrected).predict_paths(paths)
    np.testing.assert_allclose(after.probs, priors.reweight(before.probs, weights), atol=1e-6)
    np.testing.assert_array_equal(after.refer, before.refer)  # decided on the outputs the referral was fitted on
    assert after.refer_reason == before.refer_reason

    from melanoma.export import export_onnx  # the correction travels inside the ONNX file's model.json

    export_onnx(corrected, tmp_path / "corrected.onnx")
    onnx = Predictor.load(tmp_path / "corrected.onnx").predict_paths(paths)
    np.testing.assert_allclose(onnx.probs, after.probs, atol=1e-4)
