"""Does a model's alert behave on a site's images as on its validation images? Checked without any diagnosis.

An alert that fires on most lesions tells a dermatologist nothing: scored on five independent sets, an earlier
default alerted 40-76% of all lesions, against about 40% on its own validation images (issue 14). The share of
lesions alerted is observable the day a site starts, long before reviewed diagnoses allow a site calibration. At
the model's validation operating point of a training source (sensitivity s, specificity c: model.json
`thresholds.melanoma_alert_by_source`, else `metrics`), a site where a share p of the lesions are melanomas should
see s * p + (1 - c) * (1 - p) of them alerted. `site_report` compares the observed share (a Wilson 95% interval)
with that range for prevalences 0..`max_prevalence`, and reports the prevalence the observed share would need at
each source's operating point: an alert on 70% of lesions "needs" a melanoma prevalence no clinic has, i.e. the
model's specificity does not hold there, and the threshold should be re-chosen from reviewed cases. It also checks
the share referred (a new source of dermoscopic images should see at most 10% referred: issue 14).

The same arithmetic adapts the threshold to a site without diagnoses (`share_matched_threshold`): at the site's
stated prevalence, the threshold that alerts the share the validation operating point predicts there.

Used by the service's site monitor (serve/monitor.py: GET /v1/monitor, POST /v1/monitor/apply), `melanoma
predict`'s summary and `melanoma site-threshold`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from melanoma.artifacts import atomic_write_text, copy_model_files, read_meta
from melanoma.errors import ConfigError, ModelError

MIN_IMAGES = 50          # below this the shares' intervals are too wide to say anything
MAX_REFERRED = 0.10      # issue 14: at most 10% of a new source's real lesions referred
SERVICE_REMEDY = ("adapted to this site's images at its melanoma prevalence below, or from reviewed cases "
                  "(site calibration)")
CLI_REMEDY = ("without diagnoses `melanoma site-threshold MODEL --predictions CSV --prevalence P`, or on labelled "
              "local images `melanoma threshold MODEL --predictions CSV`")


def operating_points(meta: dict) -> dict[str, tuple[float, float]]:
    """{source: (sensitivity, specificity)} of the model's alert on its validation images."""
    by_source = (meta.get("thresholds") or {}).get("melanoma_alert_by_source") or {}
    points = {name: (p["sensitivity"], p["specificity"]) for name, p in by_source.items()
              if p.get("sensitivity") is not None and p.get("specificity") is not None}
    metrics = meta.get("metrics") or {}
    if not points and metrics.get("melanoma_sensitivity") is not None \
            and metrics.get("melanoma_specificity") is not None:
        points["validation"] = (metrics["melanoma_sensitivity"], metrics["melanoma_specificity"])
    return points


def alert_share_at(sensitivity: float, specificity: float, prevalence: float) -> float:
    return sensitivity * prevalence + (1 - specificity) * (1 - prevalence)


def expected_range(points: dict[str, tuple[float, float]], max_prevalence: float) -> tuple[float, float]:
    """The lowest and highest share alerted at any source's operating point for a prevalence in 0..max (the share
    is linear in the prevalence, so its ends are at 0 and at max)."""
    ends = [alert_share_at(s, c, p) for s, c in points.values() for p in (0.0, max_prevalence)]
    return min(ends), max(ends)


def implied_prevalence(share: float, sensitivity: float, specificity: float) -> float | None:
    """The melanoma prevalence at which this operating point alerts `share` of lesions (outside 0..1: none can);
    None where the alert does not separate melanomas at all (sensitivity <= 1 - specificity)."""
    gap = sensitivity - (1 - specificity)
    return None if gap <= 0 else (share - (1 - specificity)) / gap


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion k / n (scipy's binomtest)."""
    from scipy.stats import binomtest  # lazily: the service starts without scipy's import time

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _share(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"count": k, "share": k / n, "interval": [low, high]}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def alert_finding(alerted: dict, what: str, expected: tuple[float, float], implied: dict, max_prevalence: float,
                  remedy: str) -> str | None:
    """One sentence where the alerted share's interval lies wholly outside the expected range, else None. `what`
    names the images ("the last 500 images"), `remedy` how to re-choose the threshold."""
    (low, high), (lo_exp, hi_exp) = alerted["interval"], expected
    seen = f"The alert fired on {_pct(alerted['share'])} ({_pct(low)}-{_pct(high)}) of {what}"
    known = [v for v in implied.values() if v is not None]
    needs = (f"; at the validation operating points that needs a melanoma prevalence of "
             f"{_pct(min(known))}-{_pct(max(known))}" if known else "")
    if low > hi_exp:
        return (f"{seen}, against {_pct(lo_exp)}-{_pct(hi_exp)} on the validation images at a melanoma prevalence "
                f"of up to {_pct(max_prevalence)}{needs}: unless that many of them are melanomas, its specificity "
                f"does not hold here and most alerts carry no information. Re-choose the threshold: {remedy}.")
    if high < lo_exp:
        return (f"{seen}, fewer than the validation images' false alerts alone ({_pct(lo_exp)}-{_pct(hi_exp)} at a "
                f"prevalence up to {_pct(max_prevalence)}){needs}: the alert may miss melanomas here. Re-choose the "
                f"threshold: {remedy}.")
    return None


def site_report(n: int, alerted: int, referred: int, warned: int, refer_reasons: dict, meta: dict,
                max_prevalence: float = 0.3, min_images: int = MIN_IMAGES, what: str | None = None,
                remedy: str = SERVICE_REMEDY) -> dict:
    """Shares alerted, referred and warned among `n` images of a site predicted by the model of `meta` (its
    model.json), the range its validation images predict, and `status`: "too few" (under `min_images`),
    "unknown" (the model card holds no operating point), "check" (with one `findings` sentence per problem) or
    "ok". `what` names the images in the findings (default "the last N images")."""
    points, what = operating_points(meta), what or f"the last {n} images"
    report: dict = {"images": n, "min_images": min_images, "max_prevalence": max_prevalence,
                    "operating_points": {k: {"sensitivity": s, "specificity": c} for k, (s, c) in points.items()},
                    "findings": []}
    if n < min_images:
        return {**report, "status": "too few"}
    shares = {"alerted": _share(alerted, n), "warned": _share(warned, n),
              "referred": {**_share(referred, n), "limit": MAX_REFERRED, "by_reason": dict(refer_reasons)}}
    report.update(shares)
    if shares["referred"]["interval"][0] > MAX_REFERRED:
        report["findings"].append(
            f"{_pct(referred / n)} of {what} were referred (more than the {_pct(MAX_REFERRED)} a new source of "
            "dermoscopic images should see): check that they are dermoscopic images of one lesion.")
    if not points:
        return {**report, "status": "check" if report["findings"] else "unknown"}
    expected = expected_range(points, max_prevalence)
    implied = {k: implied_prevalence(alerted / n, s, c) for k, (s, c) in points.items()}
    shares["alerted"].update(expected=list(expected), implied_prevalence=implied)
    finding = alert_finding(shares["alerted"], what, expected, implied, max_prevalence, remedy)
    if finding:
        report["findings"].insert(0, finding)
    return {**report, "status": "check" if report["findings"] else "ok"}


def target_share(meta: dict, prevalence: float) -> float | None:
    """The share of a site's lesions the alert should fire on at melanoma `prevalence` if it worked there as on the
    validation images: the mean over the training sources' operating points (None without one)."""
    points = operating_points(meta)
    if not points:
        return None
    return sum(alert_share_at(s, c, prevalence) for s, c in points.values()) / len(points)


def share_matched_threshold(melanoma_probabilities, meta: dict, prevalence: float) -> tuple[float, float]:
    """(threshold, target share): the threshold that alerts target_share(meta, prevalence) of a site's images, from
    their melanoma probabilities (as served: test-time views and detail calibration applied). No diagnosis
    needed, but the site's melanoma prevalence must be stated; the alert then keeps about the validation operating
    point if the site's images are ranked as the validation images were (docs/results.md, session 46)."""
    share = target_share(meta, prevalence)
    if share is None:
        raise ValueError("the model card holds no validation operating point (thresholds.melanoma_alert_by_source "
                         "or metrics.melanoma_sensitivity / melanoma_specificity)")
    p = np.asarray(melanoma_probabilities, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        raise ValueError("no melanoma probability to choose a threshold from")
    return float(np.quantile(p, 1.0 - share)), share


def write_site_threshold(model_dir, out, melanoma_probabilities, prevalence: float, chosen_on: str) -> dict:
    """Choose the share-matched threshold (share_matched_threshold) from a site's melanoma probabilities and write
    it into `out`, a new model folder holding a copy of MODEL_DIR's model files, or, with out=None, into
    MODEL_DIR/model.json itself. The validation operating points stay in the card (they are what the site's alert
    should now match) and thresholds.site_adaptation records how the threshold was chosen. ConfigError for a
    prevalence outside (0, 1) or fewer than MIN_IMAGES probabilities."""
    model_dir = Path(model_dir)
    if not 0 < prevalence < 1:
        raise ConfigError(f"the melanoma prevalence must be in (0, 1), got {prevalence}")
    p = np.asarray(melanoma_probabilities, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) < MIN_IMAGES:
        raise ConfigError(f"{len(p)} images with a melanoma probability; a site threshold needs at least "
                          f"{MIN_IMAGES} (a few hundred give a stable one)")
    meta = read_meta(model_dir)
    old = (meta.get("thresholds") or {}).get("melanoma_alert")
    if old is None:
        raise ModelError(f"{model_dir}: the model has no melanoma alert threshold to adapt")
    try:
        new, share = share_matched_threshold(p, meta, prevalence)
    except ValueError as exc:
        raise ModelError(f"{model_dir}: {exc}") from None
    before, after = float(np.mean(p >= old)), float(np.mean(p >= new))
    target = copy_model_files(model_dir, out) if out else model_dir
    stored = json.loads((target / "model.json").read_text())  # as stored (read_meta may normalise)
    earlier = stored["thresholds"].get("site_adaptation") or {}  # adapted before: keep the validation one
    stored["thresholds"].update(melanoma_alert=new, melanoma_alert_source=chosen_on, site_adaptation={
        "method": "alert share matched to the validation operating points (melanoma.site_check)",
        "prevalence": prevalence, "target_share": share, "n_images": int(len(p)),
        "alerted_at_old_threshold": before,
        "validation_threshold": earlier.get("validation_threshold", old)})
    atomic_write_text(target / "model.json", json.dumps(stored, indent=2))
    return {"model": str(target / "model.json"), "old": old, "new": new, "prevalence": prevalence,
            "target_share": share, "n_images": int(len(p)), "alerted_before": before, "alerted_after": after}


def site_probabilities(predictions, meta: dict) -> np.ndarray:
    """The melanoma probabilities of a prediction CSV in the shared layout (`melanoma predict --out`, `melanoma
    evaluate`'s predictions.csv; evaluate.read_predictions_csv, which names the file and the problem on a bad one)
    for the model of `meta`."""
    from melanoma.evaluate import read_predictions_csv  # lazily: evaluate pulls in matplotlib

    melanoma = meta.get("melanoma_class")
    if melanoma is None:
        raise ModelError("the model has no melanoma class, so it has no alert threshold to adapt")
    table = read_predictions_csv(predictions, meta["class_names"])
    return table.probs[:, meta["class_names"].index(melanoma)]
