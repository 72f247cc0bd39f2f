"""Registry, construction, weight loading and Grad-CAM layer lookup (CPU, tiny inputs)."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from melanoma.errors import ModelError
from melanoma.models import (_lite_weights_file, _map_state_dict_in_order, create_model, default_preprocessing,
                             find_gradcam_layer, list_models, map_lite_state_dict, pretrained_by_default)

LITE_MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name,pretrained,size", [
    ("seed-cnn", False, 64),
    ("efficientnet_lite0", True, 64),
    ("efficientnet_lite1", True, 64),
    ("efficientnet_lite2", True, 64),
    ("resnet18", False, 64),
])
def test_forward_backward(name, pretrained, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=9, pretrained=pretrained).train()
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 9)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_registry_lists_the_models():
    assert {"seed-cnn", *LITE_MODELS} <= set(list_models())
    assert [pretrained_by_default(n) for n in LITE_MODELS] == [True, True, True]
    assert not pretrained_by_default("seed-cnn") and not pretrained_by_default("resnet18")


@pytest.mark.parametrize("name", LITE_MODELS)
def test_lite_weights_map_key_by_key_onto_every_timm_tensor(name):
    """Every package tensor lands on a distinct timm tensor of the same shape, every timm tensor is covered, and the
    key-by-key renaming agrees with the independent in-order pairing (the check lite0 was first loaded with)."""
    source = torch.load(_lite_weights_file(name), map_location="cpu", weights_only=True)
    model = create_model(name, num_classes=1000)
    mapped = map_lite_state_dict(source, model, name)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(source)
    in_order = _map_state_dict_in_order(source, model.state_dict(), name)
    assert all(mapped[k] is in_order[k] for k in mapped)
    pretrained = create_model(name, num_classes=1000, pretrained=True)
    torch.testing.assert_close(pretrained.state_dict()["classifier.weight"], source["_fc.weight"])


def test_lite_mapping_refuses_a_missing_or_misshapen_tensor():
    source = torch.load(_lite_weights_file("efficientnet_lite1"), map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite1", num_classes=1000)
    with pytest.raises(ModelError, match="have no source, e.g. blocks"):
        map_lite_state_dict({k: v for k, v in source.items() if k != "_blocks.3._bn0.weight"}, model, "test")
    with pytest.raises(ModelError, match="does not fit conv_stem.weight"):
        map_lite_state_dict({**source, "_conv_stem.weight": torch.zeros(16, 3, 3, 3)}, model, "test")


@pytest.mark.slow
@pytest.mark.parametrize("name", LITE_MODELS)
def test_lite_imagenet_weights_recognise_a_real_photo(name):
    """The mapped ImageNet model, with its own eval preprocessing, names Grace Hopper's uniform (matplotlib's
    sample photo, ImageNet class 652 'military uniform') among its top 3 classes."""
    from matplotlib import cbook
    from PIL import Image

    from melanoma.transforms import eval_transform, prepare_image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    pre = default_preprocessing(name)
    model = create_model(name, num_classes=1000, pretrained=True).eval()
    with torch.no_grad():
        top3 = model(eval_transform(pre)(prepare_image(photo, pre)).unsqueeze(0))[0].topk(3).indices.tolist()
    assert 652 in top3, top3


@pytest.mark.slow
def test_lite2_trains_offline_and_predicts(tiny_isic, tmp_path):
    import sys
    from pathlib import Path

    from melanoma.predict import Predictor
    from melanoma.training import train

    sys.path.insert(0, str(Path(__file__).parent))
    from test_training import tiny_config

    run = train(tiny_config(tiny_isic, tmp_path / "lite2", model="efficientnet_lite2", image_size=64,
                            pretrained=True))["run"]
    result = Predictor.load(run).predict_paths(sorted(tiny_isic.rglob("*.jpg"))[:3])
    assert result.probs.shape == (3, 9) and not result.errors


def test_drop_path_skips_blocks_in_training_only_and_leaves_the_state_dict_alone():
    from melanoma.config import TrainConfig
    from melanoma.errors import ConfigError
    from melanoma.lightning_module import LesionClassifier

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 9, drop_rate=0.0, drop_path_rate=0.5)  # head dropout off
    plain = create_model("efficientnet_lite0", 9, drop_rate=0.0)
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.allclose(model(x), model(x))  # a different set of blocks skipped on each pass
    model.eval()
    assert torch.equal(model(x), model(x))
    module = LesionClassifier("efficientnet_lite0", 9, 0, lr=1e-3, weight_decay=0.0, image_size=64, drop_path=0.2)
    assert module.hparams.drop_path == 0.2
    with pytest.raises(ModelError, match="seed-cnn has no residual blocks"):
        create_model("seed-cnn", 9, image_size=64, drop_path_rate=0.2)
    with pytest.raises(ConfigError, match="drop-path rate"):
        TrainConfig(data="d", drop_path=1.0).validate()


def test_unknown_model_lists_registry_names():
    with pytest.raises(ModelError, match="seed-cnn.*efficientnet_lite0|efficientnet_lite0.*seed-cnn") as info:
        create_model("no-such-net", num_classes=3)
    assert "timm" in str(info.value)
    with pytest.raises(ModelError, match="unknown model"):
        default_preprocessing("no-such-net")


def test_seed_cnn_keras_details():
    model = create_model("seed-cnn", num_classes=9, image_size=180)
    assert model.fc1.in_features == 128 * 9 * 9  # 180 -> 90 -> 88 -> 44 -> 42 -> 21 -> 19 -> 9
    assert model.l2_penalty == {"param_names": ["fc1.weight"], "coef": 0.01}
    assert "fc1.weight" in dict(model.named_parameters())
    # Keras defaults: zero biases, BatchNormalization(momentum=0.99, epsilon=1e-3)
    assert not model.fc1.bias.any() and not model.features[0].bias.any()
    assert (model.features[3].eps, model.features[3].momentum) == (1e-3, 0.01)
    assert find_gradcam_layer(model) is [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    with pytest.raises(ModelError, match="44 px"):
        create_model("seed-cnn", num_classes=9, image_size=32)
    with pytest.raises(ModelError, match="no pretrained"):
        create_model("seed-cnn", num_classes=9, pretrained=True)


def test_lazy_seed_cnn_takes_shape_from_state_dict():
    trained = create_model("seed-cnn", num_classes=4, image_size=96).eval()
    fresh = create_model("seed-cnn", num_classes=4)  # lazy fc1, as artifacts rebuilds it
    fresh.load_state_dict(trained.state_dict())
    x = torch.rand(1, 3, 96, 96)
    assert torch.allclose(fresh.eval()(x), trained(x))


def test_offline_lite0_weights_load_and_differ_from_random():
    torch.manual_seed(0)
    pretrained = create_model("efficientnet_lite0", num_classes=5, pretrained=True)
    random_init = create_model("efficientnet_lite0", num_classes=5, pretrained=False)
    assert pretrained.get_classifier().out_features == 5
    stem = "conv_stem.weight"
    assert not torch.equal(pretrained.state_dict()[stem], random_init.state_dict()[stem])
    # trained BatchNorm statistics, not the defaults (0 mean, 1 variance)
    assert not torch.allclose(pretrained.bn1.running_var, torch.ones_like(pretrained.bn1.running_var))


def test_in_order_mapping_rejects_shape_mismatch():
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(ModelError, match="does not fit"):
        _map_state_dict_in_order(source, {"x": torch.zeros(2, 3), "y": torch.zeros(5)}, "test")
    with pytest.raises(ModelError, match="tensors"):
        _map_state_dict_in_order(source, {"x": torch.zeros(2, 3)}, "test")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3).eval()
    path = tmp_path / f"w{suffix}"
    state = {f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}  # DDP-style prefix
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_model("resnet18", num_classes=3, weights=path).eval()
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x))


def test_weights_with_other_head_drop_only_classifier(tmp_path, caplog):
    source = create_model("resnet18", num_classes=1000)
    path = tmp_path / "imagenet.pth"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", num_classes=3, weights=path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert "fc.weight" in caplog.text and "fc.bias" in caplog.text


def test_weights_file_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        create_model("seed-cnn", num_classes=3, weights=tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="cannot read"):
        create_model("seed-cnn", num_classes=3, weights=corrupt)
    other = tmp_path / "other.pt"
    torch.save(create_model("seed-cnn", num_classes=3, image_size=64).state_dict(), other)
    with pytest.raises(ModelError, match="does not match|do not fit"):
        create_model("resnet18", num_classes=3, weights=other)


def test_pretrained_download_failure_is_one_line_model_error(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelError, match=r"could not download pretrained weights for resnet18 \(offline\?\); "
                                         r"use --weights FILE") as info:
        create_model("resnet18", num_classes=3, pretrained=True)
    assert "\n" not in str(info.value)


def test_default_preprocessing():
    lite = default_preprocessing("efficientnet_lite0")
    assert lite == {"input_size": 224, "resize": 256, "interpolation": "bicubic",
                    "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "color_constancy": "none"}
    seed = default_preprocessing("seed-cnn")
    assert seed == {"input_size": 180, "resize": 180, "interpolation": "bilinear",
                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "color_constancy": "none"}
    assert default_preprocessing("efficientnet_lite0", image_size=180)["resize"] == round(180 / 0.875)
    assert default_preprocessing("efficientnet_lite0", detail_size=150) == {**lite, "detail_size": 150}
    assert default_preprocessing("resnet18")["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # native sizes and timm's crop percentages: 240 / 0.882 = 272, 260 / 0.89 = 292
    assert [default_preprocessing(n)["input_size"] for n in LITE_MODELS] == [224, 240, 260]
    assert [default_preprocessing(n)["resize"] for n in LITE_MODELS] == [256, 272, 292]


def test_gradcam_layer_of_timm_models():
    lite = create_model("efficientnet_lite0", num_classes=3)
    assert find_gradcam_layer(lite) is lite.conv_head
    resnet = create_model("resnet18", num_classes=3)
    assert find_gradcam_layer(resnet) is resnet.layer4[-1].conv2
