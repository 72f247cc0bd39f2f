"""Registry, construction, weight loading and Grad-CAM layer lookup (CPU, tiny inputs)."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from melanoma.errors import ModelError
from melanoma.models import (_map_state_dict_in_order, create_model, default_preprocessing, find_gradcam_layer,
                             list_models)


@pytest.mark.parametrize("name,pretrained,size", [
    ("seed-cnn", False, 64),
    ("efficientnet_lite0", True, 64),
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


def test_registry_lists_both_models():
    assert {"seed-cnn", "efficientnet_lite0"} <= set(list_models())


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
    assert default_preprocessing("resnet18")["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_gradcam_layer_of_timm_models():
    lite = create_model("efficientnet_lite0", num_classes=3)
    assert find_gradcam_layer(lite) is lite.conv_head
    resnet = create_model("resnet18", num_classes=3)
    assert find_gradcam_layer(resnet) is resnet.layer4[-1].conv2
