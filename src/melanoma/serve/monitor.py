"""Site monitor: does the served model's alert behave at this site as on its validation images? No diagnoses needed.

An alert that fires on most lesions tells a dermatologist nothing: scored on five independent sets, an earlier
default alerted 40-76% of all lesions, against about 40% on its own validation images (issue 14). The share of
lesions alerted is observable the day a site starts, long before reviewed diagnoses allow a site calibration. At
the model's validation operating point of a training source (sensitivity s, specificity c: model.json
`thresholds.melanoma_alert_by_source`, else `metrics`), a site where a share p of the lesions are melanomas should
see s * p + (1 - c) * (1 - p) of them alerted. The monitor compares the recent share (a Wilson 95% interval) with
that range for prevalences 0..`max_prevalence`, and reports the prevalence the observed share would need at each
source's operating point: an alert on 70% of lesions "needs" a melanoma prevalence no clinic has, i.e. the model's
specificity does not hold here, and the threshold should be re-chosen from reviewed cases (GET /v1/calibration).

It also reports the shares referred (a new source of dermoscopic images should see at most 10% referred: issue 14)
and predicted with a warning (less detail than the training images: detail-calibrated alerts).
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from melanoma.serve.db import PredictionRecord
from melanoma.serve.inference import LoadedModel

MIN_IMAGES = 50          # below this the shares' intervals are too wide to say anything
MAX_REFERRED = 0.10      # issue 14: at most 10% of a new source's real lesions referred
THRESHOLD_MATCH = 1e-9   # records predicted at the served alert threshold (a site-calibrated copy has its own)


def operating_points(meta: dict) -> dict[str, tuple[float, float]]:
    """{source: (sensitivity, specificity)} of the served alert on the model's validation images."""
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


def recent_records(session: Session, model: LoadedModel, last: int) -> list[PredictionRecord]:
    """The `last` newest records predicted by the served weights at the served alert threshold."""
    query = select(PredictionRecord).where(PredictionRecord.model_sha256 == model.sha256)
    if model.alert_threshold is not None:
        query = query.where(PredictionRecord.alert_threshold.between(model.alert_threshold - THRESHOLD_MATCH,
                                                                    model.alert_threshold + THRESHOLD_MATCH))
    return list(session.scalars(query.order_by(PredictionRecord.id.desc()).limit(last)))


def _share(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"count": k, "share": k / n, "interval": [low, high]}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def alert_finding(alerted: dict, n: int, expected: tuple[float, float], implied: dict, max_prevalence: float
                  ) -> str | None:
    """One sentence where the alerted share's interval lies wholly outside the expected range, else None."""
    (low, high), (lo_exp, hi_exp) = alerted["interval"], expected
    seen = f"The alert fired on {_pct(alerted['share'])} ({_pct(low)}-{_pct(high)}) of the last {n} images"
    known = [v for v in implied.values() if v is not None]
    needs = (f"; at the validation operating points that needs a melanoma prevalence of "
             f"{_pct(min(known))}-{_pct(max(known))}" if known else "")
    if low > hi_exp:
        return (f"{seen}, against {_pct(lo_exp)}-{_pct(hi_exp)} on the validation images at a melanoma prevalence "
                f"of up to {_pct(max_prevalence)}{needs}: its specificity does not hold here, so most alerts carry "
                "no information. Re-choose the threshold from reviewed cases (site calibration).")
    if high < lo_exp:
        return (f"{seen}, fewer than the validation images' false alerts alone ({_pct(lo_exp)}-{_pct(hi_exp)} at a "
                f"prevalence up to {_pct(max_prevalence)}){needs}: the alert may miss melanomas here. Re-choose the "
                "threshold from reviewed cases (site calibration).")
    return None


def site_report(rows: list[PredictionRecord], meta: dict, max_prevalence: float = 0.3,
                min_images: int = MIN_IMAGES) -> dict:
    """Shares alerted, referred and warned among `rows`, the range the validation images predict, and `status`:
    "too few" (under `min_images`), "unknown" (the model card holds no operating point), "check" (with one
    `findings` sentence per problem) or "ok"."""
    n, points = len(rows), operating_points(meta)
    report: dict = {"images": n, "min_images": min_images, "max_prevalence": max_prevalence,
                    "operating_points": {k: {"sensitivity": s, "specificity": c} for k, (s, c) in points.items()},
                    "from": min((r.created_at for r in rows), default=None),
                    "to": max((r.created_at for r in rows), default=None), "findings": []}
    if n < min_images:
        return {**report, "status": "too few"}
    alerted = _share(sum(r.alert for r in rows), n)
    referred = {**_share(sum(r.refer for r in rows), n), "limit": MAX_REFERRED,
                "by_reason": dict(Counter(r.refer_reason or "unspecified" for r in rows if r.refer))}
    report.update(alerted=alerted, referred=referred, warned=_share(sum(bool(r.warning) for r in rows), n))
    if referred["interval"][0] > MAX_REFERRED:
        report["findings"].append(
            f"{_pct(referred['share'])} of the last {n} images were referred (more than the {_pct(MAX_REFERRED)} a "
            "new source of dermoscopic images should see): check that they are dermoscopic images of one lesion.")
    if not points:
        return {**report, "status": "unknown" if not report["findings"] else "check"}
    expected = expected_range(points, max_prevalence)
    implied = {k: implied_prevalence(alerted["share"], s, c) for k, (s, c) in points.items()}
    alerted.update(expected=list(expected), implied_prevalence=implied)
    finding = alert_finding(alerted, n, expected, implied, max_prevalence)
    if finding:
        report["findings"].insert(0, finding)
    return {**report, "status": "check" if report["findings"] else "ok"}
