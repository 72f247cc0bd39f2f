"""rethreshold: a new operating point from the stored validation predictions, without retraining."""

import json

import numpy as np
import pytest

from melanoma import cli
from melanoma.artifacts import build_test_model
from melanoma.errors import ModelError
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


def test_rethreshold_meets_each_target_and_updates_model_json(tmp_path):
    run, is_mel, p_mel = _fake_run(tmp_path)
    low = rethreshold(run, 0.80)
    high = rethreshold(run, 1.0)
    assert high["new"] <= low["new"]
    assert high["sensitivity"] == 1.0 and low["sensitivity"] >= 0.80
    assert (np.round(p_mel, 6)[is_mel] >= high["new"]).all()
    meta = json.loads((run / "model.json").read_text())
    assert meta["thresholds"]["melanoma_alert"] == high["new"] and meta["thresholds"]["target_sensitivity"] == 1.0


def test_rethreshold_needs_stored_predictions(tmp_path, capsys):
    run = build_test_model(tmp_path / "run", image_size=64)
    with pytest.raises(ModelError, match="val_predictions.csv: missing"):
        rethreshold(run, 0.9)
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9"]) == 2
    assert "val_predictions.csv: missing" in capsys.readouterr().err


def test_rethreshold_from_a_clinics_own_labelled_predictions(tmp_path, capsys):
    """`melanoma evaluate` output on local images (dataset label names, e.g. "MEL"/"nv") sets the threshold."""
    run, _, _ = _fake_run(tmp_path / "a")
    other, is_mel, p_mel = _fake_run(tmp_path / "b", n=80, seed=5)
    local = tmp_path / "clinic-predictions.csv"
    rows = (other / "val_predictions.csv").read_text().splitlines()
    local.write_text("\n".join([rows[0]] + [r.replace(",melanoma", ",MEL") if r.endswith(",melanoma") else r
                                            for r in rows[1:]]) + "\n")
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--predictions", str(local)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_melanoma"] == int(is_mel.sum()) and result["sensitivity"] >= 0.9
    assert (np.round(p_mel, 6)[is_mel] >= result["new"]).mean() >= 0.9
    meta = json.loads((run / "model.json").read_text())
    assert meta["thresholds"]["melanoma_alert_source"] == str(local.resolve())
    few = tmp_path / "few.csv"
    few.write_text("\n".join(rows[:4]) + "\n")
    assert cli.main(["threshold", str(run), "--target-sensitivity", "0.9", "--predictions", str(few)]) == 2
    assert "at least 5 of each" in capsys.readouterr().err
