"""The site check (melanoma.site_check): operating points from the model card, the expected range of alerted shares,
the prevalence an observed share needs, and the report's status and findings. The service's monitor on top:
tests/test_serve_api.py and tests/test_serve_db.py; `melanoma predict`'s note: tests/test_predict.py."""

from __future__ import annotations

import json

import pytest

from melanoma import site_check
from melanoma.serve.testing import REPO_MODEL

CARD = json.loads((REPO_MODEL / "model.json").read_text())


def site_report(n: int, alerted: int, referred: int = 0, warned: int = 0, meta: dict = CARD) -> dict:
    reasons = {"not like the training images": referred} if referred else {}
    return site_check.site_report(n, alerted, referred, warned, reasons, meta)


def test_operating_points_come_from_the_card_per_source_else_its_metrics():
    points = site_check.operating_points(CARD)
    by_source = CARD["thresholds"]["melanoma_alert_by_source"]
    assert set(points) == set(by_source)
    for name, (sens, spec) in points.items():
        assert (sens, spec) == (by_source[name]["sensitivity"], by_source[name]["specificity"])
    single = {"metrics": {"melanoma_sensitivity": 0.9, "melanoma_specificity": 0.6}}
    assert site_check.operating_points(single) == {"validation": (0.9, 0.6)}
    assert site_check.operating_points({}) == {}


def test_expected_range_and_implied_prevalence_follow_the_operating_point():
    points = {"a": (0.9, 0.7), "b": (0.8, 0.6)}
    low, high = site_check.expected_range(points, 0.3)
    assert low == pytest.approx(0.3)                          # source a, no melanomas: its false alerts alone
    assert high == pytest.approx(0.8 * 0.3 + 0.4 * 0.7)       # source b at 30% melanoma
    assert site_check.implied_prevalence(0.3 + 0.6 * 0.1, 0.9, 0.7) == pytest.approx(0.1)
    assert site_check.implied_prevalence(0.7, 0.9, 0.7) == pytest.approx(4 / 6)
    assert site_check.implied_prevalence(0.5, 0.3, 0.6) is None  # no better than chance: no prevalence explains it


def test_an_alert_on_most_lesions_is_flagged_with_the_prevalence_it_would_need():
    report = site_report(300, alerted=210)  # 70%: the independent sets saw 40-76%
    assert report["status"] == "check" and report["images"] == 300
    alerted = report["alerted"]
    assert alerted["share"] == pytest.approx(0.7) and alerted["interval"][0] < 0.7 < alerted["interval"][1]
    assert alerted["expected"][1] < alerted["interval"][0]
    assert all(0.5 < p < 0.8 for p in alerted["implied_prevalence"].values())
    assert "70%" in report["findings"][0] and "the last 300 images" in report["findings"][0]
    assert "site calibration" in report["findings"][0]


def test_a_share_the_validation_images_predict_is_ok_and_too_few_images_say_nothing():
    assert site_report(300, alerted=120)["status"] == "ok"  # 40%: as on its validation images
    rare = site_report(300, alerted=15)                      # 5%: fewer than its false alerts
    assert rare["status"] == "check" and "may miss melanomas" in rare["findings"][0]
    few = site_report(20, alerted=20)
    assert few["status"] == "too few" and few["findings"] == [] and "alerted" not in few


def test_many_referrals_are_flagged_and_a_card_without_operating_point_is_unknown():
    report = site_report(200, alerted=80, referred=50, warned=30)
    assert report["status"] == "check" and "referred" in report["findings"][0]
    assert report["referred"]["by_reason"] == {"not like the training images": 50}
    assert report["warned"]["share"] == pytest.approx(0.15)
    assert site_report(200, alerted=80, meta={})["status"] == "unknown"


def site_csv(classes: list[str], p_melanoma: list[float]) -> str:
    """A prediction CSV in the shared layout: melanoma at the given probability, the rest shared evenly."""
    rest = [(1 - p) / (len(classes) - 1) for p in p_melanoma]
    return ",".join(["image", "path", *classes, "prediction"]) + "\n" + "".join(
        ",".join([f"i{i}.jpg", "", *(f"{p if c == 'melanoma' else r:.6f}" for c in classes), "nevus"]) + "\n"
        for i, (p, r) in enumerate(zip(p_melanoma, rest)))


def test_site_threshold_writes_a_copy_that_alerts_the_predicted_share(tmp_path, capsys):
    """`melanoma site-threshold`: from 200 site images' melanoma probabilities (no diagnoses) and a stated 10%
    prevalence, a copy of the model whose threshold alerts 0.9 * 0.1 + 0.3 * 0.9 = 36% of them; the card keeps the
    validation operating point and records the adaptation; the original model is untouched; too few images and a
    card without operating point are one-line errors."""
    from melanoma import cli
    from melanoma.artifacts import build_test_model
    from melanoma.predict import Predictor

    model = build_test_model(tmp_path / "model", image_size=64)
    meta = json.loads((model / "model.json").read_text())
    plain = (model / "model.json").read_text()
    site_model = tmp_path / "site-model"
    site_model.mkdir()
    for f in model.iterdir():
        (site_model / f.name).write_bytes(f.read_bytes())
    (site_model / "model.json").write_text(json.dumps(
        {**meta, "metrics": {"melanoma_sensitivity": 0.9, "melanoma_specificity": 0.7}}))
    before = (site_model / "model.json").read_text()
    site = tmp_path / "site.csv"  # the shared layout `melanoma predict --out` writes; melanoma probability i / 200
    site.write_text(site_csv(meta["class_names"], [i / 200 for i in range(200)]))
    out = tmp_path / "adapted"
    assert cli.main(["site-threshold", str(site_model), "--predictions", str(site), "--prevalence", "0.1",
                     "--out", str(out)]) == 0
    assert "alerts 36.0% of the 200 site images (before 50.0%)" in capsys.readouterr().out
    adapted = json.loads((out / "model.json").read_text())
    assert adapted["thresholds"]["melanoma_alert"] == pytest.approx(0.64 * 199 / 200)
    assert adapted["thresholds"]["site_adaptation"]["target_share"] == pytest.approx(0.36)
    assert adapted["metrics"] == {"melanoma_sensitivity": 0.9, "melanoma_specificity": 0.7}
    assert Predictor.load(out).meta["thresholds"]["melanoma_alert"] == pytest.approx(0.64 * 199 / 200)
    assert cli.main(["site-threshold", str(out), "--predictions", str(site), "--prevalence", "0.2",
                     "--in-place"]) == 0  # adapted again: the validation threshold is still the model's own
    again = json.loads((out / "model.json").read_text())["thresholds"]["site_adaptation"]
    assert again["validation_threshold"] == meta["thresholds"]["melanoma_alert"] and again["prevalence"] == 0.2
    capsys.readouterr()
    assert (site_model / "model.json").read_text() == before
    few = tmp_path / "few.csv"
    few.write_text(site_csv(meta["class_names"], [0.5] * 20))
    assert cli.main(["site-threshold", str(site_model), "--predictions", str(few), "--prevalence", "0.1",
                     "--in-place"]) == 2
    assert "20 images" in capsys.readouterr().err
    assert cli.main(["site-threshold", str(model), "--predictions", str(site), "--prevalence", "0.1",
                     "--in-place"]) == 2
    assert "operating point" in capsys.readouterr().err and (model / "model.json").read_text() == plain
