"""rethreshold: a new operating point from the stored validation predictions, without retraining."""

import json
from pathlib import Path

import numpy as np
import pytest

from melanoma import cli
from melanoma.artifacts import build_test_model
from melanoma.errors import ModelError, ThresholdWarning
from melanoma.finalize import rethreshold


def _fake_run(tmp_path, n=60, seed=0):
    run = build_test_model(tmp_path / "run", image_size=64)
    classes = json.loads((run / "model.json").read_text())["class_names"]
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n)
    probs = rng.dirichlet(np.ones(len(classes)), n)
    mel = classes.index("melanoma")
    probs[labels == "melanoma", mel] += 0.5  # some signal
    probs /= probs.sum(axis=1, keepdims=True)
    lines = [",".join(["image", "path", *classes, "prediction", "label"])]
    for i in range(n):
        lines.append(",".join([f"img{i}.jpg", f"/x/img{i}.jpg", *(f"{v:.6f}" for v in probs[i]),
                               classes[int(probs[i].argmax())], labels[i]]))
    (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    return run, labels == "melanoma", probs[:, mel]


@pytest.mark.filterwarnings("ignore::melanoma.errors.ThresholdWarning")  # 5 melanomas: warned, on purpose
def test_rethreshold_meets_each_target_and_updates_model_json(tmp_path):
    run, is_mel, p_mel = _fake_run(tmp_path)
    low = rethreshold(run, 0.80)
    high = rethreshold(run, 1.0)
    assert high["new"] <= low["new"]
    assert high["sensitivity"] == 1.0 and low["sensitivity"] >= 0.80
    assert (np.round(p_mel, 6)[is_mel] >= high["new"]).all()
    meta = json.loads((run / "model.json").read_text())
    assert meta["thresholds"]["melanoma_alert"] == high["new"] and meta["thresholds"]["target_sensitivity"] == 1.0


def test_rethreshold_refreshes_the_cards_limitations(tmp_path):
    """A model trained by an older version keeps stale stock figures in its card until its threshold is re-chosen:
    then the card states the project's current ones (describe_limitations), as `melanoma report` shows."""
    from melanoma.report import describe_limitations

    run, _, _ = _fake_run(tmp_path)
    meta = json.loads((run / "model.json").read_text())
    meta.setdefault("model_card", {})["limitations"] = "a new source cost 0.15-0.19 melanoma AUC"
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.warns(ThresholdWarning):  # few melanomas in the fake run
        rethreshold(run, 0.9)
    meta = json.loads((run / "model.json").read_text())
    assert meta["model_card"]["limitations"] == " ".join(describe_limitations(meta))
    assert "0.15-0.19" not in meta["model_card"]["limitations"]


def test_rethreshold_needs_stored_predictions(tmp_path, capsys):
    run = build_test_model(tmp_path / "run", image_size=64)
    with pytest.raises(ModelError, match="val_predictions.csv: missing"):
        rethreshold(run, 0.9)
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--in-place"]) == 2
    assert "val_predictions.csv: missing" in capsys.readouterr().err


def test_rethreshold_from_a_clinics_own_labelled_predictions(tmp_path, capsys):
    """`melanoma evaluate` output on local images (dataset label names, e.g. "MEL"/"nv") sets the threshold."""
    run, _, _ = _fake_run(tmp_path / "a")
    other, is_mel, p_mel = _fake_run(tmp_path / "b", n=80, seed=5)
    local = tmp_path / "clinic-predictions.csv"
    rows = (other / "val_predictions.csv").read_text().splitlines()
    local.write_text("\n".join([rows[0]] + [r.replace(",melanoma", ",MEL") if r.endswith(",melanoma") else r
                                            for r in rows[1:]]) + "\n")
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--predictions", str(local),
                     "--in-place", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_melanoma"] == int(is_mel.sum()) and result["sensitivity"] >= 0.9
    assert (np.round(p_mel, 6)[is_mel] >= result["new"]).mean() >= 0.9
    meta = json.loads((run / "model.json").read_text())
    assert meta["thresholds"]["melanoma_alert_source"] == str(local.resolve())
    few = tmp_path / "few.csv"
    few.write_text("\n".join(rows[:4]) + "\n")
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--predictions", str(few),
                     "--in-place"]) == 2
    assert "at least 5 of each" in capsys.readouterr().err


def test_threshold_writes_a_new_model_folder_and_leaves_the_run_alone(tmp_path, capsys):
    run, _, _ = _fake_run(tmp_path, n=200)
    before = (run / "model.json").read_text()
    out = tmp_path / "sens95"
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.95", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "melanoma alert threshold" in printed and str(out / "model.json") in printed
    assert (run / "model.json").read_text() == before
    meta = json.loads((out / "model.json").read_text())
    assert meta["thresholds"]["target_sensitivity"] == 0.95
    assert {p.name for p in out.iterdir()} == {"model.json", "model.safetensors", "val_predictions.csv"}
    from melanoma.predict import Predictor

    assert Predictor.load(out).meta["thresholds"]["melanoma_alert"] == meta["thresholds"]["melanoma_alert"]
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_threshold_needs_out_or_in_place_and_not_both(tmp_path, capsys):
    run, _, _ = _fake_run(tmp_path)
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9"]) == 2
    assert "one of the arguments --out --in-place is required" in capsys.readouterr().err
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--in-place", "--out", "x"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_threshold_warns_about_few_melanomas(tmp_path, capsys):
    run, is_mel, _ = _fake_run(tmp_path, n=60)
    assert 5 <= is_mel.sum() < 30
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--in-place"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {run / 'val_predictions.csv'}: only {int(is_mel.sum())} melanomas" in err


def test_threshold_warns_on_predictions_of_training_images(tmp_path, capsys):
    """The shipped model's validation images lie in its training folder: as --predictions they are flagged."""
    model = Path(__file__).resolve().parents[1] / "models" / "default"
    preds = model / "val_predictions.csv"
    assert cli.main(["threshold", str(model), "--target-sensitivity", "0.9", "--predictions", str(preds),
                     "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    assert "also occur in the model's training data" in err and "Traceback" not in err
    # the run's own validation predictions are held out by construction: no such warning
    assert cli.main(["threshold", str(model), "--target-sensitivity", "0.9", "--out", str(tmp_path / "u")]) == 0
    assert "training data" not in capsys.readouterr().err


def test_threshold_corrupt_model_json_and_out_of_range_target(tmp_path, capsys):
    run, _, _ = _fake_run(tmp_path)
    (run / "model.json").write_text("{not json")
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--in-place"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.json" in err and len(err.strip().splitlines()) == 1
    for bad in ("1.5", "0", "-0.1", "nan", "abc"):
        assert cli.main(["threshold", str(run), "--target-sensitivity", bad, "--in-place"]) == 2
        assert "--target-sensitivity: expected a number > 0.0 and <= 1.0" in capsys.readouterr().err


def test_per_source_threshold_keeps_the_target_on_every_source(tmp_path, capsys):
    """Source b's melanomas score lower (a harder clinic): the pooled threshold misses the target there, the
    per-source (worst source) one keeps it on both."""
    run = build_test_model(tmp_path / "run", image_size=64)
    meta = json.loads((run / "model.json").read_text())
    classes, mel = meta["class_names"], meta["class_names"].index("melanoma")
    meta["data"] = {"source": "/clinics/a", "extra_sources": ["/clinics/b"]}
    meta["model_card"] = {"expected_alert_share": None}
    meta["metrics"] = {"melanoma_sensitivity": None, "melanoma_specificity": None}
    (run / "model.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    lines = [",".join(["image", "path", *classes, "prediction", "label"])]
    for source, shift in (("a", 0.6), ("b", 0.15)):
        for i in range(200):
            label = "melanoma" if i < 60 else "nevus"
            probs = rng.dirichlet(np.ones(len(classes)))
            probs[mel] += shift if label == "melanoma" else 0.0
            probs /= probs.sum()
            lines.append(",".join([f"{source}{i}.jpg", f"/clinics/{source}/{label}/{source}{i}.jpg",
                                   *(f"{v:.6f}" for v in probs), label, label]))
    (run / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    pooled = rethreshold(run, 0.9, out=tmp_path / "pooled")
    assert pooled["by_source"]["b"]["sensitivity"] < 0.9 <= pooled["by_source"]["a"]["sensitivity"]
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--per-source",
                     "--out", str(tmp_path / "worst")]) == 0
    out = capsys.readouterr().out
    assert "  a: sensitivity" in out and "  b: sensitivity" in out
    worst = json.loads((tmp_path / "worst" / "model.json").read_text())
    stored = worst["thresholds"]
    assert worst["metrics"]["melanoma_sensitivity"] >= 0.9  # the headline follows the new alert
    assert stored["melanoma_alert"] < pooled["new"] and stored["melanoma_alert_policy"] == "worst source"
    assert all(v["sensitivity"] >= 0.9 for v in stored["melanoma_alert_by_source"].values())
    card = json.loads((tmp_path / "worst" / "model.json").read_text())["model_card"]
    pooled_card = json.loads((tmp_path / "pooled" / "model.json").read_text())["model_card"]
    assert card["expected_alert_share"]["screening (2% melanoma)"] > pooled_card["expected_alert_share"][
        "screening (2% melanoma)"]  # a lower threshold alerts more


def test_threshold_moves_the_probabilities_to_the_training_mix_and_back(tmp_path, capsys):
    """--prior-correction training-mix: model.json gets the class mix of the validation labels, the stored
    validation predictions become the corrected ones, the threshold is chosen on them; none restores them."""
    from melanoma import priors
    from melanoma.evaluate import read_predictions_csv

    run, _, _ = _fake_run(tmp_path, n=200)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "metrics": {"melanoma_auc": 0.5}}))  # as training writes
    before = read_predictions_csv(run / "val_predictions.csv")
    out = tmp_path / "mix"
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--prior-correction", "training-mix",
                     "--out", str(out)]) == 0
    assert "prior correction: probabilities moved to the training mix" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    section = meta["prior_correction"]
    assert sum(section["class_counts"].values()) == 200 and section["fitted_on"] == "validation labels"
    after = read_predictions_csv(out / "val_predictions.csv")
    weights = priors.weights_of(meta)
    np.testing.assert_allclose(after.probs, priors.reweight(before.probs, weights), atol=2e-6)
    mel = meta["class_names"].index("melanoma")
    is_mel = np.array([label == "melanoma" for label in after.labels])
    assert (after.probs[is_mel, mel] >= meta["thresholds"]["melanoma_alert"]).mean() >= 0.9
    from sklearn.metrics import roc_auc_score  # the headline figures are those of the new probabilities

    assert meta["metrics"]["melanoma_auc"] == pytest.approx(roc_auc_score(is_mel, after.probs[:, mel]))
    _assert_calibration_of(meta, after)
    assert "prior_correction" not in json.loads((run / "model.json").read_text())  # --out leaves RUN alone

    assert cli.main(["threshold", str(out), "--target-sensitivity", "0.9", "--prior-correction", "none",
                     "--in-place"]) == 0
    assert "prior correction removed" in capsys.readouterr().out
    assert "prior_correction" not in json.loads((out / "model.json").read_text())
    np.testing.assert_allclose(read_predictions_csv(out / "val_predictions.csv").probs, before.probs, atol=2e-5)


@pytest.mark.parametrize(("imbalance", "corrected"), [("sampler", True), ("weighted-loss", True), ("none", False),
                                                      ("source-balanced", False), (None, None)])
def test_prior_correction_auto_follows_how_the_network_was_balanced(tmp_path, capsys, imbalance, corrected):
    """auto: the training mix after balanced classes, nothing after the sources' own mix; an ensemble whose members
    trained differently (no shared imbalance mode in model.json) is refused with one line."""
    run, _, _ = _fake_run(tmp_path, n=60)
    meta = json.loads((run / "model.json").read_text())
    meta["training"] = {} if imbalance is None else {"imbalance": imbalance}
    (run / "model.json").write_text(json.dumps(meta))
    code = cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--prior-correction", "auto",
                     "--in-place"])
    if corrected is None:
        assert code == 2 and "records no imbalance mode" in capsys.readouterr().err
        return
    assert code == 0
    assert ("prior_correction" in json.loads((run / "model.json").read_text())) == corrected


def test_prior_correction_is_refused_where_it_cannot_be_fitted_or_would_stale_a_calibration(tmp_path, capsys):
    run, _, _ = _fake_run(tmp_path, n=60)
    meta = json.loads((run / "model.json").read_text())
    meta["training"] = {"holdout_source": "Train", "imbalance": "sampler"}
    (run / "model.json").write_text(json.dumps(meta))
    args = ["threshold", str(run), "--target-sensitivity", "0.9", "--prior-correction", "training-mix", "--in-place"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "validated on a held-out source (Train)" in err and len(err.strip().splitlines()) == 1
    meta["training"] = {"imbalance": "sampler"}
    meta["preprocessing"]["detail_size"] = 150
    meta["detail_calibration"] = {"levels": [{"shorter_side": 120, "alert_threshold": 0.2,
                                              "melanoma_logit_shift": 0.5}], "target_sensitivity": 0.9}
    (run / "model.json").write_text(json.dumps(meta))
    assert cli.main(args) == 2
    assert "needs it refitted: add --detail-levels 120" in capsys.readouterr().err
    assert "prior_correction" not in json.loads((run / "model.json").read_text())


def _assert_calibration_of(meta: dict, stored) -> None:
    """model.json's calibration describes the stored validation probabilities: their ECE, and a refit temperature
    that calibrates them at least as well (it minimises the NLL, so not always the ECE: allow a little)."""
    from melanoma.metrics import expected_calibration_error

    labels = np.array([meta["class_names"].index(label) for label in stored.labels])
    cal = meta["calibration"]
    assert cal["ece"] == pytest.approx(expected_calibration_error(stored.probs, labels), abs=1e-5)
    assert cal["refit_temperature"] > 0 and cal["ece_if_refit"] <= cal["ece"] + 0.05


def _model_with_own_validation(tiny_isic: Path, folder: Path) -> tuple[Path, list[str], np.ndarray]:
    """A random-weight model whose val_predictions.csv holds the tiny images with their labels, predicted by it."""
    from melanoma.predict import Predictor, write_predictions_csv

    run = build_test_model(folder, image_size=64)
    paths = sorted(str(p) for p in tiny_isic.glob("*/*.jpg"))
    labels = [Path(p).parent.name for p in paths]
    write_predictions_csv(Predictor.load(run).predict_paths(paths), run / "val_predictions.csv", labels=labels)
    return run, paths, np.array([label == "melanoma" for label in labels])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::melanoma.errors.ThresholdWarning")  # 5 melanomas: warned, on purpose
def test_tta_views_rechoose_the_alert_on_those_views_and_become_the_models_default(tiny_isic, tmp_path, capsys):
    from melanoma.evaluate import read_predictions_csv
    from melanoma.metrics import choose_alert_threshold
    from melanoma.predict import Predictor

    run, paths, is_mel = _model_with_own_validation(tiny_isic, tmp_path / "run")
    result = rethreshold(run, 0.8, out=tmp_path / "tta", tta_views=8)
    eight = Predictor.load(run).predict_paths(paths, tta=True, tta_views=8)
    assert result["tta_views"] == 8 and result["tta_views_changed"]
    assert result["new"] == pytest.approx(choose_alert_threshold(is_mel, eight.melanoma_probability, 0.8))
    tta = Predictor.load(tmp_path / "tta")
    assert tta.tta_views == 8 and tta.alert_threshold == result["new"]
    default = tta.predict_paths(paths)  # the stored views, without asking for them
    np.testing.assert_allclose(default.probs, eight.probs, atol=1e-7)
    stored = read_predictions_csv(tmp_path / "tta" / "val_predictions.csv", tta.class_names)
    np.testing.assert_allclose(stored.probs, eight.probs, atol=2e-6)
    assert stored.labels == [Path(p).parent.name for p in paths]
    meta = json.loads((tmp_path / "tta" / "model.json").read_text())
    assert meta["test_time_augmentation"] == {"views": 8, "fitted_on": "validation"}
    assert meta["model_card"]["test_time_augmentation"].startswith("8 views per image")
    _assert_calibration_of(meta, stored)
    assert meta["calibration"]["measured_on"] == "validation, probabilities as served (8 view(s))"
    assert "test_time_augmentation" not in json.loads((run / "model.json").read_text())  # --out leaves RUN alone

    assert cli.main(["threshold", str(tmp_path / "tta"), "--target-sensitivity", "0.8", "--tta-views", "1",
                     "--out", str(tmp_path / "one")]) == 0
    assert "test-time augmentation: 1 view(s) per image from now on" in capsys.readouterr().out
    assert "test_time_augmentation" not in json.loads((tmp_path / "one" / "model.json").read_text())
    np.testing.assert_allclose(Predictor.load(tmp_path / "one").predict_paths(paths).probs,
                               Predictor.load(run).predict_paths(paths).probs, atol=1e-7)


def test_tta_views_refuse_a_clinics_predictions_and_a_stale_detail_calibration(tmp_path, capsys):
    run, _, _ = _fake_run(tmp_path)
    before = (run / "model.json").read_bytes()
    base = ["threshold", str(run), "--target-sensitivity", "0.9", "--in-place", "--tta-views", "8"]
    assert cli.main([*base, "--predictions", str(run / "val_predictions.csv")]) == 2
    assert "cannot be combined with --predictions" in capsys.readouterr().err
    meta = json.loads(before)
    meta["detail_calibration"] = {"levels": [{"shorter_side": 120, "melanoma_logit_shift": 0.4}]}
    (run / "model.json").write_text(json.dumps(meta))
    assert cli.main(base) == 2
    err = capsys.readouterr().err
    assert "needs it refitted: add --detail-levels 120" in err and "Traceback" not in err
    assert cli.main([*base[:-1], "9"]) == 2
    assert "--tta-views" in capsys.readouterr().err
