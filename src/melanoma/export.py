"""ONNX export of a model artifact: outputs (logits, features), dynamic batch, model.json embedded, parity-checked.

The graph has one input "input" [batch, 3, S, S] (eval-preprocessed, normalised, float32) and two outputs:
"logits" [batch, C] (before temperature) and "features" [batch, D] (for the referral check: pre-logits, then the
statistics of the layers the model's referral reads, `referral.capture`).
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
from melanoma.referral import capture, embed, layers_of

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


class LogitsAndFeatures(nn.Module):
    """Wraps a classifier so forward returns (logits, referral features): the same forward hooks as
    `referral.embed` (the exporter traces them into the graph), so the exported features are embed's by
    construction; `_check_parity` confirms it numerically."""

    def __init__(self, model: nn.Module, layers=()):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.layers = list(layers)
        self.eval()  # a fresh nn.Module is in training mode; dropout/BN must be in eval for export

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, logits = capture(self.model, x, self.layers)
        return logits, features


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


def _check_parity(model: nn.Module, data: bytes, size: int, num_classes: int, layers=()) -> float:
    """Max |logit difference| onnxruntime vs PyTorch on a random batch of 3; features are compared too."""
    import onnxruntime as ort

    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    features, logits = embed(model, x, layers)
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
    layers = layers_of(meta)
    try:
        proto = _export_proto(LogitsAndFeatures(model, layers), size, opset)
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
    diff = _check_parity(model, data, size, num_classes, layers)  # reported in the result (max_abs_diff), not printed
    out = Path(out)
    atomic_write_bytes(out, data)
    return {"path": str(out), "max_abs_diff": diff, "opset": int(actual_opset),
            "size_mb": round(len(data) / 1e6, 3)}


# ------------------------------------------------------------------------------------------------ INT8
INT8_MAX_AUC_CHANGE = 0.005        # |melanoma AUC (INT8) - melanoma AUC (fp32)| on the labelled check set
INT8_MIN_ALERT_AGREEMENT = 0.99    # share of check images whose melanoma alert is the same in INT8 and fp32
CALIBRATION_IMAGES = 128           # at most this many calibration images (evenly spread over the source)
INT8_KEY = "melanoma.int8"         # ONNX metadata: the check figures the INT8 file passed


def int8_path(out) -> Path:
    """Where `--int8` writes the quantized model: model.onnx -> model.int8.onnx."""
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


def _model_folder(model_path) -> Path:
    path = Path(model_path)
    return path if path.is_dir() else path.parent


def _labelled_images(source, model_path) -> tuple[list[str], list[str | None]]:
    """(paths, labels) of a prediction CSV with `path` (+ `label`) columns or a dataset folder (`data.discover`);
    default: the run's val_predictions.csv. Labels are None where the source has none."""
    from melanoma.errors import DataError

    source = Path(source) if source else _model_folder(model_path) / "val_predictions.csv"
    if not source.exists():
        raise ConfigError(f"{source}: no such file or folder (INT8 calibration/check images: a folder of images or "
                          "a prediction CSV with a path column, default RUN/val_predictions.csv)")
    if source.is_dir():
        from melanoma.data import discover

        try:
            table = discover(source)
            return [s.path for s in table.samples], [s.label for s in table.samples]
        except DataError:  # a plain folder of images, no labels
            from melanoma.predict import expand_paths

            paths = expand_paths([source])[0]
            return paths, [None] * len(paths)
    from melanoma.evaluate import read_predictions_csv

    table = read_predictions_csv(source)
    if not any(table.paths):
        raise DataError(f"{source}: no 'path' column to read the images from")
    return table.paths, table.labels


def _calibration_batches(predictor, paths: list[str]):
    """onnxruntime CalibrationDataReader over the preprocessed images, one image per batch (MinMax needs equal
    batch shapes)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._paths = iter(paths)

        def get_next(self):
            path = next(self._paths, None)
            return None if path is None else {"input": predictor.model_input(path)[None]}

    return Reader()


def _quantize(fp32_path: Path, predictor, calibration: list[str]) -> bytes:
    """Static INT8 quantization (QDQ, per-channel INT8 weights, UINT8 activations, MinMax ranges)."""
    import logging
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice for every graph at WARNING
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
            try:
                quant_pre_process(str(fp32_path), str(prepared))
            except Exception:  # noqa: BLE001 - onnxruntime's symbolic shape inference fails on some graphs
                # (the 3-member ensemble: a TypeError deep inside it); ONNX's own shape inference suffices for CNNs
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), _calibration_batches(predictor, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            return quantized.read_bytes()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types; the user gets one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{fp32_path}: INT8 quantization failed ({type(exc).__name__}: {first}); the float32 "
                         "ONNX file is unaffected") from None
    finally:
        root.setLevel(level)


def _compare(fp32, int8, paths: list[str], labels: list[str]) -> dict:
    """Melanoma AUC of both models and the share of equal alert decisions on the labelled check images."""
    from sklearn.metrics import roc_auc_score

    ref, new = fp32.predict_paths(paths), int8.predict_paths(paths)
    if ref.errors:
        raise ModelError(f"{ref.errors[0][0]}: {ref.errors[0][1]} (INT8 check images must all be readable)")
    is_mel = np.array([label == fp32.meta.get("melanoma_class") for label in labels])
    auc_fp32 = float(roc_auc_score(is_mel, ref.melanoma_probability))
    auc_int8 = float(roc_auc_score(is_mel, new.melanoma_probability))
    return {"n_check": len(paths), "melanoma_auc_fp32": round(auc_fp32, 4), "melanoma_auc_int8": round(auc_int8, 4),
            "auc_change": round(auc_int8 - auc_fp32, 4),
            "alert_agreement": round(float(np.mean(ref.alert == new.alert)), 4),
            "refer_agreement": round(float(np.mean(ref.refer == new.refer)), 4),
            "max_probability_change": round(float(np.abs(ref.probs - new.probs).max()), 4)}


def _split(model_path, calibration, check) -> tuple[list[str], list[str], list[str]]:
    """(calibration paths, check paths, check labels): the check images never include a calibration image; when
    both come from one source, at most every other image calibrates."""
    same_source = calibration == check
    cal_paths, _ = _labelled_images(calibration, model_path)
    step = max(2 if same_source else 1, -(-len(cal_paths) // CALIBRATION_IMAGES))
    cal_paths = cal_paths[::step][:CALIBRATION_IMAGES]
    if not cal_paths:
        raise ConfigError(f"no calibration images in {calibration or 'the run val_predictions.csv'}")
    used = set(cal_paths)
    paths, labels = _labelled_images(check, model_path)
    kept = [(p, lab) for p, lab in zip(paths, labels) if p not in used and lab is not None]
    return cal_paths, [p for p, _ in kept], [lab for _, lab in kept]


def export_int8(model_path, fp32_onnx, out=None, calibration=None, check=None, threads: int = 1) -> dict:
    """Quantize the exported `fp32_onnx` to INT8 (static, calibrated on `calibration` images, default the run's
    validation images) and write it to `out` (default model.int8.onnx) ONLY if, on the labelled `check` images
    (default: the validation images not used for calibration), melanoma AUC moves by at most INT8_MAX_AUC_CHANGE
    and alert decisions agree on at least INT8_MIN_ALERT_AGREEMENT of them. Returns the figures; ModelError (one
    line, with the figures) when a bound fails, and nothing is written."""
    import onnx

    from melanoma.artifacts import atomic_write_bytes
    from melanoma.predict import Predictor, _onnx_session

    fp32 = Predictor.load(fp32_onnx, threads=threads)
    if fp32.melanoma_index is None:
        raise ModelError(f"{fp32_onnx}: the INT8 check needs a melanoma class (it compares melanoma AUC)")
    cal_paths, check_paths, labels = _split(model_path, calibration, check)
    mel = fp32.meta["melanoma_class"]
    if len({lab == mel for lab in labels}) < 2:
        raise ConfigError(f"the INT8 check needs labelled melanomas and other lesions beside the {len(cal_paths)} "
                          f"calibration images; got {len(labels)} labelled images (--int8-check)")
    proto = onnx.load_from_string(_quantize(Path(fp32_onnx), fp32, cal_paths))
    onnx.helper.set_model_props(proto, {p.key: p.value for p in onnx.load(str(fp32_onnx)).metadata_props})
    data = proto.SerializeToString()
    int8 = Predictor(fp32.backend.__class__(_onnx_session(data, threads)), fp32.meta, "int8")
    figures = {"n_calibration": len(cal_paths), **_compare(fp32, int8, check_paths, labels)}
    if abs(figures["auc_change"]) > INT8_MAX_AUC_CHANGE or figures["alert_agreement"] < INT8_MIN_ALERT_AGREEMENT:
        raise ModelError(f"INT8 model not written: melanoma AUC moved by {figures['auc_change']:+.4f} (limit "
                         f"{INT8_MAX_AUC_CHANGE}) and alert decisions agree on {figures['alert_agreement']:.2%} of "
                         f"{figures['n_check']} images (need {INT8_MIN_ALERT_AGREEMENT:.0%}); keep the fp32 file")
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        INT8_KEY: json.dumps(figures)})
    out = Path(out) if out else int8_path(fp32_onnx)
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    return {"path": str(out), **figures, "size_mb": round(len(data) / 1e6, 3)}
