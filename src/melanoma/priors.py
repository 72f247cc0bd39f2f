"""Prior correction: probabilities for the class mix a clinic sees, from a network trained on balanced classes.

The class-balanced sampler (and the weighted loss) train every class as equally likely, so the network's softmax
estimates p_bal(c | x), proportional to p(c | x) / pi(c) for the natural class frequencies pi. A seborrheic
keratosis drawn as often as a nevus (2 training images of the one, thousands of the other) weighs as much in the
melanoma probability's denominator: an image that half resembles a keratosis loses melanoma probability to it even
where keratoses are rare. The correction multiplies by the frequencies again and renormalises
(Saerens, Latinne and Decaestecker 2002; the post-hoc logit adjustment of Menon et al. 2021):

    p(c | x) = p_bal(c | x) * w_c / sum_k p_bal(k | x) * w_k,      w_c = pi_c * C  (1 for a uniform pi)

pi is the mix of the model's own labelled validation images: a group-aware share of its training sources, as they
come (add-one smoothed, so a class never seen keeps a little probability). It is NOT estimated on the images being
scored, and a model validated on a held-out source has no in-source mix to read, so it is refused there. model.json

    "prior_correction": {"method": "training mix", "class_counts": {...}, "weights": [w_c per class_names],
                         "fitted_on": "validation labels"}

and predict applies it after the referral decides (which reads the outputs it was fitted on) and before the detail
calibration. Prediction CSVs hold the corrected probabilities, so `reweight(probs, new / old weights)` moves stored
probabilities from one correction to another (old or new None: no correction).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from melanoma.config import NATURAL_MIX_MODES
from melanoma.config import PRIOR_CORRECTIONS as METHODS
from melanoma.errors import ConfigError


def weights_of(meta: dict) -> np.ndarray | None:
    """model.json's per-class weights (in class_names order), or None for a model without a correction."""
    section = meta.get("prior_correction")
    if not section:
        return None
    weights = np.asarray(section["weights"], dtype=np.float64)
    if weights.shape != (len(meta["class_names"]),) or not np.all(weights > 0):
        raise ConfigError(f"model.json prior_correction.weights: {len(meta['class_names'])} positive numbers "
                          f"expected (one per class), got {section['weights']!r}")
    return weights


def reweight(probs: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """probs [N, C] times the per-class weights, each row renormalised to 1 (weights None: probs unchanged)."""
    if weights is None or not len(probs):
        return probs
    out = np.asarray(probs, dtype=np.float64) * np.asarray(weights, dtype=np.float64)
    out /= np.clip(out.sum(axis=1, keepdims=True), 1e-300, None)
    return out.astype(probs.dtype, copy=False)


def change(old: np.ndarray | None, new: np.ndarray | None, n_classes: int) -> np.ndarray | None:
    """Weights that move probabilities made under correction `old` to correction `new` (None: nothing to do)."""
    if old is None and new is None:
        return None
    ones = np.ones(n_classes)
    return (ones if new is None else new) / (ones if old is None else old)


def method_for(meta: dict) -> str:
    """--prior-correction auto: "none" for a network trained at the sources' class mix (NATURAL_MIX_MODES),
    "training-mix" for one trained on balanced classes (sampler, weighted loss). An ensemble decides by the
    imbalance mode its members share (model.json training); ConfigError where they differ or none is recorded."""
    imbalance = (meta.get("training") or {}).get("imbalance")
    if imbalance is None:
        raise ConfigError("--prior-correction auto: the model records no imbalance mode (an ensemble of members "
                          "trained differently?); choose training-mix or none")
    return "none" if imbalance in NATURAL_MIX_MODES else "training-mix"


def training_mix(meta: dict, labels: list[str | None]) -> dict:
    """model.json's "prior_correction" section from the model's own validation labels (see the module doc).
    ConfigError where those labels are not a mix of the training sources, or the model trained on the natural mix."""
    training = meta.get("training") or {}
    if training.get("holdout_source"):
        raise ConfigError(f"the model validated on a held-out source ({training['holdout_source']}); its validation "
                          "labels are not the mix it trained on, so there is no training mix to correct to")
    if training.get("imbalance") in NATURAL_MIX_MODES:
        raise ConfigError(f"the model trained on the natural class mix (imbalance: {training['imbalance']}); its "
                          "probabilities need no prior correction")
    classes = list(meta["class_names"])
    counts = Counter(label for label in labels if label in classes)
    if sum(counts.values()) < 20:
        raise ConfigError(f"{sum(counts.values())} validation labels among the model's classes; a class mix "
                          "needs at least 20")
    return {"method": "training mix", "fitted_on": "validation labels",
            "class_counts": {c: int(counts[c]) for c in classes},
            "weights": [round(float(w), 6) for w in mix_weights(counts, classes)]}


def mix_weights(counts: dict, classes: list[str]) -> np.ndarray:
    """w_c = pi_c * C from class counts, add-one smoothed (an unseen class keeps some probability)."""
    smoothed = np.array([counts.get(c, 0) + 1.0 for c in classes])
    return smoothed / smoothed.sum() * len(classes)


def describe(meta: dict) -> str:
    """One line for reports and the model card."""
    section = meta.get("prior_correction")
    if not section:
        return "none (probabilities as trained: every class equally likely)"
    counts = section.get("class_counts") or {}
    top = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
    return f"{section['method']} ({section['fitted_on']}: {sum(counts.values())} images; {top}, ...)"
