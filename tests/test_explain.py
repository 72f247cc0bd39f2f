"""Grad-CAM heatmaps: file names, sizes, targets; ONNX predictors are refused."""

from pathlib import Path

import pytest
from PIL import Image

from melanoma.artifacts import build_test_model
from melanoma.errors import ModelError
from melanoma.explain import CAPTION_HEIGHT, MIN_DISPLAY, gradcam_overlays, write_explanations
from melanoma.predict import Predictor


@pytest.fixture(scope="module")
def seed_predictor(tmp_path_factory):
    return Predictor.load(build_test_model(tmp_path_factory.mktemp("seed"), image_size=64))


def _two_images(tiny_isic):
    return [sorted((tiny_isic / "melanoma").glob("*.jpg"))[0], sorted((tiny_isic / "nevus").glob("*.jpg"))[0]]


def test_write_explanations_names_and_sizes(seed_predictor, tiny_isic, tmp_path):
    paths = _two_images(tiny_isic)
    written = write_explanations(seed_predictor, paths, tmp_path / "cams")
    assert len(written) == 4 and all(p.suffix == ".png" and p.is_file() for p in written)
    for path in paths:
        pred = seed_predictor.predict([path])[0].prediction.replace(" ", "-")
        assert (tmp_path / "cams" / f"{path.stem}_melanoma.png") in written
        assert (tmp_path / "cams" / f"{path.stem}_pred-{pred}.png") in written
    with Image.open(written[0]) as im:
        assert im.size == (2 * MIN_DISPLAY, MIN_DISPLAY + CAPTION_HEIGHT) and im.mode == "RGB"


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
