"""ONNX export of a model artifact: outputs (logits, features), dynamic batch, model.json embedded, parity-checked.

The graph has one input "input" [batch, 3, S, S] (eval-preprocessed, normalised, float32) and two outputs:
"logits" [batch, C] (before temperature) and "features" [batch, D] (pre-logits, for the referral check).
The whole model.json is stored in the ONNX metadata_props under "melanoma" (JSON), the class names under
"class_names", the SHA-256 of the exported model.safetensors under "melanoma.weights_sha256", and the referral statistics tensors under "melanoma.extra" (base64 safetensors), so an .onnx file
alone is enough for `Predictor.load("model.onnx")`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from melanoma.artifacts import HASH_KEY
from melanoma.errors import ConfigError, ModelError
from melanoma.predict import ONNX_CLASSES_KEY, ONNX_EXTRA_KEY, ONNX_HASH_KEY, ONNX_META_KEY
from melanoma.referral import classifier_module, embed

PARITY_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch eager
# torch.onnx's exporter writes opset 18 natively. Below it, it calls a down-converter that fails on this project's
# models (no adapter for Pad at 17 on efficientnet_lite0) and, below 16, silently writes 18 instead.
MIN_OPSET = 18


def supported_opsets() -> range:
    """ONNX opsets `export_onnx` writes: 18 up to the newest the installed onnx package knows."""
    import onnx

    return range(MIN_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset) -> int:
    """The opset as an int, or ConfigError (one line) naming the supported range."""
    allowed = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in allowed:
        raise ConfigError(f"--opset {opset} is not supported: use {allowed.start}-{allowed.stop - 1} (the PyTorch "
                          f"exporter writes opset {MIN_OPSET} and newer; older ones it cannot convert reliably)")
    return opset


class _ConcatHead(nn.Module):
    """Classifier replacement returning [logits | features] so the exported graph exposes both."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(x), x.flatten(1)], dim=1)


class LogitsAndFeatures(nn.Module):
    """Wraps a classifier so forward returns (logits, pre-logit features) without hooks (export-friendly).

    Works when the model's output IS its classifier's output (timm models, seed-cnn); checked against
    `referral.embed` by the parity test in `export_onnx`.
    """

    def __init__(self, model: nn.Module, num_classes: int):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.num_classes = num_classes
        head = classifier_module(self.model)
        parent, attr = _parent_of(self.model, head)
        setattr(parent, attr, _ConcatHead(head))
        self.eval()  # a fresh nn.Module is in training mode; dropout/BN must be in eval for export

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out[:, : self.num_classes], out[:, self.num_classes:]


def _parent_of(root: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of `target` inside `root`."""
    for name, module in root.named_modules():
        if module is target and name:
            parent_name, _, attr = name.rpartition(".")
            return root.get_submodule(parent_name) if parent_name else root, attr
    raise ModelError(f"cannot locate the classifier inside {type(root).__name__}")


def _metadata(meta: dict) -> dict[str, str]:
    """ONNX metadata_props: model.json (minus tensors), class names, referral tensors as base64 safetensors."""
    from safetensors.torch import save as save_tensors

    extra = {k: v.contiguous() for k, v in (meta.get("extra") or {}).items()}
    plain = {k: v for k, v in meta.items() if k != "extra"}
    props = {ONNX_META_KEY: json.dumps(plain), ONNX_CLASSES_KEY: json.dumps(plain["class_names"])}
    if plain.get(HASH_KEY):  # which model.safetensors this graph was exported from (also inside the JSON)
        props[ONNX_HASH_KEY] = plain[HASH_KEY]
    if extra:
        props[ONNX_EXTRA_KEY] = base64.b64encode(save_tensors(extra)).decode("ascii")
    return props


def _export_proto(wrapper: nn.Module, size: int, opset: int):
    """torch.onnx dynamo exporter (torch >= 2.9 default) with a dynamic batch axis; returns an onnx ModelProto."""
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        program = torch.onnx.export(wrapper, (example,), input_names=["input"], output_names=["logits", "features"],
                                    opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True,
                                    external_data=False, verbose=False)
    return program.model_proto


def _check_parity(model: nn.Module, data: bytes, size: int, num_classes: int) -> float:
    """Max |logit difference| onnxruntime vs PyTorch on a random batch of 3; features are compared too."""
    import onnxruntime as ort

    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    features, logits = embed(model, x)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        onnx_logits, onnx_features = session.run(["logits", "features"], {"input": x.numpy()})
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types; one line for the user
        raise ModelError(f"onnxruntime {ort.__version__} cannot run the exported graph: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    if onnx_logits.shape != (3, num_classes) or onnx_features.shape != tuple(features.shape):
        raise ModelError(f"ONNX outputs have shapes {onnx_logits.shape}, {onnx_features.shape}; expected "
                         f"{(3, num_classes)}, {tuple(features.shape)}")
    diff = float(np.abs(onnx_logits - logits.numpy()).max())
    feature_diff = float(np.abs(onnx_features - features.numpy()).max() / (features.abs().max().item() + 1e-12))
    if not diff <= PARITY_TOLERANCE or not feature_diff <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX export does not match PyTorch: max |logit diff| {diff:.2e}, relative feature diff "
                         f"{feature_diff:.2e} (limit {PARITY_TOLERANCE:g})")
    return diff


def export_onnx(model_path, out, opset: int = 18) -> dict:
    """Export the model artifact at `model_path` to `out` (.onnx), check it, and return
    {"path", "max_abs_diff", "opset", "size_mb"}. ConfigError for an unsupported opset; ModelError when the export
    does not match PyTorch or does not have the requested opset."""
    import onnx

    from melanoma.artifacts import atomic_write_bytes, load_model

    opset = check_opset(opset)
    model, meta = load_model(model_path)
    size, num_classes = int(meta["preprocessing"]["input_size"]), len(meta["class_names"])
    try:
        proto = _export_proto(LogitsAndFeatures(model, num_classes), size, opset)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; keep one line for the user
        raise ModelError(f"ONNX export of {meta['architecture']} failed: {str(exc).splitlines()[0][:200]}") from None
    onnx.helper.set_model_props(proto, _metadata(meta))
    proto.doc_string = f"melanoma {meta['architecture']}: inputs normalised per model.json preprocessing"
    onnx.checker.check_model(proto, full_check=True)
    actual_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if actual_opset != opset:
        raise ModelError(f"the exporter wrote opset {actual_opset}, not the requested {opset}; nothing written")
    data = proto.SerializeToString()
    diff = _check_parity(model, data, size, num_classes)
    print(f"ONNX parity: max |logit diff| vs PyTorch = {diff:.2e}")
    out = Path(out)
    atomic_write_bytes(out, data)
    return {"path": str(out), "max_abs_diff": diff, "opset": int(actual_opset),
            "size_mb": round(len(data) / 1e6, 3)}
