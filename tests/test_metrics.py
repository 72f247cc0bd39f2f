"""Metrics against scikit-learn / torchmetrics / independent computations on random data (ties included)."""

import json
import math
import time

import numpy as np
import pytest
from sklearn import metrics as skm

from melanoma import metrics as m
from melanoma.errors import DataError

CLASSES = ["actinic keratosis", "basal cell carcinoma", "melanoma", "nevus", "vascular lesion"]


def _random_probs(n, c, seed=0, signal=1.5, decimals=None):
    """Labels and softmax probabilities with some signal; `decimals` rounds them to create ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), y] += signal
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if decimals is not None:
        p = np.round(p, decimals)
    return y, p


def _mcclish_undone_pauc(y, scores, min_tpr=0.8):
    """Independent pAUC: the ISIC scoring's flipped roc_auc_score(max_fpr) with the McClish transform undone."""
    max_fpr = 1 - min_tpr
    standardised = skm.roc_auc_score(1 - np.asarray(y), -np.asarray(scores), max_fpr=max_fpr)
    min_area, max_area = 0.5 * max_fpr ** 2, max_fpr
    return min_area + (standardised - 0.5) * 2 * (max_area - min_area)


def _numeric_pauc(y, scores, min_tpr=0.8, steps=200_001):
    """Brute-force pAUC: integrate max(TPR(FPR) - min_tpr, 0) over a dense FPR grid (trapezoid rule)."""
    fpr, tpr, _ = skm.roc_curve(y, scores)
    grid = np.linspace(0, 1, steps)
    # np.interp on a curve with vertical steps: take the upper envelope at repeated x
    height = np.maximum(np.interp(grid, fpr, tpr) - min_tpr, 0)
    return np.trapezoid(height, grid)


# ------------------------------------------------------------------------------------------- temperature


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(8000, 5))
    true_t = 2.0
    p = np.exp(logits / true_t)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = m.fit_temperature(logits, labels)
    assert isinstance(t, float)
    assert abs(t - true_t) / true_t < 0.1


def test_fit_temperature_is_a_minimum_of_the_nll():
    y, p = _random_probs(500, 4, seed=2, signal=3.0)
    logits = np.log(p) * 3.0  # over-confident logits
    t = m.fit_temperature(logits, y)

    def nll(temp):
        return skm.log_loss(y, np.exp(logits / temp) / np.exp(logits / temp).sum(1, keepdims=True), labels=range(4))

    assert nll(t) <= nll(t * 0.95) and nll(t) <= nll(t * 1.05)
    assert nll(t) <= nll(1.0)


# ------------------------------------------------------------------------------------------------------ ECE


def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_calibration_error

    y, p = _random_probs(1000, 5, seed=3)
    expected = multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=5, n_bins=15, norm="l1")
    assert m.expected_calibration_error(p, y, n_bins=15) == pytest.approx(float(expected), abs=1e-6)


def test_ece_hand_example_and_reliability_bins():
    # two bins used: confidences 0.95 (2 images, 1 correct) and 0.55 (2 images, both correct)
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    y = np.array([0, 1, 0, 1])
    # |0.5 - 0.95| * 2/4 + |1.0 - 0.55| * 2/4
    assert m.expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.45)
    rel = m.reliability_curve(p, y, n_bins=10)
    assert rel["count"][9] == 2 and rel["count"][5] == 2 and sum(rel["count"]) == 4
    assert rel["accuracy"][9] == pytest.approx(0.5) and rel["confidence"][0] is None


# ------------------------------------------------------------------------------------------- alert threshold


def _brute_force_threshold(y, p, target):
    """Highest candidate threshold (any observed score) whose sensitivity is >= target."""
    best = None
    for t in np.unique(p):
        if (p[y] >= t).mean() >= target - 1e-12:
            best = t
    return best


@pytest.mark.parametrize("seed", range(5))
def test_choose_alert_threshold_is_the_highest_threshold_meeting_the_target(seed):
    y, p = _random_probs(300, 3, seed=seed, decimals=2)  # rounding -> ties
    is_mel, p_mel = y == 1, p[:, 1]
    for target in (0.8, 0.9, 0.95, 1.0):
        t = m.choose_alert_threshold(is_mel, p_mel, target)
        best = _brute_force_threshold(is_mel, p_mel, target)
        assert (p_mel[is_mel] >= t).mean() >= target
        # flags exactly the images the highest qualifying threshold flags ...
        assert np.array_equal(p_mel >= t, p_mel >= best)
        # ... with a margin: halfway to the next lower score, so a recomputed melanoma score keeps its alert
        lower = p_mel[p_mel < best]
        assert t == (pytest.approx((best + lower.max()) / 2) if len(lower) else best)


def test_alert_survives_a_recomputed_probability_a_few_ulps_lower():
    y = np.array([1, 1, 0, 0], bool)
    p = np.array([0.7, 0.3, 0.2, 0.1])
    t = m.choose_alert_threshold(y, p, 1.0)
    assert np.nextafter(0.3, 0.0) >= t and t > 0.2


def test_choose_alert_threshold_float_trap_and_no_melanoma():
    # 0.9 * 10 = 9.000000000000002: we need 9 of 10 melanomas, not all 10
    y = np.array([1] * 10 + [0] * 5, bool)
    p = np.r_[np.linspace(0.1, 1.0, 10), np.zeros(5)]
    assert m.choose_alert_threshold(y, p, 0.9) == pytest.approx(0.15)  # halfway between 0.2 and 0.1
    with pytest.raises(DataError):
        m.choose_alert_threshold(np.zeros(5, bool), np.ones(5), 0.9)


# -------------------------------------------------------------------------------------------------- pAUC


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 1), (2, 2), (3, None)])
def test_pauc_matches_isic_flipped_sklearn_and_numeric_integration(seed, decimals):
    y, p = _random_probs(400, 2, seed=seed, signal=1.0 + seed * 0.5, decimals=decimals)
    value = m.partial_auc_above_sensitivity(y == 1, p[:, 1])
    assert 0.0 <= value <= 0.2
    assert value == pytest.approx(_mcclish_undone_pauc(y == 1, p[:, 1]), abs=1e-12)
    assert value == pytest.approx(_numeric_pauc(y == 1, p[:, 1]), abs=2e-5)


def test_pauc_extremes():
    y = np.array([0, 0, 0, 1, 1, 1])
    assert m.partial_auc_above_sensitivity(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == pytest.approx(0.2)
    assert m.partial_auc_above_sensitivity(y, [0.7, 0.8, 0.9, 0.1, 0.2, 0.3]) == pytest.approx(0.0)
    assert m.partial_auc_above_sensitivity([1, 1], [0.1, 0.2]) is None


def test_specificity_at_sensitivity_against_roc_curve():
    y, p = _random_probs(500, 2, seed=4, decimals=2)
    fpr, tpr, _ = skm.roc_curve(y, p[:, 1], drop_intermediate=False)
    for s in (0.9, 0.95):
        assert m.specificity_at_sensitivity(y, p[:, 1], s) == pytest.approx(1 - fpr[np.argmax(tpr >= s)])


# -------------------------------------------------------------------------- vectorised bootstrap statistics


@pytest.mark.parametrize("decimals", [None, 2])
def test_vectorised_curve_statistics_equal_sklearn_on_explicit_resamples(decimals):
    y, p = _random_probs(300, 3, seed=5, decimals=decimals)
    pos, score = y == 2, p[:, 2]
    ranked = m._RankedScores(pos, score)
    w = np.vstack([np.ones(len(y)), m._resample_counts(np.random.default_rng(0), 4, len(y))])
    gp, gn = ranked.group_counts(w)
    fpr, tpr = m._roc_rows(gp, gn)
    auc, ap, pauc = m._auc_rows(gp, gn), m._ap_rows(gp, gn), m._area_above(fpr, tpr, 0.8)
    for row in range(len(w)):
        idx = np.repeat(np.arange(len(y)), w[row].astype(int))
        assert auc[row] == pytest.approx(skm.roc_auc_score(pos[idx], score[idx]), abs=1e-12)
        assert ap[row] == pytest.approx(skm.average_precision_score(pos[idx], score[idx]), abs=1e-12)
        assert pauc[row] == pytest.approx(m.partial_auc_above_sensitivity(pos[idx], score[idx]), abs=1e-12)


# ----------------------------------------------------------------------------------------- compute_metrics


def test_compute_metrics_matches_sklearn_with_ties():
    y, p = _random_probs(600, 5, seed=6, decimals=1)
    r = m.compute_metrics(y, p, CLASSES, alert_threshold=0.3, bootstrap=50)
    pred = p.argmax(axis=1)
    assert r["accuracy"]["value"] == pytest.approx(skm.accuracy_score(y, pred))
    assert r["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert r["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for k, name in enumerate(CLASSES):
        row = r["per_class"][name]
        assert row["precision"] == pytest.approx(prec[k]) and row["f1"] == pytest.approx(f1[k])
        assert row["recall"]["value"] == pytest.approx(rec[k]) and row["support"] == sup[k]
        assert row["auc"]["value"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        assert row["average_precision"] == pytest.approx(skm.average_precision_score(y == k, p[:, k]))
        tn = ((y != k) & (pred != k)).sum()
        assert row["specificity"] == pytest.approx(tn / (y != k).sum())
    mel = r["melanoma"]
    assert mel["auc"]["value"] == pytest.approx(skm.roc_auc_score(y == 2, p[:, 2]))
    assert mel["pauc_above_80_sensitivity"]["value"] == pytest.approx(_mcclish_undone_pauc(y == 2, p[:, 2]))
    assert mel["average_precision"]["value"] == pytest.approx(skm.average_precision_score(y == 2, p[:, 2]))
    assert mel["sensitivity"]["value"] == pytest.approx(skm.recall_score(y == 2, p[:, 2] >= 0.3))
    assert mel["specificity"]["value"] == pytest.approx(skm.recall_score(y != 2, p[:, 2] < 0.3))
    assert r["calibration"]["nll"] == pytest.approx(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1)).mean())
    y2, p2 = _random_probs(300, 5, seed=6)
    nll = m.compute_metrics(y2, p2, CLASSES, bootstrap=0)["calibration"]["nll"]
    assert nll == pytest.approx(skm.log_loss(y2, p2, labels=range(5)))


def test_alert_share_per_true_class_adds_up_to_sensitivity_and_specificity():
    y, p = _random_probs(500, 5, seed=9)
    y[y == 4] = 0  # "vascular lesion" absent: no row, not a 0/0
    mel = m.compute_metrics(y, p, CLASSES, alert_threshold=0.25, bootstrap=0)["melanoma"]
    rows, flagged = mel["alerted_by_class"], p[:, 2] >= 0.25
    assert list(rows) == CLASSES[:4]
    for k, name in enumerate(CLASSES[:4]):
        assert rows[name]["n"] == (y == k).sum() and rows[name]["alerted"] == flagged[y == k].sum()
    assert rows["melanoma"]["share"] == pytest.approx(mel["sensitivity"]["value"], abs=1e-4)
    false_alerts = sum(r["alerted"] for name, r in rows.items() if name != "melanoma")
    assert 1 - false_alerts / (y != 2).sum() == pytest.approx(mel["specificity"]["value"])
    sens, spec = mel["sensitivity"]["value"], mel["specificity"]["value"]
    assert mel["expected_alert_share"]["referral clinic (10% melanoma)"] == pytest.approx(
        0.1 * sens + 0.9 * (1 - spec), abs=1e-3)
    assert m.compute_metrics(y, p, CLASSES, bootstrap=0)["melanoma"].get("alerted_by_class") is None  # no alert


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")  # sklearn's reference, not ours
def test_class_without_positives_gives_null_auc_not_a_crash():
    y, p = _random_probs(200, 5, seed=7)
    y[y == 4] = 0  # "vascular lesion" never occurs
    r = m.compute_metrics(y, p, CLASSES, alert_threshold=0.5, bootstrap=20)
    row = r["per_class"]["vascular lesion"]
    assert row["auc"] is None and row["average_precision"] is None and row["recall"] is None
    assert row["support"] == 0
    assert r["balanced_accuracy"]["value"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    json.dumps(r)  # JSON-able, no NaN objects


def test_no_melanoma_class_and_single_class_data():
    y, p = _random_probs(50, 5, seed=8)
    assert m.compute_metrics(y, p, CLASSES, melanoma_class="MEL", bootstrap=10)["melanoma"] is None
    r = m.compute_metrics(np.full(50, 2), p, CLASSES, alert_threshold=0.5, bootstrap=10)
    assert r["melanoma"]["auc"] is None and r["melanoma"]["specificity"] is None
    assert r["melanoma"]["sensitivity"]["value"] == pytest.approx((p[:, 2] >= 0.5).mean())


def test_bootstrap_ci_covers_estimate_and_is_reproducible():
    y, p = _random_probs(800, 5, seed=9)
    a = m.compute_metrics(y, p, CLASSES, alert_threshold=0.3, bootstrap=300, seed=11)
    b = m.compute_metrics(y, p, CLASSES, alert_threshold=0.3, bootstrap=300, seed=11)
    c = m.compute_metrics(y, p, CLASSES, alert_threshold=0.3, bootstrap=300, seed=12)
    assert a == b
    assert a["accuracy"]["ci"] != c["accuracy"]["ci"]
    headline = [a["accuracy"], a["balanced_accuracy"], a["melanoma"]["auc"], a["melanoma"]["sensitivity"],
                a["melanoma"]["specificity"], a["melanoma"]["pauc_above_80_sensitivity"],
                a["melanoma"]["average_precision"]]
    headline += [row[k] for row in a["per_class"].values() for k in ("auc", "recall")]
    for entry in headline:
        lo, hi = entry["ci"]
        assert lo <= entry["value"] <= hi and hi - lo < 0.5


def test_cluster_bootstrap_counts_lesions_not_photos():
    """Five photos of each of 300 lesions carry the evidence of 300 lesions, not of 1,500 images: grouped, the
    CIs are exactly those of the 300 originals (same draws), and narrower when every photo is counted alone."""
    y, p = _random_probs(300, 5, seed=14)
    lesions = m.compute_metrics(y, p, CLASSES, alert_threshold=0.3, bootstrap=200, seed=3)
    # zero-padded ids sort like the originals, so unit k is lesion k and the draws coincide
    y5, p5, groups = np.repeat(y, 5), np.repeat(p, 5, axis=0), np.repeat([f"L{i:04d}" for i in range(300)], 5)
    grouped = m.compute_metrics(y5, p5, CLASSES, alert_threshold=0.3, bootstrap=200, seed=3, groups=groups)
    photos = m.compute_metrics(y5, p5, CLASSES, alert_threshold=0.3, bootstrap=200, seed=3)
    for key in ("auc", "sensitivity", "average_precision"):
        assert grouped["melanoma"][key]["ci"] == pytest.approx(lesions["melanoma"][key]["ci"])
    assert grouped["balanced_accuracy"]["ci"] == pytest.approx(lesions["balanced_accuracy"]["ci"])
    width = lambda r: np.diff(r["melanoma"]["auc"]["ci"])[0]  # noqa: E731
    assert width(photos) < 0.6 * width(grouped)
    assert grouped["bootstrap"]["unit"] == "group" and grouped["bootstrap"]["n_units"] == 300
    assert photos["bootstrap"]["unit"] == "image" and photos["bootstrap"]["n_units"] == 1500
    unique = m.compute_metrics(y, p, CLASSES, bootstrap=50, seed=3, groups=[f"g{i}" for i in range(300)])
    assert unique == m.compute_metrics(y, p, CLASSES, bootstrap=50, seed=3)  # one image per group: no change
    with pytest.raises(ValueError, match="groups has 2 entries for 300 images"):
        m.compute_metrics(y, p, CLASSES, bootstrap=10, groups=["a", "b"])


def test_bootstrap_counts_skipped_resamples():
    y, p = _random_probs(60, 5, seed=10)
    y[:] = np.where(y == 4, 0, y)
    y[0] = 4  # one vascular lesion: most resamples lack it
    r = m.compute_metrics(y, p, CLASSES, bootstrap=200, seed=0)
    skipped = r["bootstrap"]["skipped"]
    assert 0 < skipped["auc/vascular lesion"] < 200 and skipped["recall/vascular lesion"] > 0
    assert skipped["balanced_accuracy"] >= skipped["recall/vascular lesion"]
    assert "accuracy" not in skipped


def test_bootstrap_is_fast_enough():
    y, p = _random_probs(2000, 9, seed=12)
    names = [f"class {k}" for k in range(8)] + ["melanoma"]
    start = time.perf_counter()
    m.compute_metrics(y, p, names, alert_threshold=0.2, bootstrap=1000)
    assert time.perf_counter() - start < 20  # ~2 s on one free core; generous for shared CI machines


def test_bootstrap_zero_gives_no_ci():
    y, p = _random_probs(50, 5, seed=13)
    r = m.compute_metrics(y, p, CLASSES, bootstrap=0)
    assert r["accuracy"]["ci"] is None and not math.isnan(r["accuracy"]["value"])
