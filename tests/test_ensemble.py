"""Ensembles as one model: the combination rule, the artifact round trip, and (slow) three tiny trained runs that
predict, evaluate, explain and export to one ONNX file; a CV run's folds scored out-of-fold; mismatch errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from melanoma import cli, export
from melanoma.artifacts import load_model, save_model
from melanoma.ensemble import EnsembleHead, EnsembleNet, build_ensemble, ensemble_name, member_architectures
from melanoma.errors import ModelError
from melanoma.models import create_model, default_preprocessing, find_gradcam_layer
from melanoma.predict import Predictor

sys.path.insert(0, str(Path(__file__).parent))
from test_training import tiny_config  # noqa: E402  (the shared shrunk training config)


# ------------------------------------------------------------------------------------------------ fast
def test_softmax_of_the_ensemble_logits_is_the_mean_of_calibrated_member_probabilities():
    torch.manual_seed(0)
    scaled = torch.randn(3, 5, 4) * 3  # [members, images, classes], already divided by the temperatures
    combined = EnsembleHead.combine(scaled)
    torch.testing.assert_close(combined.softmax(-1), scaled.softmax(-1).mean(0))
    # energy (what referral scores) = the members' mean energy
    torch.testing.assert_close(torch.logsumexp(combined, -1), torch.logsumexp(scaled, -1).mean(0))
    torch.testing.assert_close(EnsembleHead.combine(scaled[:1]), scaled[0])  # one member: its own logits


def test_masked_combination_uses_only_the_members_that_held_an_image_out():
    torch.manual_seed(1)
    scaled = torch.randn(3, 4, 5)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    probs = EnsembleHead.combine(scaled, mask).softmax(-1)
    for n in range(4):
        expected = scaled[mask[:, n], n].softmax(-1).mean(0)
        torch.testing.assert_close(probs[n], expected)


def _random_ensemble(size=64, temperatures=(0.7, 1.5)) -> EnsembleNet:
    torch.manual_seed(0)
    members = [create_model("seed-cnn", 4, image_size=size).eval() for _ in temperatures]
    net = EnsembleNet(members, size).eval()
    net.head.temperatures.copy_(torch.tensor(temperatures))
    return net


def test_ensemble_net_forward_matches_its_members_and_round_trips(tmp_path):
    net = _random_ensemble()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([(m(x) / t).softmax(-1) for m, t in zip(net.members, (0.7, 1.5))]).mean(0)
        torch.testing.assert_close(net(x).softmax(-1), expected)
    name = ensemble_name(["seed-cnn", "seed-cnn"])
    assert member_architectures(name) == ["seed-cnn", "seed-cnn"]
    meta = {"architecture": name, "class_names": list("abcd"), "preprocessing": default_preprocessing(name, 64),
            "temperature": 1.0, "thresholds": {}}
    save_model(net, meta, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert isinstance(loaded, EnsembleNet)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert find_gradcam_layer(loaded) is loaded.cam_layer


def test_grad_cam_of_an_ensemble_sums_its_members_maps():
    """Two copies of one network: the ensemble's output is the network's, and its one Grad-CAM (over both copies'
    feature maps side by side) equals the network's own Grad-CAM at the same layer."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    single = create_model("seed-cnn", 4, image_size=64).eval()
    twin = create_model("seed-cnn", 4, image_size=64).eval()
    twin.load_state_dict(single.state_dict())
    net = EnsembleNet([single, twin], 64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), single(x))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    with GradCAM(model=net, target_layers=[find_gradcam_layer(net)]) as cam:
        ensemble_maps = cam(input_tensor=x, targets=targets)
    with GradCAM(model=single, target_layers=[single.features]) as cam:
        single_maps = cam(input_tensor=x, targets=targets)
    np.testing.assert_allclose(ensemble_maps, single_maps, atol=1e-5)


def test_malformed_or_untrainable_ensemble_names():
    with pytest.raises(ModelError, match="malformed ensemble"):
        member_architectures("ensemble()")
    with pytest.raises(ModelError, match="not pretrained"):
        create_model("ensemble(seed-cnn,seed-cnn)", 3, pretrained=True, image_size=64)


def test_members_with_different_feature_grids_refuse_grad_cam_only():
    torch.manual_seed(0)
    members = [create_model("seed-cnn", 3, image_size=96), create_model("efficientnet_lite0", 3)]  # 4x4 vs 3x3
    net = EnsembleNet(members, 96).eval()
    assert net(torch.rand(2, 3, 96, 96)).shape == (2, 3)
    with pytest.raises(ModelError, match="feature maps of different sizes"):
        find_gradcam_layer(net)


def test_build_refuses_nested_ensembles_and_runs_without_validation_predictions(tmp_path):
    from melanoma.artifacts import build_test_model

    plain = build_test_model(tmp_path / "plain", image_size=64)
    other = build_test_model(tmp_path / "other", image_size=64, seed=1)
    nested = build_test_model(tmp_path / "nested", architecture=ensemble_name(["seed-cnn", "seed-cnn"]),
                              image_size=64)
    with pytest.raises(ModelError, match="nested: is itself an ensemble"):
        build_ensemble([plain, nested], tmp_path / "out")
    with pytest.raises(ModelError, match=r"plain/val_predictions.csv: missing"):
        build_ensemble([plain, other], tmp_path / "out")
    with pytest.raises(ModelError, match="at least 2 members"):
        build_ensemble([plain], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_build_warns_that_a_members_prior_correction_does_not_carry_over(tmp_path):
    import json

    from melanoma.artifacts import build_test_model
    from melanoma.errors import MelanomaWarning

    runs = [build_test_model(tmp_path / name, image_size=64, seed=i) for i, name in enumerate(("a", "b"))]
    meta = json.loads((runs[1] / "model.json").read_text())
    meta["prior_correction"] = {"method": "training mix", "weights": [1.0] * len(meta["class_names"])}
    (runs[1] / "model.json").write_text(json.dumps(meta))
    with pytest.warns(MelanomaWarning, match=r"b: a prior correction the ensemble does not carry over"), \
            pytest.raises(ModelError, match="val_predictions.csv: missing"):
        build_ensemble(runs, tmp_path / "out")


# ------------------------------------------------------------------------------------------------ slow
@pytest.fixture(scope="module")
def three_runs(tiny_isic, tmp_path_factory) -> list[Path]:
    """Three tiny seed-cnn runs on one split (same data and seed), differing in learning rate."""
    from melanoma.training import train

    root = tmp_path_factory.mktemp("members")
    return [Path(train(tiny_config(tiny_isic, root / f"run{i}", lr=lr))["run"])
            for i, lr in enumerate((1e-3, 3e-4, 3e-3))]


@pytest.fixture(scope="module")
def ensemble_dir(three_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    build_ensemble(three_runs, out, bootstrap=50)
    return out


@pytest.mark.slow
def test_ensemble_artifact_is_one_model_fitted_on_its_own_heldout_predictions(three_runs, ensemble_dir):
    net, meta = load_model(ensemble_dir)
    assert isinstance(net, EnsembleNet) and len(net.members) == 3
    assert meta["architecture"] == "ensemble(seed-cnn,seed-cnn,seed-cnn)" and meta["temperature"] == 1.0
    members = [json.loads((r / "model.json").read_text()) for r in three_runs]
    assert net.head.temperatures.tolist() == pytest.approx([m["temperature"] for m in members])
    assert meta["ensemble"]["heldout"]["scoring"] == "every member held these images out"
    assert meta["ensemble"]["heldout"]["images"] == members[0]["metrics"]["n"]
    assert 0.0 <= meta["thresholds"]["melanoma_alert"] <= 1.0
    assert meta["referral"]["validation"]["n"] == meta["ensemble"]["heldout"]["images"]
    assert meta["model_card"]["intended_use"].startswith("Decision support")
    assert (ensemble_dir / "val_predictions.csv").is_file() and (ensemble_dir / "val_metrics.json").is_file()
    assert any(k.startswith("fingerprint.") for k in meta["extra"])  # evaluate still finds training images


@pytest.mark.slow
@pytest.mark.parametrize("dtype, size_ratio", [("float16", 0.6), ("int8", 0.4)])
def test_rounded_ensemble_is_fitted_on_the_weights_it_ships(three_runs, ensemble_dir, tiny_isic, tmp_path, dtype,
                                                            size_ratio):
    half = tmp_path / dtype
    build_ensemble(three_runs, half, bootstrap=50, weights_dtype=dtype)
    full_size = (ensemble_dir / "model.safetensors").stat().st_size
    assert (half / "model.safetensors").stat().st_size < size_ratio * full_size
    meta = json.loads((half / "model.json").read_text())
    assert meta["weights_dtype"] == dtype
    # the stored validation probabilities (what the threshold was chosen on) are the reloaded model's predictions
    rows = list(csv.DictReader((half / "val_predictions.csv").open()))[:8]
    again = Predictor.load(half).predict_paths([r["path"] for r in rows])
    mel = again.class_names.index("melanoma")
    np.testing.assert_allclose(again.probs[:, mel], [float(r["melanoma_probability"]) for r in rows], atol=1e-5)


@pytest.mark.slow
def test_ensemble_predicts_the_mean_of_its_members_calibrated_probabilities(three_runs, ensemble_dir, tiny_isic):
    images = sorted(tiny_isic.rglob("*.jpg"))[::5]
    ensemble = Predictor.load(ensemble_dir).predict_paths(images)
    members = [Predictor.load(r).predict_paths(images) for r in three_runs]
    expected = np.mean([m.probs for m in members], axis=0)
    np.testing.assert_allclose(ensemble.probs, expected, atol=1e-5)


@pytest.mark.slow
def test_ensemble_exports_to_one_onnx_file_with_parity(ensemble_dir, tiny_isic, tmp_path):
    result = export.export_onnx(ensemble_dir, tmp_path / "ensemble.onnx")
    assert result["max_abs_diff"] <= 1e-4
    graph = onnx.load(result["path"])
    assert [o.name for o in graph.graph.output] == ["logits", "features"]
    images = sorted(tiny_isic.rglob("*.jpg"))[::4]
    torch_result = Predictor.load(ensemble_dir).predict_paths(images)
    onnx_result = Predictor.load(result["path"]).predict_paths(images)
    np.testing.assert_allclose(onnx_result.probs, torch_result.probs, atol=1e-5)
    assert (onnx_result.alert == torch_result.alert).all() and (onnx_result.refer == torch_result.refer).all()


@pytest.mark.slow
def test_ensemble_evaluates_predicts_and_explains_from_the_cli(ensemble_dir, tiny_isic, tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(ensemble_dir), "--data", str(tiny_isic), "--out",
                     str(tmp_path / "eval"), "--bootstrap", "20", "--no-overlap-check"]) == 0
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scored["n_images"] == 45
    melanoma_dir = tiny_isic / "melanoma"
    assert cli.main(["predict", str(melanoma_dir), "--model", str(ensemble_dir), "--out",
                     str(tmp_path / "preds.csv"), "--explain", str(tmp_path / "cam")]) == 0
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 1 + 5
    assert len(list((tmp_path / "cam").glob("*.png"))) >= 5


@pytest.mark.slow
def test_members_with_other_preprocessing_are_refused_naming_the_run(three_runs, tiny_isic, tmp_path, capsys):
    from melanoma.training import train

    other = Path(train(tiny_config(tiny_isic, tmp_path / "at72", image_size=72))["run"])
    assert cli.main(["ensemble", str(three_runs[0]), str(other), "--out", str(tmp_path / "ens")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert str(other) in err and "input_size" in err
    assert not (tmp_path / "ens" / "model.json").exists()


@pytest.mark.slow
def test_cv_run_ships_its_folds_scored_out_of_fold(tiny_isic, tmp_path):
    from melanoma.training import train

    cv = Path(train(tiny_config(tiny_isic, tmp_path / "cv", folds=3))["run"])
    result = build_ensemble([cv], tmp_path / "cv-ensemble", bootstrap=20)
    assert len(result["members"]) == 3
    held = result["heldout"]
    assert held["scoring"].startswith("out-of-fold")
    assert held["images"] == sum(held["per_member_images"])  # fold validation sets are disjoint
    _, meta = load_model(tmp_path / "cv-ensemble")
    assert meta["architecture"] == "ensemble(seed-cnn,seed-cnn,seed-cnn)"
    with pytest.raises(ModelError, match="already holds a model"):
        build_ensemble([cv], tmp_path / "cv-ensemble")
