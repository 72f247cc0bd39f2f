"""`melanoma referral`: the referral limits re-fitted at other quantiles on a real tiny run's validation images,
the weights left as they were, prediction following the new limits; bad input named in one line."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from melanoma import cli
from melanoma.artifacts import load_model
from melanoma.predict import Predictor
from melanoma.referral_refit import refit_referral

sys.path.insert(0, str(Path(__file__).parent))
from test_training import tiny_config  # noqa: E402  (the shared shrunk training config)


@pytest.fixture(scope="module")
def tiny_run(tiny_isic, tmp_path_factory) -> Path:
    from melanoma.training import train

    # a larger validation share than the default, so that the quantiles have images to fall between
    return Path(train(tiny_config(tiny_isic, tmp_path_factory.mktemp("refit") / "run", val_fraction=0.4))["run"])


def _refer_column(run: Path) -> dict[str, bool]:
    with (run / "val_predictions.csv").open(newline="") as fh:
        return {row["path"]: row["refer"] == "true" for row in csv.DictReader(fh)}


def _network(run: Path) -> dict:
    return {k: v for k, v in load_file(run / "model.safetensors").items() if not k.startswith("extra.referral.")}


@pytest.mark.slow
def test_refit_writes_new_limits_into_a_copy_and_prediction_follows_them(tiny_run, tmp_path):
    before = (tiny_run / "model.json").read_bytes()
    same = refit_referral(tiny_run, out=tmp_path / "same")  # the quantiles it was trained with
    strict = refit_referral(tiny_run, 0.3, 0.6, out=tmp_path / "strict")
    assert (tiny_run / "model.json").read_bytes() == before  # --out leaves the run alone

    old = json.loads(before)["referral"]
    assert same["new"]["refer_confidence"] == pytest.approx(old["thresholds"]["refer_confidence"])
    assert same["new"]["ood_score"] == pytest.approx(old["thresholds"]["ood_score"], rel=1e-4)
    assert strict["new"]["refer_confidence"] >= same["new"]["refer_confidence"]
    assert strict["new"]["ood_score"] <= same["new"]["ood_score"]
    assert strict["validation"]["share_referred"] > same["validation"]["share_referred"]

    out = tmp_path / "strict"
    meta = json.loads((out / "model.json").read_text())
    assert meta["referral"]["confidence_quantile"] == 0.3 and meta["referral"]["ood_quantile"] == 0.6
    assert meta["thresholds"]["ood_score"] == meta["referral"]["thresholds"]["ood_score"]
    original, refitted = _network(tiny_run), _network(out)
    assert original.keys() == refitted.keys()
    assert all(np.array_equal(original[k].numpy(), refitted[k].numpy()) for k in original)  # the weights as they were
    load_model(out)  # the weights' SHA-256 in model.json was renewed

    # prediction refers exactly the validation images the rewritten CSV says it refers
    column = _refer_column(out)
    result = Predictor.load(out).predict_paths(list(column))
    assert dict(zip(result.paths, result.refer.tolist())) == column
    assert sum(column.values()) > sum(_refer_column(tiny_run).values())


@pytest.mark.slow
def test_referral_cli_in_place_and_one_line_errors(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    staging = tmp_path / ".run.referral-staging"  # what a re-fit killed before its swap would have left
    staging.mkdir()
    (staging / "model.json").write_text("{half written")
    (run / "model.json").chmod(0o644)
    assert cli.main(["referral", str(run), "--in-place", "--ood-quantile", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "not like the training images 0.995 -> 0.9" in out and "validation images referred" in out
    assert json.loads((run / "model.json").read_text())["referral"]["ood_quantile"] == 0.9
    assert not staging.exists() and (run / "model.json").stat().st_mode & 0o777 == 0o644
    assert Predictor.load(run).referrer is not None  # weights and model.json's SHA-256 agree

    first = next(iter(_refer_column(run)))
    moved = str(tmp_path / "moved" / Path(first).name)
    csv_path = run / "val_predictions.csv"
    csv_path.write_text(csv_path.read_text().replace(first, moved))
    assert cli.main(["referral", str(run), "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert moved in err and "validation image missing" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written before the images were found


def test_referral_cli_refuses_quantiles_out_of_range_and_a_model_without_predictions(tmp_path, capsys):
    from melanoma.artifacts import build_test_model

    run = build_test_model(tmp_path / "run", image_size=64)
    assert cli.main(["referral", str(run), "--out", str(tmp_path / "a"), "--ood-quantile", "0.4"]) == 2
    assert "--ood-quantile" in capsys.readouterr().err
    assert cli.main(["referral", str(run)]) == 2  # neither --out nor --in-place
    assert "--out" in capsys.readouterr().err
    assert cli.main(["referral", str(run), "--out", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "val_predictions.csv" in err or "no referral" in err


@pytest.mark.slow
def test_a_killed_refit_resumes_with_the_chunks_it_had_embedded(tiny_run, tmp_path, monkeypatch, capsys):
    from melanoma import finalize, partial

    reference = refit_referral(tiny_run, out=tmp_path / "whole")
    monkeypatch.setattr(partial, "CHUNK", 4)
    original, calls = finalize.infer, []

    def killed_at_the_second_chunk(model, images, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(finalize, "infer", killed_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        refit_referral(tiny_run, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the embedding is complete
    monkeypatch.setattr(finalize, "infer", original)
    resumed = refit_referral(tiny_run, out=tmp_path / "out")
    assert "resuming referral: 4 of" in capsys.readouterr().err
    for key in ("refer_confidence", "ood_score"):  # chunked batches: float rounding only
        assert resumed["new"][key] == pytest.approx(reference["new"][key], rel=1e-5)
    assert resumed["new"]["layers"] == reference["new"]["layers"]
