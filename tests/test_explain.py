"""Grad-CAM panels: file names, the whole image beside the overlay, colour bar, alert/referral header that agrees
with the prediction; ONNX predictors are refused."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma.artifacts import build_test_model
from melanoma.errors import ModelError
from melanoma.explain import _denormalise, _pair, gradcam_overlays, status_lines, whole_view, write_explanations
from melanoma.predict import Predictor


@pytest.fixture(scope="module")
def seed_predictor(tmp_path_factory):
    return Predictor.load(build_test_model(tmp_path_factory.mktemp("seed"), image_size=64))


def _two_images(tiny_isic):
    return [sorted((tiny_isic / "melanoma").glob("*.jpg"))[0], sorted((tiny_isic / "nevus").glob("*.jpg"))[0]]


def _wide_image(tmp_path, tiny_isic) -> Path:
    """A 300x120 photo (a real lesion pasted on skin-coloured margins): the centre crop leaves most of it out."""
    lesion = Image.open(_two_images(tiny_isic)[0]).convert("RGB").resize((120, 120))
    canvas = Image.new("RGB", (300, 120), (200, 160, 150))
    canvas.paste(lesion, (90, 0))
    canvas.save(tmp_path / "wide.png")
    return tmp_path / "wide.png"


def test_write_explanations_names_and_files(seed_predictor, tiny_isic, tmp_path):
    paths = _two_images(tiny_isic)
    written = write_explanations(seed_predictor, paths, tmp_path / "cams")
    assert len(written) == 4 and all(p.suffix == ".png" and p.is_file() for p in written)
    for path in paths:
        pred = seed_predictor.predict([path])[0].prediction.replace(" ", "-")
        assert (tmp_path / "cams" / f"{path.stem}_melanoma.png") in written
        assert (tmp_path / "cams" / f"{path.stem}_pred-{pred}.png") in written
    with Image.open(written[0]) as im:
        assert im.width > im.height >= 400  # two images side by side, readable at 100%


def test_panel_has_a_jet_colour_bar(seed_predictor, tiny_isic, tmp_path):
    [png] = [p for p in write_explanations(seed_predictor, _two_images(tiny_isic)[:1], tmp_path)
             if p.name.endswith("_melanoma.png")]
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    right = rgb[:, int(rgb.shape[1] * 0.85):]  # the colour bar sits right of both images
    dark_red = (right[..., 0] > 100) & (right[..., 1] < 30) & (right[..., 2] < 30)
    dark_blue = (right[..., 2] > 100) & (right[..., 0] < 30) & (right[..., 1] < 30)
    columns = np.flatnonzero(dark_red.any(axis=0) & dark_blue.any(axis=0))
    assert len(columns) >= 5  # one vertical strip holds both ends of the scale
    top_red = np.flatnonzero(dark_red[:, columns[0]]).mean()
    assert top_red < np.flatnonzero(dark_blue[:, columns[0]]).mean()  # 1.0 (red) at the top


def test_whole_view_holds_the_exact_crop_the_model_saw(seed_predictor, tiny_isic, tmp_path):
    path = _wide_image(tmp_path, tiny_isic)
    whole, (left, top, size) = whole_view(seed_predictor, Image.open(path).convert("RGB"))
    pre = seed_predictor.meta["preprocessing"]
    assert whole.shape[0] == pre["resize"] and whole.shape[1] > 2 * whole.shape[0]  # the whole width is kept
    crop = whole[top:top + size, left:left + size].astype(float) / 255
    model_input = _denormalise(seed_predictor.preprocess(path), pre)
    assert size == pre["input_size"] and np.abs(crop - model_input).max() < 1.5 / 255


def _prediction(seed_predictor, tiny_isic, **changes):
    return replace(seed_predictor.predict([_two_images(tiny_isic)[0]])[0], **changes)


def test_header_agrees_with_the_alert_even_next_to_the_threshold(seed_predictor, tiny_isic):
    t = seed_predictor.alert_threshold
    fired = _prediction(seed_predictor, tiny_isic, melanoma_probability=t + 1e-4, melanoma_alert=True)
    (alert, _), (refer, _) = status_lines(seed_predictor, fired)
    p_text, t_text = alert.split("probability ")[1].split(" ")[0], alert.split("threshold ")[1]
    assert alert.startswith("MELANOMA ALERT") and float(p_text) > float(t_text) and "calibrated" in alert
    assert refer.startswith("No referral")
    quiet = _prediction(seed_predictor, tiny_isic, melanoma_probability=t - 0.2, melanoma_alert=False, refer=True,
                        refer_reason="low confidence")
    (alert, _), (refer, _) = status_lines(seed_predictor, quiet)
    assert alert.startswith("No melanoma alert") and "<" in alert
    assert refer.startswith("REFER") and "low confidence" in refer


def test_pair_uses_the_fewest_digits_that_tell_the_values_apart():
    assert _pair(0.14, 0.0581) == ("0.14", "0.06")
    assert _pair(0.05812, 0.05807) == ("0.05812", "0.05807")
    p, t = _pair(0.0581, 0.0580)
    assert p != t and float(p) > float(t)


def test_given_predictions_are_shown_not_recomputed(seed_predictor, tiny_isic, tmp_path):
    """predict --tta passes its own predictions: the panel must show those, not a single-view re-prediction."""
    path = _two_images(tiny_isic)[0]
    given = _prediction(seed_predictor, tiny_isic, prediction="vascular lesion")
    written = write_explanations(seed_predictor, [path], tmp_path, predictions=[given])
    assert {p.name for p in written} == {f"{path.stem}_pred-vascular-lesion.png", f"{path.stem}_melanoma.png"}


def test_overlays_have_model_input_size(seed_predictor, tiny_isic):
    overlays = gradcam_overlays(seed_predictor, _two_images(tiny_isic)[0], {"melanoma": 3, "nevus": 4})
    assert set(overlays) == {"melanoma", "nevus"}
    assert all(im.size == (64, 64) for im in overlays.values())


def test_timm_model_gradcam(tmp_path, tiny_isic):
    predictor = Predictor.load(build_test_model(tmp_path / "lite0", architecture="efficientnet_lite0",
                                                class_names=["nevus", "melanoma"], image_size=64))
    written = write_explanations(predictor, _two_images(tiny_isic)[:1], tmp_path / "cams")
    assert len(written) == 2 and any(p.name.endswith("_melanoma.png") for p in written)


def test_same_stem_in_two_folders_does_not_overwrite(seed_predictor, tiny_isic, tmp_path):
    src = _two_images(tiny_isic)[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / src.name).write_bytes(src.read_bytes())
    written = write_explanations(seed_predictor, [tmp_path / "a" / src.name, tmp_path / "b" / src.name],
                                 tmp_path / "cams")
    assert len(set(written)) == 4 and any(Path(p).stem.startswith(src.stem + "_2_") for p in written)


def test_onnx_predictor_is_refused(seed_predictor, tiny_isic, tmp_path):
    class FakeOnnx:
        kind = "onnx"

    onnx_like = Predictor(FakeOnnx(), seed_predictor.meta, "model.onnx")
    with pytest.raises(ModelError, match="PyTorch"):
        write_explanations(onnx_like, _two_images(tiny_isic)[:1], tmp_path / "cams")


def test_model_without_a_melanoma_class_says_so(tmp_path, tiny_isic):
    predictor = Predictor.load(build_test_model(tmp_path / "two", class_names=["nevus", "vascular lesion"],
                                                image_size=64))
    path = _two_images(tiny_isic)[1]
    written = write_explanations(predictor, [path], tmp_path / "cams")
    assert len(written) == 1 and "_pred-" in written[0].name  # no melanoma target to explain
    (alert, _), _ = status_lines(predictor, predictor.predict([path])[0])
    assert alert == "No melanoma alert: this model has no melanoma class"
