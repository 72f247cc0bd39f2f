"""ONNX export: parity with PyTorch, dynamic batch, embedded metadata, and ONNX Predictor == PyTorch Predictor."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from melanoma import cli, export, referral
from melanoma.artifacts import build_test_model, file_sha256, load_model, save_model
from melanoma.errors import MelanomaError, ModelError
from melanoma.predict import Predictor


def _with_referral(src, out, images) -> str:
    """Copy of the test model with referral statistics fitted on `images` (so ONNX must carry the tensors),
    including an intermediate layer's statistics (version 3: the exported features must end with them)."""
    model, meta = load_model(src)
    predictor = Predictor.load(src)
    x = torch.stack([predictor.preprocess(p) for p in images])
    layers = referral.tap_layers(model)
    assert layers, "the test model (seed-cnn) names its referral layer"
    features, logits = referral.embed(model, x, layers)
    labels = np.arange(len(images)) % 3
    ref_meta, tensors = referral.fit_referral(features.numpy(), logits.numpy(), labels, 1.0, layers=layers,
                                              layer_dim=referral.layer_width(model, layers, x.shape[-1]))
    meta.pop("extra")
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "package_version")}
    meta["referral"] = ref_meta
    meta["thresholds"].update(ref_meta["thresholds"])
    save_model(model, meta, out, tensors)
    return str(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_isic):
    root = tmp_path_factory.mktemp("export")
    images = sorted(tiny_isic.rglob("*.jpg"))
    model_dir = _with_referral(build_test_model(root / "raw", image_size=64), root / "model", images)
    result = export.export_onnx(model_dir, root / "model.onnx")
    return model_dir, result, images


def test_export_result_and_metadata(exported):
    model_dir, result, _ = exported
    assert set(result) == {"path", "max_abs_diff", "opset", "size_mb"}
    assert result["opset"] == 18 and result["max_abs_diff"] <= export.PARITY_TOLERANCE and result["size_mb"] > 0
    proto = onnx.load(result["path"])
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["melanoma"])
    assert meta["class_names"] == json.loads(props["class_names"]) == load_model(model_dir)[1]["class_names"]
    assert "referral" in meta and props["melanoma.extra"]
    assert meta["referral"]["layers"] == ["features.12"] and meta["referral"]["version"] == 3
    weights_hash = file_sha256(f"{model_dir}/model.safetensors")
    assert props["melanoma.weights_sha256"] == meta["weights_sha256"] == weights_hash


def test_dynamic_batch(exported):
    session = ort.InferenceSession(exported[1]["path"], providers=["CPUExecutionProvider"])
    for n in (1, 5):
        logits, features = session.run(["logits", "features"], {"input": np.random.rand(n, 3, 64, 64)
                                                                .astype(np.float32)})
        assert logits.shape == (n, 9) and features.shape[0] == n
        # pre-logits (512) then the layer's channel means and standard deviations (2 x 64)
        assert features.shape[1] == 512 + 128 == load_model(exported[0])[1]["referral"]["feature_dim"]


def test_onnx_predictor_matches_pytorch_predictor(exported):
    model_dir, result, images = exported
    torch_result = Predictor.load(model_dir).predict_paths(images)
    onnx_predictor = Predictor.load(result["path"], threads=1)
    onnx_result = onnx_predictor.predict_paths(images)
    assert onnx_predictor.backend.kind == "onnx" and onnx_predictor.class_names == torch_result.class_names
    np.testing.assert_allclose(onnx_result.probs, torch_result.probs, atol=1e-5)
    np.testing.assert_array_equal(onnx_result.alert, torch_result.alert)
    np.testing.assert_array_equal(onnx_result.refer, torch_result.refer)
    assert onnx_predictor.referrer.needs_features, "referral statistics must travel inside the ONNX file"
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    a, b = Predictor.load(model_dir).predict([noise])[0], onnx_predictor.predict([noise])[0]
    assert a.refer == b.refer and a.refer_reason == b.refer_reason


def test_onnx_tta_matches_pytorch_tta(exported):
    """TTA views are numpy flips/rotations for both backends: the 8-view averages agree like single views do."""
    model_dir, result, images = exported
    torch_tta = Predictor.load(model_dir).predict_paths(images[:6], tta=True, tta_views=8)
    onnx_tta = Predictor.load(result["path"], threads=1).predict_paths(images[:6], tta=True, tta_views=8)
    one_view = Predictor.load(result["path"], threads=1).predict_paths(images[:6])
    np.testing.assert_allclose(onnx_tta.probs, torch_tta.probs, atol=1e-5)
    assert not np.allclose(onnx_tta.probs, one_view.probs, atol=1e-4)  # the views did change something


def test_parity_failure_is_a_model_error_and_writes_nothing(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ModelError, match="does not match PyTorch"):
        export.export_onnx(exported[0], tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_export(exported, tmp_path, capsys):
    assert cli.main(["export", exported[0], "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["path"] == str(tmp_path / "m.onnx")


def test_onnx_file_without_metadata_is_refused(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 2, 2),), str(tmp_path / "plain.onnx"), dynamo=False)
    with pytest.raises(ModelError, match="melanoma metadata"):
        Predictor.load(tmp_path / "plain.onnx")


@pytest.mark.slow
def test_export_efficientnet_lite0(tmp_path):
    model_dir = build_test_model(tmp_path / "lite0", architecture="efficientnet_lite0", image_size=224)
    result = export.export_onnx(model_dir, tmp_path / "lite0.onnx")
    assert result["max_abs_diff"] <= export.PARITY_TOLERANCE


def test_export_traces_the_referral_layer_statistics_of_lite0():
    """The referral's forward hooks on blocks.5 go into the graph: ONNX features == embed's (parity check)."""
    from melanoma.models import create_model

    model = create_model("efficientnet_lite0", num_classes=9, pretrained=False).eval()
    layers = referral.tap_layers(model)
    assert layers == ["blocks.5"]
    proto = export._export_proto(export.LogitsAndFeatures(model, layers), 96, 18)
    assert export._check_parity(model, proto.SerializeToString(), 96, 9, layers) <= export.PARITY_TOLERANCE
    features, _ = referral.embed(model, torch.randn(1, 3, 96, 96), layers)
    assert features.shape[1] == model.num_features + 2 * 192


def _modules_importing_torch_at_top() -> list[str]:
    """Modules on the ONNX prediction path that still import torch when imported (the xfail condition below)."""
    import inspect
    import re

    from melanoma import input_check

    return [m.__name__ for m in (input_check, referral)
            if re.search(r"^(import torch|from torch)", inspect.getsource(m), re.M)]


_PENDING = _modules_importing_torch_at_top()


@pytest.mark.xfail(bool(_PENDING), strict=True,
                   reason=f"{_PENDING} import torch at module level (see docs/inference.md, torch-free ONNX)")
def test_onnx_prediction_never_imports_torch(exported, tmp_path):
    """Predictor.load(x.onnx) and `melanoma predict --model x.onnx` in a fresh interpreter: no torch (fast start,
    small memory; the service loads ONNX models the same way)."""
    import subprocess
    import sys

    _, result, images = exported
    script = (
        "import sys, json\n"
        "from melanoma.predict import Predictor\n"
        "from melanoma import cli\n"
        f"images = {[str(p) for p in images[:6]]!r}\n"
        f"p = Predictor.load({result['path']!r})\n"
        "p.predict_paths(images, tta=True, tta_views=8); p.predict(images[:2])\n"
        f"rc = cli.main(['predict', *images, '--model', {result['path']!r}, '--out', {str(tmp_path / 'p.csv')!r}])\n"
        "print(json.dumps({'rc': rc, 'torch': sorted(m for m in sys.modules if m.split('.')[0] == 'torch')}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "torch": []}


@pytest.mark.parametrize("opset", [5, 17, 10_000])
def test_unsupported_opset_is_a_one_line_error(exported, tmp_path, capsys, opset):
    out = tmp_path / "m.onnx"
    assert cli.main(["export", exported[0], "--out", str(out), "--opset", str(opset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--opset {opset} is not supported: use 18-" in err and "Traceback" not in err
    assert not out.exists()


def test_a_newer_opset_is_written_as_asked(exported, tmp_path):
    newest = export.supported_opsets()[-1]
    result = export.export_onnx(exported[0], tmp_path / "new.onnx", opset=min(20, newest))
    assert result["opset"] == min(20, newest)
    assert {o.version for o in onnx.load(result["path"]).opset_import if o.domain in ("", "ai.onnx")} == {result["opset"]}


# ------------------------------------------------------------------------------------------------ INT8
def test_int8_is_written_when_within_bounds(exported, tiny_isic, tmp_path, capsys, monkeypatch):
    """Calibrated on half of a labelled folder, checked on the other half; bounds loosened so this random-weight
    model passes: the file loads as a melanoma model and records the figures it passed with."""
    monkeypatch.setattr(export, "INT8_MAX_AUC_CHANGE", 1.0)
    monkeypatch.setattr(export, "INT8_MIN_ALERT_AGREEMENT", 0.0)
    out = tmp_path / "m.onnx"
    assert cli.main(["export", exported[0], "--out", str(out), "--int8", "--calibration", str(tiny_isic),
                     "--int8-check", str(tiny_isic)]) == 0
    printed = capsys.readouterr().out
    figures = json.loads(printed[printed.index("{"):])["int8"]
    assert figures["path"] == str(tmp_path / "m.int8.onnx") and figures["n_calibration"] == 23
    assert figures["n_check"] == 22 and 0 <= figures["alert_agreement"] <= 1 and "auc_change" in figures
    props = {p.key: p.value for p in onnx.load(figures["path"]).metadata_props}
    assert json.loads(props["melanoma.int8"])["n_check"] == 22
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(figures["path"]).graph.node)
    int8 = Predictor.load(figures["path"], threads=1)
    assert int8.predict_paths(exported[2][:3]).probs.shape == (3, 9)


def test_int8_outside_bounds_is_refused_in_one_line(exported, tiny_isic, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export, "INT8_MAX_AUC_CHANGE", -1.0)  # no model can pass
    out = tmp_path / "m.onnx"
    assert cli.main(["export", exported[0], "--out", str(out), "--int8", "--calibration", str(tiny_isic),
                     "--int8-check", str(tiny_isic)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and "INT8 model not written: melanoma AUC moved by" in captured.err
    assert "alert decisions agree on" in captured.err
    assert out.exists() and not (tmp_path / "m.int8.onnx").exists()  # the fp32 export is kept


def test_int8_survives_a_failing_symbolic_shape_inference(exported, tiny_isic, tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference raised a TypeError on the shipped 3-member ensemble's graph: the
    quantizer falls back to ONNX shape inference; anything else it raises is one line naming the file."""
    import onnxruntime.quantization.shape_inference as shape_inference

    real = shape_inference.quant_pre_process
    calls = []

    def symbolic_fails(src, dst, **kwargs):
        calls.append(kwargs)
        if not kwargs.get("skip_symbolic_shape"):
            raise TypeError("object of type 'NoneType' has no len()")
        return real(src, dst, **kwargs)

    monkeypatch.setattr(shape_inference, "quant_pre_process", symbolic_fails)
    monkeypatch.setattr(export, "INT8_MAX_AUC_CHANGE", 1.0)
    monkeypatch.setattr(export, "INT8_MIN_ALERT_AGREEMENT", 0.0)
    fp32 = tmp_path / "m.onnx"
    export.export_onnx(exported[0], fp32)
    figures = export.export_int8(exported[0], fp32, calibration=tiny_isic, check=tiny_isic)
    assert Path(figures["path"]).is_file() and calls == [{}, {"skip_symbolic_shape": True}]

    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("graph is broken\nsecond line")))
    with pytest.raises(ModelError, match=r"INT8 quantization failed \(RuntimeError: graph is broken\)") as info:
        export.export_int8(exported[0], fp32, out=tmp_path / "other.int8.onnx", calibration=tiny_isic,
                           check=tiny_isic)
    assert "\n" not in str(info.value) and str(fp32) in str(info.value)


def test_int8_check_needs_labelled_melanomas(exported, tiny_isic, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for image in sorted(tiny_isic.rglob("*.jpg"))[:8]:
        (plain / image.name).write_bytes(image.read_bytes())
    export.export_onnx(exported[0], tmp_path / "m.onnx")
    with pytest.raises(MelanomaError, match="needs labelled melanomas"):
        export.export_int8(exported[0], tmp_path / "m.onnx", calibration=plain, check=plain)
