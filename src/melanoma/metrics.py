"""ISIC classification metrics with bootstrap 95% CIs, calibration (ECE, temperature) and the melanoma alert threshold.

Pure numpy / scipy / scikit-learn (no torch import), so training, `evaluate` and `report` can all call it cheaply.

Conventions
- `y_true`: int array [N] of class indices into `class_names`; `probs`: float array [N, C] (rows sum to 1,
  temperature already applied). The predicted class is the arg-max of a row.
- Point estimates come from scikit-learn. Confidence intervals come from a vectorised bootstrap (`_Bootstrap`):
  each resample is a row of integer counts over the N images, so a metric on a resample equals the same metric
  computed by scikit-learn on the resampled arrays (tests check this, ties included).
- With `groups` (lesion or patient ids) whole groups are resampled (cluster bootstrap): the CI then reflects the
  number of lesions, not of photos.
- A metric that needs a class a resample lacks (AUC without positives, say) is skipped for that resample and the
  skip is counted in `bootstrap.skipped`; CIs are percentiles of the resamples that remain.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn import metrics as skm

from melanoma.errors import DataError

CI_LEVEL = 0.95
PAUC_MIN_SENSITIVITY = 0.80  # ISIC 2018/2019 "AUC above 80% sensitivity"
SENSITIVITY_TARGETS = (0.90, 0.95)  # specificity is reported at these melanoma sensitivities
_BOOT_CHUNK = 100  # resamples per vectorised block: memory is about _BOOT_CHUNK * N * 8 bytes per array
_EPS = 1e-9  # slack for float round-off when comparing rates against targets


# --------------------------------------------------------------------------------------------------- calibration


def fit_temperature(logits, labels, bounds=(0.05, 20.0)) -> float:
    """Temperature T > 0 that minimises the mean NLL of softmax(logits / T) (Guo et al. 2017).

    One-dimensional bounded search over log T (scipy `minimize_scalar`); the NLL is convex in 1/T, so the
    minimum is unique. Returns a Python float; T > 1 softens over-confident models.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature needs logits [N, C] and N labels, got {logits.shape} and {labels.shape}")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[rows, labels].mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(math.exp(res.x))


def _top_label(probs, labels):
    """Confidence (max probability) and 0/1 correctness of the arg-max prediction of each row."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def reliability_curve(probs, labels, n_bins: int = 15) -> dict:
    """Top-label reliability-diagram data over `n_bins` equal-width confidence bins of [0, 1].

    Returns JSON-able lists: `edges` (n_bins + 1), and per bin `confidence` (mean max-probability),
    `accuracy` (fraction correct) and `count`; empty bins have None for confidence and accuracy.
    """
    conf, correct = _top_label(probs, labels)
    # bin i holds [i/n, (i+1)/n); a confidence of exactly 1.0 goes into the last bin
    idx = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, acc = conf_sum / count, acc_sum / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": [None if c == 0 else float(v) for c, v in zip(count, mean_conf)],
        "accuracy": [None if c == 0 else float(v) for c, v in zip(count, acc)],
        "count": count.tolist(),
    }


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) * |accuracy - mean confidence|.

    Same definition as torchmetrics `MulticlassCalibrationError(norm="l1")`; in [0, 1], 0 = perfectly calibrated.
    """
    rel = reliability_curve(probs, labels, n_bins)
    n = sum(rel["count"])
    if n == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    return float(sum(c / n * abs(a - p) for c, a, p in zip(rel["count"], rel["accuracy"], rel["confidence"]) if c))


# ------------------------------------------------------------------------------------------------ melanoma alert


def choose_alert_threshold(y_is_melanoma, p_melanoma, target_sensitivity: float = 0.90) -> float:
    """Highest threshold t such that flagging `p_melanoma >= t` keeps melanoma sensitivity >= target.

    The k-th largest melanoma score s_k (k = ceil(target * positives)) is the highest such t: any higher t flags
    fewer than k melanomas. Every t in (s_below, s_k], s_below = the largest score of ANY image below s_k, flags
    the same images; the midpoint of that interval is returned so that a melanoma whose probability is recomputed
    a few ulps lower (another backend, CSV rounding) keeps its alert.
    """
    y = np.asarray(y_is_melanoma).astype(bool)
    p = np.asarray(p_melanoma, dtype=np.float64)
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    pos_scores = np.sort(p[y])[::-1]
    if len(pos_scores) == 0:
        raise DataError("cannot choose a melanoma alert threshold: the data holds no melanoma image")
    # trap: 0.9 * 10 == 9.000000000000002 in floats, whose ceil is 10; subtract a tiny slack first
    k = max(1, math.ceil(target_sensitivity * len(pos_scores) - _EPS))
    s_k = float(pos_scores[k - 1])
    below = p[p < s_k]
    return s_k if len(below) == 0 else float((s_k + below.max()) / 2.0)


# ------------------------------------------------------------------------------------------ binary curve helpers


def _area_above(fpr, tpr, min_tpr: float):
    """Area under the piecewise-linear ROC curve (fpr, tpr) and above the line TPR = min_tpr.

    Works on 1-D curves or on [B, G] stacks (one curve per row, points in increasing fpr/tpr order).
    Equals the ISIC pAUC: the integral over TPR in [min_tpr, 1] of (1 - FPR(TPR)); raw, in [0, 1 - min_tpr].
    """
    dx = np.diff(fpr, axis=-1)
    h0, h1 = tpr[..., :-1] - min_tpr, tpr[..., 1:] - min_tpr  # heights above the line; h0 <= h1 (monotone)
    whole = dx * (h0 + h1) / 2.0  # segment entirely above the line
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = dx * h1 * h1 / (2.0 * (h1 - h0))  # segment crossing the line: triangle above it
    area = np.where(h0 >= 0, whole, np.where(h1 > 0, crossing, 0.0))
    return area.sum(axis=-1)


def partial_auc_above_sensitivity(y_true, scores, min_sensitivity: float = PAUC_MIN_SENSITIVITY) -> float | None:
    """ISIC partial AUC: area under the ROC curve restricted to TPR >= min_sensitivity, NOT McClish-corrected.

    Raw value in [0, 1 - min_sensitivity] (0.2 = perfect at 0.8). Same number as the ISIC scoring's
    `roc_auc_score(1 - y, 1 - p, max_fpr=1 - min_sensitivity)` with the McClish standardisation undone.
    None when y_true lacks positives or negatives.
    """
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = skm.roc_curve(y, scores)  # ties: one diagonal segment per tied score, as sklearn's AUC
    return float(_area_above(fpr, tpr, min_sensitivity))


def specificity_at_sensitivity(y_true, scores, sensitivity: float) -> float | None:
    """Best specificity among the thresholds whose sensitivity is >= `sensitivity` (achievable points, no
    interpolation). None when y_true lacks positives or negatives."""
    y = np.asarray(y_true).astype(bool)
    if y.all() or not y.any():
        return None
    fpr, tpr, _ = skm.roc_curve(y, scores, drop_intermediate=False)
    return float((1.0 - fpr[tpr >= sensitivity - _EPS]).max())


def _sens_spec(y_true, flagged) -> tuple[float | None, float | None]:
    """Sensitivity and specificity of a binary decision; None where the class is absent."""
    y, f = np.asarray(y_true).astype(bool), np.asarray(flagged).astype(bool)
    sens = float((f & y).sum() / y.sum()) if y.any() else None
    spec = float((~f & ~y).sum() / (~y).sum()) if (~y).any() else None
    return sens, spec


# --------------------------------------------------------------------------------------- vectorised bootstrap


def _resample_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """[b, n] float matrix: how often each of n items is drawn in each of b resamples (with replacement)."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


class _RankedScores:
    """Binary labels and scores sorted once (descending score) with their runs of tied scores, so curve
    metrics can be evaluated for many weightings (bootstrap resamples) with one numpy pass each."""

    def __init__(self, positive, scores):
        self.order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        s = np.asarray(scores, dtype=np.float64)[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
        self.positive = np.asarray(positive, dtype=np.float64)[self.order]

    def group_counts(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted positives and negatives per tie group, [B, G] each, groups by descending score."""
        ws = w[:, self.order]
        pos = np.add.reduceat(ws * self.positive, self.starts, axis=1)
        return pos, np.add.reduceat(ws, self.starts, axis=1) - pos


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC per row (Mann-Whitney, a tie counts 1/2 as in sklearn); nan where positives or negatives are 0."""
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    neg_below = n_neg[:, None] - np.cumsum(neg, axis=1)  # negatives scored strictly lower than the group
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def _roc_rows(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points per row, starting at (0, 0), one point per tie group: (fpr, tpr), [B, G + 1] each."""
    zeros = np.zeros((len(pos), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.hstack([zeros, np.cumsum(pos, axis=1)]) / pos.sum(axis=1, keepdims=True)
        fpr = np.hstack([zeros, np.cumsum(neg, axis=1)]) / neg.sum(axis=1, keepdims=True)
    return fpr, tpr


def _ap_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision per row, sklearn's definition: sum over thresholds of (recall step) * precision."""
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        return (pos * precision).sum(axis=1) / pos.sum(axis=1)  # nan without positives


def _class_stats(w: np.ndarray, onehot: np.ndarray, correct: np.ndarray, ranked: dict) -> dict:
    """Accuracy, balanced accuracy, per-class recall and one-vs-rest AUC for each resample row of w."""
    n = w.sum(axis=1)
    totals = w @ onehot  # [B, C] images per class in each resample
    hits = w @ (onehot * correct[:, None])
    present = onehot.sum(axis=0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(totals > 0, hits / totals, np.nan)
    # balanced accuracy is only comparable when every class of the original data is in the resample
    full = (totals[:, present] > 0).all(axis=1)
    stats = {"accuracy": (w @ correct) / n,
             "balanced_accuracy": np.where(full, np.nanmean(recall[:, present], axis=1), np.nan)}
    for k in range(onehot.shape[1]):
        stats[f"recall/{k}"] = recall[:, k]
        if k in ranked:
            stats[f"auc/{k}"] = _auc_rows(*ranked[k].group_counts(w))
    return stats


def _melanoma_stats(w: np.ndarray, ranked: _RankedScores, is_mel: np.ndarray, flagged) -> dict:
    """Melanoma-vs-rest AUC, pAUC, AP, specificity at fixed sensitivities and sens/spec at the alert threshold."""
    pos, neg = ranked.group_counts(w)
    fpr, tpr = _roc_rows(pos, neg)
    ok = (pos.sum(axis=1) > 0) & (neg.sum(axis=1) > 0)
    stats = {"auc": _auc_rows(pos, neg),
             "pauc": np.where(ok, _area_above(fpr, tpr, PAUC_MIN_SENSITIVITY), np.nan),
             "average_precision": _ap_rows(pos, neg)}
    for target in SENSITIVITY_TARGETS:
        spec = np.where(tpr >= target - _EPS, 1.0 - fpr, -np.inf).max(axis=1)
        stats[f"spec_at_{round(target * 100)}"] = np.where(ok, spec, np.nan)
    if flagged is not None:
        n_mel, n_other = w @ is_mel, w @ (1.0 - is_mel)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats["sensitivity"] = np.where(n_mel > 0, (w @ (flagged * is_mel)) / n_mel, np.nan)
            stats["specificity"] = np.where(n_other > 0, (w @ ((1 - flagged) * (1 - is_mel))) / n_other, np.nan)
    return stats


def _resample_weights(rng: np.random.Generator, b: int, units: np.ndarray | None, n: int) -> np.ndarray:
    """[b, n] image weights of b resamples: images drawn independently (units None), or whole units (lesions,
    patients: `units` = each image's unit index 0..U-1) drawn with replacement, every image of a drawn unit
    counted as often as its unit was drawn (cluster bootstrap)."""
    if units is None:
        return _resample_counts(rng, b, n)
    return _resample_counts(rng, b, int(units.max()) + 1)[:, units]


def _bootstrap(y, probs, mel: int | None, threshold, resamples: int, seed: int,
               units: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Distributions of every headline statistic over `resamples` seeded resamples; nan marks a skipped one."""
    n, c = probs.shape
    onehot = np.eye(c)[y]
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    counts = onehot.sum(axis=0)
    ranked = {k: _RankedScores(y == k, probs[:, k]) for k in range(c) if 0 < counts[k] < n}
    is_mel = (y == mel).astype(np.float64) if mel is not None else None
    flagged = None if threshold is None or mel is None else (probs[:, mel] >= threshold).astype(np.float64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {}
    for start in range(0, resamples, _BOOT_CHUNK):
        w = _resample_weights(rng, min(_BOOT_CHUNK, resamples - start), units, n)
        stats = _class_stats(w, onehot, correct, ranked)
        if mel in ranked:
            stats.update({f"melanoma/{k}": v for k, v in _melanoma_stats(w, ranked[mel], is_mel, flagged).items()})
        for name, values in stats.items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def _with_ci(value, dist: np.ndarray | None) -> dict | None:
    """{"value": v, "ci": [lo, hi]}: 95% percentile interval of the non-skipped resamples (None if none)."""
    if value is None:
        return None
    ci = None
    if dist is not None:
        kept = dist[~np.isnan(dist)]
        if len(kept):
            tail = (1.0 - CI_LEVEL) / 2 * 100
            ci = [float(np.percentile(kept, tail)), float(np.percentile(kept, 100 - tail))]
    return {"value": float(value), "ci": ci}


# ------------------------------------------------------------------------------------------------- compute_metrics


def _validate(y_true, probs, class_names) -> tuple[np.ndarray, np.ndarray]:
    """Arrays as int [N] and float [N, C]; ValueError on shape, range or non-finite problems."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y) or p.shape[1] != len(class_names):
        raise ValueError(f"probs must be [N={len(y)}, C={len(class_names)}], got {p.shape}")
    if len(y) == 0:
        raise ValueError("compute_metrics needs at least one labelled prediction")
    if y.min() < 0 or y.max() >= len(class_names):
        raise ValueError(f"labels must be class indices in [0, {len(class_names) - 1}]")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or infinite values")
    return y, p


def _per_class(y, probs, class_names, dists) -> dict:
    """Per class: precision, recall (with CI), specificity, F1, one-vs-rest AUC (with CI), AP, support."""
    labels = list(range(len(class_names)))
    pred = probs.argmax(axis=1)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = skm.confusion_matrix(y, pred, labels=labels)
    table = {}
    for k, name in enumerate(class_names):
        pos = y == k
        fp, tn = cm[:, k].sum() - cm[k, k], len(y) - cm[k, :].sum() - cm[:, k].sum() + cm[k, k]
        both = pos.any() and not pos.all()
        table[name] = {
            "precision": float(prec[k]),
            "recall": _with_ci(rec[k], dists.get(f"recall/{k}")) if pos.any() else None,
            "specificity": float(tn / (tn + fp)) if tn + fp else None,
            "f1": float(f1[k]),
            "auc": _with_ci(skm.roc_auc_score(pos, probs[:, k]), dists.get(f"auc/{k}")) if both else None,
            "average_precision": float(skm.average_precision_score(pos, probs[:, k])) if pos.any() else None,
            "support": int(support[k]),
        }
    return table


def _melanoma_section(y, probs, mel: int, class_names, threshold, dists) -> dict:
    """Melanoma vs rest: AUC, ISIC pAUC, AP, specificity at 90/95% sensitivity; at the alert: sensitivity,
    specificity, the share alerted per true class and at typical prevalences."""
    name = class_names[mel]
    is_mel, p = y == mel, probs[:, mel]
    both = is_mel.any() and not is_mel.all()
    d = {k.split("/", 1)[1]: v for k, v in dists.items() if k.startswith("melanoma/")}
    section = {
        "class": name, "n_melanoma": int(is_mel.sum()), "n_other": int((~is_mel).sum()),
        "auc": _with_ci(skm.roc_auc_score(is_mel, p), d.get("auc")) if both else None,
        "pauc_above_80_sensitivity": _with_ci(partial_auc_above_sensitivity(is_mel, p), d.get("pauc")),
        "average_precision": _with_ci(skm.average_precision_score(is_mel, p), d.get("average_precision"))
        if is_mel.any() else None,
        "alert_threshold": None if threshold is None else float(threshold),
        "sensitivity": None, "specificity": None,
    }
    for target in SENSITIVITY_TARGETS:
        key = f"spec_at_{round(target * 100)}"
        section[f"specificity_at_{round(target * 100)}_sensitivity"] = _with_ci(
            specificity_at_sensitivity(is_mel, p, target), d.get(key))
    if threshold is not None:
        flagged = p >= threshold
        sens, spec = _sens_spec(is_mel, flagged)
        section["sensitivity"] = _with_ci(sens, d.get("sensitivity"))
        section["specificity"] = _with_ci(spec, d.get("specificity"))
        section["alerted_by_class"] = alerted_by_class(y, flagged, class_names)
        section["expected_alert_share"] = expected_alert_share(sens, spec)
    return section


def alerted_by_class(y, flagged, class_names) -> dict:
    """{true class: {"n", "alerted", "share"}} for the classes present: which lesions the alert fires on. The same
    specificity can hide very different clinics (nevi spared, keratoses and carcinomas alerted, or the reverse)."""
    y, flagged = np.asarray(y), np.asarray(flagged, bool)
    out = {}
    for k, name in enumerate(class_names):
        members = y == k
        if members.any():
            n, alerted = int(members.sum()), int(flagged[members].sum())
            out[name] = {"n": n, "alerted": alerted, "share": round(alerted / n, 4)}
    return out


# Melanoma prevalence in a dermatology referral clinic (~10%) and in population screening (~1-2%).
PREVALENCES = {"referral clinic (10% melanoma)": 0.10, "screening (2% melanoma)": 0.02}


def expected_alert_share(sensitivity, specificity) -> dict | None:
    """Share of ALL lesions the alert fires on at typical prevalences: p * sens + (1 - p) * (1 - spec), from one
    operating point (a new site's own share differs as its sensitivity and specificity do)."""
    if sensitivity is None or specificity is None:
        return None
    return {name: round(p * sensitivity + (1 - p) * (1 - specificity), 3) for name, p in PREVALENCES.items()}


def _calibration(y, probs, n_bins: int) -> dict:
    """ECE, multi-class NLL and Brier score of the probabilities as given, plus reliability-diagram data."""
    onehot = np.eye(probs.shape[1])[y]
    return {
        "ece": expected_calibration_error(probs, y, n_bins),
        "n_bins": n_bins,
        # mean -log p(true class); clipped so one hard zero gives a large finite number, not inf
        "nll": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)).mean()),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "reliability": reliability_curve(probs, y, n_bins),
    }


def compute_metrics(y_true, probs, class_names, melanoma_class: str | None = "melanoma",
                    alert_threshold: float | None = None, bootstrap: int = 1000, seed: int = 0,
                    n_bins: int = 15, groups=None) -> dict:
    """All evaluation metrics as one JSON-able dict (see module docstring for conventions).

    Keys: n_images, classes, accuracy, balanced_accuracy (mean recall over the classes present = the ISIC
    ranking metric), per_class, confusion_matrix (rows = true class, columns = predicted), melanoma (None when
    `melanoma_class` is not among `class_names`), calibration, bootstrap. Headline numbers are
    {"value", "ci"} dicts. `alert_threshold` None leaves the alert sensitivity/specificity None.
    `groups` (one key per image: lesion or patient id): the bootstrap resamples whole groups, because several
    photos of one lesion are not independent evidence (image-level CIs would be too narrow).
    """
    class_names = list(class_names)
    y, p = _validate(y_true, probs, class_names)
    mel = class_names.index(melanoma_class) if melanoma_class in class_names else None
    units = _group_units(groups, len(y))
    dists = _bootstrap(y, p, mel, alert_threshold, bootstrap, seed, units) if bootstrap > 0 else {}
    pred = p.argmax(axis=1)
    result = {
        "n_images": int(len(y)),
        "classes": class_names,
        "accuracy": _with_ci(skm.accuracy_score(y, pred), dists.get("accuracy")),
        "balanced_accuracy": _with_ci(_balanced_accuracy(y, pred), dists.get("balanced_accuracy")),
        "per_class": _per_class(y, p, class_names, dists),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(range(len(class_names)))).tolist(),
        "melanoma": None if mel is None else _melanoma_section(y, p, mel, class_names, alert_threshold, dists),
        "calibration": _calibration(y, p, n_bins),
        "bootstrap": {"resamples": int(bootstrap), "seed": int(seed), "level": CI_LEVEL, "method": "percentile",
                      "unit": "image" if units is None else "group",
                      "n_units": int(len(y) if units is None else units.max() + 1),
                      "skipped": {_stat_name(k, class_names): int(np.isnan(v).sum())
                                  for k, v in dists.items() if np.isnan(v).any()}},
    }
    return result


def _group_units(groups, n: int) -> np.ndarray | None:
    """Each image's group index 0..U-1, or None when there are no groups or every image is its own group."""
    if groups is None:
        return None
    groups = [str(g) for g in groups]
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} images")
    units = np.unique(groups, return_inverse=True)[1].ravel()
    return None if units.max(initial=-1) + 1 == n else units


def _balanced_accuracy(y, pred) -> float:
    """Mean recall over the classes present in y (sklearn's balanced_accuracy_score, without its warning
    about predicted classes that never occur in y)."""
    classes = np.unique(y)
    return float(np.mean([(pred[y == k] == k).mean() for k in classes]))


def _stat_name(key: str, class_names) -> str:
    """Readable bootstrap statistic name: 'auc/3' -> 'auc/melanoma'."""
    head, _, tail = key.partition("/")
    return f"{head}/{class_names[int(tail)]}" if tail.isdigit() else key
