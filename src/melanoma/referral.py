"""Referral: decide when the model should NOT be trusted and a dermatologist must look anyway.

Two independent reasons, both calibrated on the validation set by `fit_referral` (called by training):

* "low confidence": the top softmax probability (after temperature scaling) is below
  `thresholds.refer_confidence` = the `confidence_quantile` (default 5%) quantile of validation confidences,
  so about 5% of validation lesions are referred for this reason -- those are also where the model is wrong
  most often (the achieved accuracies are recorded in `meta["referral"]["validation"]`).
* "not like the training images": out-of-distribution input (a photo, a screenshot, noise...). Score =
  class-conditional Mahalanobis distance (Lee et al. 2018: per-class means, one shared Ledoit-Wolf-shrunk
  covariance) of the pre-logit features after PCA to <= 64 dims, plus the energy of the PCA residual
  (what the 64 components do not explain), each standardised on validation. Threshold =
  the `ood_quantile` (default 97.5%) quantile of *out-of-fold* validation scores (5-fold cross-fitting),
  so the threshold is honest (in-sample distances would be too small and refer too many new lesions).

Stored state: `meta_part` (JSON, goes to `model.json["referral"]`) and a few small tensors (go to
`model.safetensors` as extra tensors, names prefixed "referral.").
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold
from torch import nn

from melanoma.errors import ModelError

REASON_LOW_CONFIDENCE = "low confidence"
REASON_OOD = "not like the training images"
TENSOR_NAMES = ("mean", "components", "class_means", "precision", "score_scale")
_PREFIX = "referral."


# --------------------------------------------------------------------------------------------- features
def classifier_module(model: nn.Module) -> nn.Module:
    """The module whose INPUT is the pre-logit feature vector: timm's get_classifier(), else the last nn.Linear."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"cannot find the classifier of {type(model).__name__}: no get_classifier() and no nn.Linear")
    return linears[-1]


def embed(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on the normalised batch `x` [N,3,H,W]; return (features [N,D], logits [N,C]), no grad.

    The features are captured by a forward hook as the input of the classifier (pre-logits). Works for any
    model with a timm-style get_classifier() or a final nn.Linear. The hook is always removed.
    """
    captured: list[torch.Tensor] = []
    hook = classifier_module(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        hook.remove()
    if not captured:
        raise ModelError(f"the classifier of {type(model).__name__} was not called during forward")
    # The LAST call is the one that produced the logits (a module reused earlier would have been called first).
    features = captured[-1].flatten(1).float()
    return features, logits.float()


# --------------------------------------------------------------------------------------------- scores
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax(logits / temperature) along the last axis."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy E = -T * logsumexp(logits / T); HIGHER means less like the training data (Liu et al. 2020)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=-1, keepdims=True)
    return -float(temperature) * (m[:, 0] + np.log(np.exp(z - m).sum(axis=-1)))


def _fit_ood_stats(features: np.ndarray, labels: np.ndarray, pca_dims: int) -> dict[str, np.ndarray]:
    """PCA + per-class means + shared Ledoit-Wolf precision of the within-class scatter (all float64)."""
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    k = int(max(1, min(pca_dims, centred.shape[1], centred.shape[0] - 1)))
    # Rows of vt are the principal directions; SVD of the centred data avoids forming a DxD covariance.
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:k]
    z = centred @ components.T
    classes = np.unique(labels)
    class_means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    within = z - class_means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    return {"mean": mean, "components": components, "class_means": class_means, "precision": precision}


def _raw_ood_parts(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """[N,2]: (min over classes of the Mahalanobis distance in PCA space, norm of the PCA residual)."""
    centred = np.asarray(features, dtype=np.float64) - stats["mean"]
    z = centred @ stats["components"].T
    residual = np.linalg.norm(centred - z @ stats["components"], axis=1)
    diff = z[:, None, :] - stats["class_means"][None, :, :]              # [N, classes, k]
    d2 = np.einsum("nck,kl,ncl->nc", diff, stats["precision"], diff)
    return np.stack([np.sqrt(np.maximum(d2.min(axis=1), 0.0)), residual], axis=1)


def ood_score(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Out-of-distribution score [N]: standardised Mahalanobis distance + standardised residual norm.

    `stats["score_scale"]` = (mean, sd) of both parts on OUT-OF-FOLD validation data: in-sample residuals are
    near zero when PCA has few samples, so scaling by them would blow up every new image's score.
    """
    return _combine(_raw_ood_parts(features, stats), stats["score_scale"])


def _score_scale(parts: np.ndarray, features: np.ndarray) -> np.ndarray:
    """[mean0, sd0, mean1, sd1, residual_weight] from out-of-fold parts.

    The residual weight is 0 when PCA kept every dimension (residuals are float round-off, and standardising
    round-off would turn it into a random score).
    """
    typical_norm = np.linalg.norm(features - features.mean(axis=0), axis=1).mean() + 1e-12
    residual_weight = 1.0 if parts[:, 1].mean() > 1e-6 * typical_norm else 0.0
    return np.array([parts[:, 0].mean(), parts[:, 0].std() + 1e-12,
                     parts[:, 1].mean(), parts[:, 1].std() + 1e-12, residual_weight])


def _combine(parts: np.ndarray, scale) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64)
    return (parts[:, 0] - s[0]) / s[1] + s[4] * (parts[:, 1] - s[2]) / s[3]


def _out_of_fold_parts(features, labels, pca_dims: int, folds: int, seed: int) -> np.ndarray:
    """Raw OOD parts [N,2] of each validation sample from stats fitted WITHOUT it (honest threshold)."""
    parts = np.empty((len(features), 2))
    n_splits = int(max(2, min(folds, len(features))))
    for fit_idx, held_idx in KFold(n_splits, shuffle=True, random_state=seed).split(features):
        stats = _fit_ood_stats(features[fit_idx], labels[fit_idx], pca_dims)
        parts[held_idx] = _raw_ood_parts(features[held_idx], stats)
    return parts


# --------------------------------------------------------------------------------------------- fitting
def fit_referral(features: np.ndarray, logits: np.ndarray, labels: np.ndarray, temperature: float, *,
                 confidence_quantile: float = 0.05, ood_quantile: float = 0.975, pca_dims: int = 64,
                 folds: int = 5, seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """Calibrate both referral reasons on validation data.

    features [N,D] (pre-logits from `embed`), logits [N,C], labels [N] (int class indices), temperature (the
    fitted calibration temperature). Returns (meta_part for model.json["referral"], extra tensors for
    model.safetensors, named "referral.*"). Needs at least 4 validation samples.
    """
    features = np.asarray(features, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if not (len(features) == len(logits) == len(labels)) or len(features) < 4:
        raise ModelError(f"fit_referral needs >= 4 matching validation rows, got features {features.shape}, "
                         f"logits {logits.shape}, labels {labels.shape}")
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    refer_confidence = float(np.quantile(confidence, confidence_quantile))

    oof = _out_of_fold_parts(features, labels, pca_dims, folds, seed)
    scale = _score_scale(oof, features)
    oof_scores = _combine(oof, scale)
    ood_threshold = float(np.quantile(oof_scores, ood_quantile))
    stats = _fit_ood_stats(features, labels, pca_dims)
    stats["score_scale"] = scale

    low = confidence < refer_confidence
    ood = oof_scores > ood_threshold
    meta_part = {
        "method": "confidence+mahalanobis",
        "version": 1,
        "thresholds": {"refer_confidence": refer_confidence, "ood_score": ood_threshold},
        "confidence_quantile": confidence_quantile,
        "ood_quantile": ood_quantile,
        "pca_dims": int(stats["components"].shape[0]),
        "feature_dim": int(features.shape[1]),
        "temperature": float(temperature),
        "validation": _validation_summary(probs.argmax(axis=1) == labels, low, ood),
    }
    tensors = {_PREFIX + name: torch.from_numpy(np.ascontiguousarray(stats[name], dtype=np.float32))
               for name in TENSOR_NAMES}
    return meta_part, tensors


def _validation_summary(correct: np.ndarray, low: np.ndarray, ood: np.ndarray) -> dict:
    """Shares referred on validation and the accuracy of referred vs kept lesions (for the model card)."""
    refer = low | ood

    def acc(mask):
        return float(correct[mask].mean()) if mask.any() else None

    return {"n": int(len(correct)), "share_low_confidence": float(low.mean()), "share_ood": float(ood.mean()),
            "share_referred": float(refer.mean()), "accuracy_referred": acc(refer), "accuracy_kept": acc(~refer),
            "accuracy_all": float(correct.mean())}


# --------------------------------------------------------------------------------------------- deciding
class Referrer:
    """Applies a fitted referral (from model.json["referral"] + extra tensors) to new predictions."""

    def __init__(self, meta_part: dict | None, tensors: dict | None, fallback_confidence: float | None = None):
        self.meta = meta_part or {}
        thresholds = self.meta.get("thresholds", {})
        conf = thresholds.get("refer_confidence", fallback_confidence)
        self.refer_confidence = None if conf is None else float(conf)
        self.ood_threshold = thresholds.get("ood_score")
        self.stats = _find_stats(tensors or {}) if self.ood_threshold is not None else None
        if self.ood_threshold is not None and self.stats is None:
            raise ModelError("model.json has a referral 'ood_score' threshold but the model file lacks the "
                             "referral.* statistics tensors")

    @property
    def needs_features(self) -> bool:
        """True when the OOD check is active (the caller must pass pre-logit features)."""
        return self.stats is not None

    def decide(self, probs: np.ndarray, features: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
        """(refer [N] bool, reason [N] str: "", "low confidence", "not like the training images" or both "; ")."""
        n = len(probs)
        low = np.zeros(n, bool) if self.refer_confidence is None else probs.max(axis=1) < self.refer_confidence
        ood = np.zeros(n, bool)
        if self.stats is not None and features is not None:
            ood = ood_score(features, self.stats) > float(self.ood_threshold)
        reasons = ["; ".join(r for r, on in ((REASON_LOW_CONFIDENCE, lo), (REASON_OOD, od)) if on)
                   for lo, od in zip(low, ood)]
        return low | ood, reasons


def _find_stats(tensors: dict) -> dict[str, np.ndarray] | None:
    """Pick the referral.* tensors out of meta["extra"] (tolerates an "extra." prefix left on the names)."""
    out = {}
    for key, value in tensors.items():
        name = key[len("extra."):] if key.startswith("extra.") else key
        if name.startswith(_PREFIX):
            out[name[len(_PREFIX):]] = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value,
                                                  dtype=np.float64)
    return out if all(n in out for n in TENSOR_NAMES) else None
