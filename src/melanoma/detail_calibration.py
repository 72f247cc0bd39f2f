"""Detail calibration: the melanoma probability of an image with LESS detail than the model trained on, corrected
so that the one alert threshold means the same at every level of detail (issue 14).

Every training image was first reduced to `preprocessing.detail_size` (a shorter side of 150 px for the shipped
model). A smaller image reaches the network enlarged, and the models then give non-melanomas higher melanoma
probabilities: the shipped model of session 11 alerted 84% of its older-archive validation images at 120 px
(specificity 0.30) against 68% at 150 px. A threshold refitted at 120 px on half of those images kept 0.89
sensitivity with specificity 0.48 on the other half (docs/results.md, session 12).

`melanoma threshold MODEL --detail-levels 135 120 100` predicts the model's validation images again reduced to
each level and chooses, per level, the alert threshold t(L) the model's policy would choose there (the highest one
keeping the target sensitivity; on every training source for a worst-source alert). model.json stores

    "detail_calibration": {"target_sensitivity": 0.9, "policy": "worst source", "fitted_on": "validation",
                           "levels": [{"shorter_side": 120, "alert_threshold": t, "melanoma_logit_shift": d,
                                       "by_source": {...}}, ...]}

with d = logit t(L) - logit t, t the model's alert threshold. At prediction an image whose shorter side s (as
decoded) is below detail_size has its melanoma log-odds lowered by d(s): 0 at detail_size, linear in s between
the fitted levels, the smallest level's shift below it (no extrapolation). The other classes share the rest of the
probability in their old proportions. So `p >= t` after the shift is exactly `p_raw >= t(s)`: the probability a
clinician sees, the audit trail stores and a site calibrates on agrees with the alert. The referral decides on the
unshifted outputs it was fitted on. Images at or above detail_size are never changed.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from melanoma.errors import ConfigError, DataError, ModelError

MIN_LEVEL = 32  # px: below this an image carries no lesion detail worth a threshold


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def logit_shift(side: int, calibration: dict | None, detail_size) -> float:
    """How much an image's melanoma log-odds are lowered: 0 without a calibration or at/above detail_size."""
    if not calibration or not detail_size or side >= int(detail_size):
        return 0.0
    points = sorted((int(lv["shorter_side"]), float(lv["melanoma_logit_shift"])) for lv in calibration["levels"])
    points.append((int(detail_size), 0.0))
    sides, shifts = zip(*points)
    return float(np.interp(side, sides, shifts))  # clamps to the smallest level's shift below it


def shift_melanoma(probs: np.ndarray, melanoma_index: int, shifts: np.ndarray) -> np.ndarray:
    """probs [N, C] with row i's melanoma odds divided by exp(shifts[i]); the other classes scaled to sum to 1."""
    shifts = np.asarray(shifts, dtype=np.float64)
    if not len(probs) or not np.any(shifts):
        return probs
    out = np.asarray(probs, dtype=np.float64).copy()
    p = np.clip(out[:, melanoma_index], 1e-12, 1 - 1e-12)
    new = p / (p + (1 - p) * np.exp(shifts))
    rest = np.clip(1 - out[:, melanoma_index], 1e-12, None)
    out *= ((1 - new) / rest)[:, None]
    out[:, melanoma_index] = new
    return out.astype(probs.dtype, copy=False)


def check_levels(levels, detail_size) -> list[int]:
    """The levels to fit, sorted high to low; ConfigError for a model without detail_size or a bad level."""
    if not detail_size:
        raise ConfigError("the model has no preprocessing.detail_size (it trained on mixed detail), so there is no "
                          "level of detail to calibrate against; train with --detail-size")
    levels = sorted({int(v) for v in levels}, reverse=True)
    bad = [v for v in levels if not MIN_LEVEL <= v < int(detail_size)]
    if bad:
        raise ConfigError(f"--detail-levels {bad[0]}: each level must be a shorter side of at least {MIN_LEVEL} px "
                          f"and below the model's detail_size ({int(detail_size)} px)")
    return levels


def fit(run, levels, target_sensitivity: float, per_source: bool, alert_threshold: float,
        paths: list[str], is_mel: np.ndarray, log=None, class_weights="model", views: int | None = None) -> dict:
    """Predict `paths` (the model's labelled validation images) reduced to each level and fit t(L) and the logit
    shift of every level (see the module doc). Returns model.json's "detail_calibration" section. class_weights:
    the prior correction the fit predicts under (melanoma.priors; "model": the one in RUN's model.json), which
    must be the one stored beside the result: the shift is applied after it. views: the test-time views averaged
    (None: the model's own), those the alert threshold was chosen on."""
    from melanoma.finalize import operating_points, source_of, training_sources, worst_source_threshold
    from melanoma.metrics import choose_alert_threshold
    from melanoma.predict import Predictor

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))  # stdout may be --json
    predictor = Predictor.load(run)
    levels = check_levels(levels, predictor.pre.get("detail_size"))
    if predictor.melanoma_index is None:
        raise ModelError(f"{run}: the model has no melanoma class, so it has no alert to calibrate")
    predictor.detail_calibration = None  # fit on the outputs before any shift
    if views is not None:
        predictor.tta_views = views
    if not isinstance(class_weights, str):
        predictor.class_weights = class_weights
    sources = [source_of(p, training_sources(predictor.meta)) for p in paths]
    fitted, jobs = [], []
    for level in levels:
        predictor.pre["detail_size"] = level  # every image first reduced to `level` px: what a smaller one gives
        result, job = predictor.predict_resumable(f"detail calibration at {level} px", paths)
        jobs.append(job)
        if result.errors:
            path, reason = result.errors[0]
            raise DataError(f"{path}: {reason} (a validation image of the model; nothing was written)")
        p_mel = result.melanoma_probability
        threshold = (worst_source_threshold(is_mel, p_mel, sources, target_sensitivity) if per_source
                     else float(choose_alert_threshold(is_mel, p_mel, target_sensitivity)))
        by_source = operating_points(is_mel, p_mel >= threshold, sources)
        fitted.append({"shorter_side": level, "alert_threshold": threshold,
                       "melanoma_logit_shift": _logit(threshold) - _logit(alert_threshold), "by_source": by_source})
        log(f"  {level} px: alert threshold {threshold:.4f} (logit shift {fitted[-1]['melanoma_logit_shift']:+.3f}); "
            + "; ".join(f"{name} sensitivity {_fmt(v['sensitivity'])} specificity {_fmt(v['specificity'])}"
                        for name, v in by_source.items()))
    for job in jobs:  # a kill before this point resumes at the level (and chunk) it reached
        job.finish()
    return {"target_sensitivity": target_sensitivity, "policy": "worst source" if per_source else "pooled",
            "fitted_on": "validation", "levels": fitted}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
