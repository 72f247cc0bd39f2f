"""Referral: decide when the model should NOT be trusted and a dermatologist must look anyway.

Independent reasons, each calibrated on the validation set by training (`fit_referral`, `input_check.fit`):

* "low confidence": the top softmax probability (after temperature scaling) is below
  `thresholds.refer_confidence` = the `confidence_quantile` (default 1%; 5% up to session 12) quantile of
  validation confidences, so about 1% of validation lesions are referred for this reason -- those are also where
  the model is wrong most often (the achieved accuracies are recorded in `meta["referral"]["validation"]`).
* "not like the training images": out-of-distribution input (a photo, a screenshot, noise...). Score = the
  larger of two robustly standardised scores (either may raise the alarm; a sum would let one dilute the other) (median / IQR on validation): the energy of the logits (Liu et al. 2020;
  meant for inputs on which the network responds weakly; on the shipped model noise and text still pass, README), and the class-conditional Mahalanobis distance (Lee et al. 2018: per-class means, one shared within-class covariance)
  of the pre-logit features, the covariance Ledoit-Wolf-shrunk and stored as its top 64 eigenpairs plus one
  variance for the remaining directions (probabilistic-PCA style: small, close to the full-dimensional distance;
  plain "PCA to 64 dims" separated noise/photos from lesions much worse because they differ mostly OUTSIDE the
  64 lesion directions). Threshold = the `ood_quantile` (default 99.5%; 97.5% up to session 12) quantile of
  *out-of-fold* validation scores (5-fold cross-fitting): in-sample distances are too small and would refer too
  many new lesions. Why 1% and 99.5%: the non-dermoscopic inputs score far beyond either limit, but a new clinic's
  lesions are both less confident and a little farther than the training sources' own; three Lite0 seeds trained on
  HAM10000 alone referred 14.5-35.8% of a never-seen source's lesions at 5% / 97.5%, 2.2-8.5% at 1% / 99.5%,
  while still referring 98-100% of the non-dermoscopic inputs (docs/results.md). `melanoma referral` re-fits an
  existing model's limits (referral_refit.py).
  Version 3 adds a third score to the maximum: the same distance on the channel means and standard deviations
  of one intermediate layer per network (`tap_layers`: the second-to-last stage of an EfficientNet, Lite0's
  `blocks.5`). The pre-logit features of a trained classifier describe the lesion classes only, so gradients,
  checkerboards and natural photos that happen to land among them passed (66% of the bench's non-dermoscopic
  inputs referred by the shipped ensemble); the intermediate statistics still describe texture and colour and
  catch them (100%), at +0.3% of a never-seen source's lesions (docs/results.md). Earlier stages describe the
  camera: they referred most lesions of a new source.

Several sources ("worst source"): when the validation images come from two or more sources with at least
`min_source_images` each, both thresholds are the per-source quantiles of the source that needs the most lenient
one (lowest confidence limit, highest OOD limit), so that no source has more than its nominal share referred. A
pooled quantile is set by the largest source: on the shipped ensemble (1,639 HAM10000 + 398 older-archive
validation images) it referred 20% of the older archive's lesions out of fold and 4% of HAM10000's -- and a new
clinic is at least as far from the training images as a training source's own held-out lesions.

* "not like a dermoscopic image": too little luminance contrast (a blank frame) or too many pixel-scale edges
  (noise, text) for the validation images (input_check.py), which the feature-space score misses. Only models
  fitted with it (`meta["referral"]["input_check"]`) use it.

Stored state: `meta_part` (JSON, goes to `model.json["referral"]`) and a few small tensors (go to
`model.safetensors` as extra tensors, names prefixed "referral.").

Deciding (`Referrer`) is numpy only: torch and scikit-learn are imported by the functions that embed and fit, so
ONNX prediction never loads them.
"""

from __future__ import annotations

import numpy as np

from melanoma import input_check
from melanoma.errors import ModelError

REASON_LOW_CONFIDENCE = "low confidence"
REASON_OOD = "not like the training images"
TENSOR_NAMES = ("class_means", "components", "variances", "residual_variance")
_PREFIX = "referral."
_LAYER_PREFIX = "referral.layers."  # the intermediate-layer distance's statistics (version 3)
METHOD = "confidence+mahalanobis-ppca-ledoit-wolf+energy"
METHOD_LAYERS = "confidence+mahalanobis-ppca-ledoit-wolf(pre-logits, layer statistics)+energy"
METHOD_VERSION = 3  # version 2 (no layer distance) and 1 (no energy term) models still load and use what they have


# --------------------------------------------------------------------------------------------- features
def classifier_module(model: nn.Module) -> nn.Module:
    """The module whose INPUT is the pre-logit feature vector: timm's get_classifier(), else the last nn.Linear."""
    from torch import nn

    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"cannot find the classifier of {type(model).__name__}: no get_classifier() and no nn.Linear")
    return linears[-1]


def tap_layers(model: nn.Module) -> list[str]:
    """Names of the submodules whose output statistics join the referral features, one per network inside
    `model` (several for an ensemble): the second-to-last stage of a timm-style `blocks` sequence (Lite0:
    `blocks.5`, 192 channels at 1/16 of the input), or a module's own `referral_tap` (seed-cnn). Empty for
    anything else: the referral then uses the pre-logit features alone."""
    from torch import nn

    names = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.Sequential) and len(blocks) >= 4:
            names.append(f"{prefix}blocks.{len(blocks) - 2}")
        elif isinstance(getattr(module, "referral_tap", None), str):
            names.append(prefix + module.referral_tap)
    return names


def capture(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D], logits [N, C]) of one forward pass, gradients as the caller has them: the input of the
    classifier (pre-logits), then for each of `layers` (submodule names) the channel means and standard
    deviations of its output [N, 2 * channels]. Forward hooks, always removed; ONNX export traces this same
    function, so the exported "features" output is these features by construction."""
    import torch

    captured: list[torch.Tensor] = []
    taps: dict[str, torch.Tensor] = {}

    def layer_hook(name):
        def hook(_module, _inputs, out):
            taps[name] = torch.cat([out.mean((2, 3)), out.std((2, 3))], 1)  # the last call wins, like `captured`
        return hook

    hooks = [classifier_module(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))]
    try:
        for name in layers:
            hooks.append(_submodule(model, name).register_forward_hook(layer_hook(name)))
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not captured:
        raise ModelError(f"the classifier of {type(model).__name__} was not called during forward")
    # The LAST call is the one that produced the logits (a module reused earlier would have been called first).
    parts = [captured[-1].flatten(1)]
    for name in layers:
        if name not in taps:
            raise ModelError(f"the layer {name!r} of {type(model).__name__} was not called during forward")
        parts.append(taps[name])
    return torch.cat(parts, 1), logits


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"the referral reads the layer {name!r}, which {type(model).__name__} does not have: "
                         "the model file does not match its model.json") from None


def layers_of(meta: dict) -> list[str]:
    """The layers a model's fitted referral reads (model.json `referral.layers`; none before version 3): what
    `embed` and the ONNX export must append to the features."""
    return list((meta.get("referral") or {}).get("layers") or [])


def layer_width(model: nn.Module, layers, image_size: int) -> int:
    """How many feature columns the statistics of `layers` add (`fit_referral`'s layer_dim): one dry forward."""
    import torch

    if not layers:
        return 0
    was_training = model.training
    x = torch.zeros(2, 3, int(image_size), int(image_size))
    with torch.no_grad():
        width = capture(model.eval(), x, layers)[0].shape[1] - capture(model, x)[0].shape[1]
    model.train(was_training)
    return int(width)


def embed(model: nn.Module, x: torch.Tensor, layers=()) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` on the normalised batch `x` [N,3,H,W]; return (features [N,D], logits [N,C]) as float32, no
    grad. Features: pre-logits (the input of timm-style get_classifier() or the final nn.Linear), then the
    statistics of `layers` (`capture`; a model's fitted referral names them: `Referrer.layers`)."""
    import torch

    with torch.no_grad():
        features, logits = capture(model, x, layers)
    return features.float(), logits.float()


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
    """Class means + a Ledoit-Wolf-shrunk shared within-class covariance, kept as its top `pca_dims`
    eigenvectors/eigenvalues plus ONE variance for all other directions (probabilistic-PCA style), so the stored
    statistics are small ([k, D]) while distances stay close to the full-dimensional Mahalanobis distance."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    class_means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    within = features - class_means[np.searchsorted(classes, labels)]
    n, dim = within.shape
    shrinkage = float(ledoit_wolf_shrinkage(within, assume_centered=True))
    # Eigen-decomposition of S = within.T @ within / n via the SVD of `within` (never forms a D x D matrix).
    _, sing, vt = np.linalg.svd(within, full_matrices=False)
    eig = sing ** 2 / n
    mu = eig.sum() / dim                                      # trace(S) / D: the shrinkage target's variance
    k = int(max(1, min(pca_dims, len(eig))))
    variances = (1 - shrinkage) * eig[:k] + shrinkage * mu    # eigenvalues of (1-a) S + a mu I
    rest = dim - k
    residual_variance = ((1 - shrinkage) * eig[k:].sum() + shrinkage * mu * rest) / rest if rest else 1.0
    return {"class_means": class_means, "components": vt[:k], "variances": np.maximum(variances, 1e-12),
            "residual_variance": np.array([max(residual_variance, 1e-12)])}


def ood_score(features: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """Out-of-distribution score [N]: min over classes of the (shrunk, PPCA-approximated) Mahalanobis distance.

    d_c^2 = sum_i (v_i . (x - m_c))^2 / var_i + ||residual of x - m_c outside the k components||^2 / var_rest
    """
    x = np.asarray(features, dtype=np.float64)
    means, comps = stats["class_means"], stats["components"]
    # Expand ||x - m||^2 and V(x - m) so no [N, classes, D] array is built (memory for big batches).
    sq = (x ** 2).sum(1)[:, None] - 2 * x @ means.T + (means ** 2).sum(1)[None, :]     # [N, classes]
    z = (x @ comps.T)[:, None, :] - (means @ comps.T)[None, :, :]                        # [N, classes, k]
    in_span = (z ** 2 / stats["variances"]).sum(-1)
    residual = np.maximum(sq - (z ** 2).sum(-1), 0.0) / float(np.ravel(stats["residual_variance"])[0])
    return np.sqrt(np.maximum(in_span + residual, 0.0).min(axis=1))


def _out_of_fold_scores(features, labels, pca_dims: int, folds: int, seed: int) -> np.ndarray:
    """OOD score of each validation sample from statistics fitted WITHOUT it. In-sample distances are much
    smaller (measured 2.5x for 1280-d features and ~300 samples), so a threshold on them would refer far too
    many new lesions."""
    from sklearn.model_selection import KFold

    scores = np.empty(len(features))
    n_splits = int(max(2, min(folds, len(features))))
    for fit_idx, held_idx in KFold(n_splits, shuffle=True, random_state=seed).split(features):
        stats = _fit_ood_stats(features[fit_idx], labels[fit_idx], pca_dims)
        scores[held_idx] = ood_score(features[held_idx], stats)
    return scores


def _robust_scale(scores: np.ndarray) -> list[float]:
    """[median, IQR / 1.349] (the IQR of a normal distribution is 1.349 sd); scale floored to stay positive."""
    q25, q50, q75 = np.quantile(np.asarray(scores, dtype=np.float64), [0.25, 0.5, 0.75])
    return [float(q50), float(max((q75 - q25) / 1.349, 1e-6))]


def combined_ood_score(distance: np.ndarray, energy: np.ndarray, normalisation: dict,
                       layer_distance: np.ndarray | None = None) -> np.ndarray:
    """The largest of the robustly standardised pre-logit distance, energy and (version 3) intermediate-layer
    distance (HIGHER = less like training data)."""
    (m_d, s_d), (m_e, s_e) = normalisation["mahalanobis"], normalisation["energy"]
    score = np.maximum((np.asarray(distance) - m_d) / s_d, (np.asarray(energy) - m_e) / s_e)
    if layer_distance is not None:
        m_l, s_l = normalisation["layers"]
        score = np.maximum(score, (np.asarray(layer_distance) - m_l) / s_l)
    return score


# --------------------------------------------------------------------------------------------- fitting
def fit_referral(features: np.ndarray, logits: np.ndarray, labels: np.ndarray, temperature: float, *,
                 confidence_quantile: float = 0.01, ood_quantile: float = 0.995, pca_dims: int = 64,
                 folds: int = 5, seed: int = 0, sources=None, min_source_images: int = 50,
                 layers=(), layer_dim: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """Calibrate both referral reasons on validation data.

    features [N,D] (from `embed`: pre-logits, then `layer_dim` columns of statistics of `layers`), logits [N,C],
    labels [N] (int class indices), temperature (the fitted calibration temperature), sources [N] (optional source
    name per image: worst-source thresholds, see the module docstring). Returns (meta_part for
    model.json["referral"], extra tensors for model.safetensors, named "referral.*"). Needs >= 4 validation samples.
    """
    import torch

    features = np.asarray(features, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    layers, layer_dim = list(layers), int(layer_dim)
    if not (len(features) == len(logits) == len(labels)) or len(features) < 4:
        raise ModelError(f"fit_referral needs >= 4 matching validation rows, got features {features.shape}, "
                         f"logits {logits.shape}, labels {labels.shape}")
    if bool(layers) != (layer_dim > 0) or not 0 <= layer_dim < features.shape[1]:
        raise ModelError(f"fit_referral: {layer_dim} layer-statistics columns for layers {layers} of "
                         f"{features.shape[1]} features")
    pre_logits, layer_stats = _split_features(features, layer_dim)
    probs = softmax(logits, temperature)
    confidence = probs.max(axis=1)
    oof_distance = _out_of_fold_scores(pre_logits, labels, pca_dims, folds, seed)
    energy = energy_score(logits, temperature)
    normalisation = {"mahalanobis": _robust_scale(oof_distance), "energy": _robust_scale(energy)}
    oof_layers = None
    if layer_dim:
        oof_layers = _out_of_fold_scores(layer_stats, labels, pca_dims, folds, seed)
        normalisation["layers"] = _robust_scale(oof_layers)
    oof_scores = combined_ood_score(oof_distance, energy, normalisation, oof_layers)
    groups = _source_groups(sources, len(features), min_source_images)
    # worst source: the lowest confidence limit and the highest OOD limit of the sources (pooled: one group)
    refer_confidence = min(float(np.quantile(confidence[m], confidence_quantile)) for _, m in groups)
    ood_threshold = max(float(np.quantile(oof_scores[m], ood_quantile)) for _, m in groups)
    stats = _fit_ood_stats(pre_logits, labels, pca_dims)

    low = confidence < refer_confidence
    ood = oof_scores > ood_threshold
    correct = probs.argmax(axis=1) == labels
    meta_part = {
        "method": METHOD_LAYERS if layer_dim else METHOD,
        "version": METHOD_VERSION if layer_dim else 2,
        "score_normalisation": normalisation,
        "thresholds": {"refer_confidence": refer_confidence, "ood_score": ood_threshold},
        "confidence_quantile": confidence_quantile,
        "ood_quantile": ood_quantile,
        "folds": folds, "fold_seed": seed,  # the out-of-fold split: a re-fit (referral_refit.py) repeats it
        "pca_dims": int(stats["components"].shape[0]),
        "feature_dim": int(features.shape[1]),
        "temperature": float(temperature),
        "threshold_policy": "worst source" if len(groups) > 1 else "pooled",
        "validation": _validation_summary(correct, low, ood),
    }
    if layer_dim:
        meta_part.update(layers=layers, layer_dim=layer_dim)
    if sources is not None:
        meta_part["validation"]["by_source"] = {name: _validation_summary(correct[m], low[m], ood[m])
                                                for name, m in source_masks(sources)}
    tensors = _stat_tensors(stats, _PREFIX)
    if layer_dim:
        tensors.update(_stat_tensors(_fit_ood_stats(layer_stats, labels, pca_dims), _LAYER_PREFIX))
    return meta_part, tensors


def _split_features(features: np.ndarray, layer_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pre-logit features, layer statistics or None): the last `layer_dim` columns are the layers'."""
    if not layer_dim:
        return features, None
    return features[:, :-layer_dim], features[:, -layer_dim:]


def _stat_tensors(stats: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    import torch

    return {prefix + name: torch.from_numpy(np.ascontiguousarray(stats[name], dtype=np.float32))
            for name in TENSOR_NAMES}


def source_masks(sources):
    """(source name, boolean mask of its rows) for each source, in name order."""
    sources = np.asarray(sources)
    for name in sorted(set(sources.tolist())):
        yield str(name), sources == name


def _source_groups(sources, n: int, min_images: int) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of each source with at least `min_images` validation images when there are two or more such
    sources; otherwise one pooled group of all images."""
    if sources is not None:
        if len(sources) != n:
            raise ModelError(f"fit_referral: {len(sources)} source names for {n} validation rows")
        groups = [(name, mask) for name, mask in source_masks(sources) if mask.sum() >= min_images]
        if len(groups) > 1:
            return groups
    return [("all", np.ones(n, bool))]


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
        self.layer_dim = int(self.meta.get("layer_dim") or 0)
        self.stats = self.layer_stats = None
        if self.ood_threshold is not None:
            self.stats = self._required_stats(tensors, _PREFIX)
            if self.layer_dim:
                self.layer_stats = self._required_stats(tensors, _LAYER_PREFIX)

    def _required_stats(self, tensors: dict | None, prefix: str) -> dict[str, np.ndarray]:
        stats = _find_stats(tensors or {}, prefix)
        if stats is None:
            raise ModelError(f"model.json has a referral 'ood_score' threshold but the model file lacks the "
                             f"statistics tensors {prefix}{{{', '.join(TENSOR_NAMES)}}} (referral method "
                             f"{self.meta.get('method')!r}, this package fits {METHOD_LAYERS!r}): retrain the model")
        return stats

    @property
    def layers(self) -> list[str]:
        """The layers whose statistics the features must end with (`embed(model, x, referrer.layers)`)."""
        return list(self.meta.get("layers") or []) if self.stats is not None else []

    @property
    def needs_features(self) -> bool:
        """True when the OOD check is active (the caller must pass pre-logit features)."""
        return self.stats is not None

    def out_of_distribution(self, features: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
        """OOD score [N] as fitted: distances + energy (versions 2-3), or the distance alone (version 1 models)."""
        features = np.asarray(features)
        expected = self.meta.get("feature_dim")
        if expected is not None and features.shape[1] != int(expected):
            raise ModelError(f"the model emits {features.shape[1]} referral features but its referral was fitted on "
                             f"{expected} (an ONNX file exported before the referral was refitted?): export again")
        pre_logits, layer_stats = _split_features(features, self.layer_dim)
        distance = ood_score(pre_logits, self.stats)
        normalisation = self.meta.get("score_normalisation")
        if normalisation is None:
            return distance
        if logits is None:
            raise ModelError("this model's referral combines distance and energy: decide() needs the logits")
        layer_distance = ood_score(layer_stats, self.layer_stats) if self.layer_dim else None
        return combined_ood_score(distance, energy_score(logits, float(self.meta.get("temperature", 1.0))),
                                  normalisation, layer_distance)

    def decide(self, probs: np.ndarray, features: np.ndarray | None, logits: np.ndarray | None = None,
               image_stats: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
        """(refer [N] bool, reason [N] str: "", or the reasons that apply joined by "; ").
        `features`, `logits`: of the un-augmented view (from `embed`); without features only confidence counts.
        `image_stats`: input_check.statistics of the model input (used when the model was fitted with them)."""
        n = len(probs)
        low = np.zeros(n, bool) if self.refer_confidence is None else probs.max(axis=1) < self.refer_confidence
        ood = np.zeros(n, bool)
        if self.stats is not None and features is not None:
            ood = self.out_of_distribution(features, logits) > float(self.ood_threshold)
        bad_input = np.zeros(n, bool)
        if self.meta.get("input_check") and image_stats is not None:
            bad_input = input_check.outside(image_stats, self.meta["input_check"])
        reasons = ["; ".join(r for r, on in ((input_check.REASON, bad), (REASON_LOW_CONFIDENCE, lo),
                                             (REASON_OOD, od)) if on)
                   for bad, lo, od in zip(bad_input, low, ood)]
        return low | ood | bad_input, reasons


def _find_stats(tensors: dict, prefix: str = _PREFIX) -> dict[str, np.ndarray] | None:
    """Pick the `prefix`* tensors out of meta["extra"] (tolerates an "extra." prefix left on the names)."""
    out = {}
    for key, value in tensors.items():
        name = key[len("extra."):] if key.startswith("extra.") else key
        if name.startswith(prefix) and name[len(prefix):] in TENSOR_NAMES:
            # a torch tensor (model.safetensors) or a numpy array (ONNX metadata, read without torch)
            out[name[len(prefix):]] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                                                 dtype=np.float64)
    return out if all(n in out for n in TENSOR_NAMES) else None


# --------------------------------------------------------------------------------------------- measuring
def _natural_photos() -> list:
    """Non-medical photos shipped inside installed packages (offline): scikit-learn's china/flower samples
    and matplotlib's grace_hopper.jpg / Minduka_Present_Blue_Pack.png. Missing ones are skipped."""
    from PIL import Image

    photos = []
    try:
        from sklearn.datasets import load_sample_image

        photos += [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    except Exception:  # noqa: BLE001 - optional sample data
        pass
    try:
        from matplotlib import cbook

        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"):
            with cbook.get_sample_data(name) as fh:
                photos.append(Image.open(fh).convert("RGB"))
    except Exception:  # noqa: BLE001 - optional sample data
        pass
    return photos


def _text_image(rng, size: int):
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(10, size // 12))
    words = ["invoice", "total", "patient", "lorem ipsum", "dolor sit", "amet", "2024-01-31", "page 1"]
    for row in range(0, size, max(12, size // 9)):
        draw.text((4, row), " ".join(rng.choice(words, 3)), fill=tuple(int(v) for v in rng.integers(0, 80, 3)),
                  font=font)
    return im


def synthetic_ood_images(size: int = 224, per_kind: int = 8, seed: int = 0) -> list[tuple[str, object]]:
    """Non-dermoscopic test inputs [(kind, PIL RGB image)]: Gaussian / uniform noise, text renders, plain
    colours, gradients, checkerboards, and random crops of natural photos shipped with installed packages.
    Used to MEASURE the "not like the training images" referral (tests, bench/referral_check.py)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    for _ in range(per_kind):
        out.append(("gaussian noise", np.clip(rng.normal(128, 50, (size, size, 3)), 0, 255)))
        out.append(("uniform noise", rng.uniform(0, 255, (size, size, 3))))
        out.append(("plain colour", np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3))))
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        t = (xx * np.cos(rng.uniform(0, np.pi)) + yy * np.sin(rng.uniform(0, np.pi)))[..., None]
        out.append(("gradient", a + (b - a) * (t - t.min()) / (np.ptp(t) + 1e-9)))
        cell = int(rng.integers(4, max(5, size // 4)))
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2)[..., None]
        out.append(("checkerboard", np.where(board, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))))
        out.append(("text", _text_image(rng, size)))
    out = [(k, v if isinstance(v, Image.Image) else Image.fromarray(np.asarray(v).astype(np.uint8)))
           for k, v in out]
    for photo in _natural_photos():
        for _ in range(per_kind):
            side = int(rng.integers(min(photo.size) // 3, min(photo.size) + 1))
            x0, y0 = (int(rng.integers(0, s - side + 1)) for s in photo.size)
            out.append(("natural photo", photo.crop((x0, y0, x0 + side, y0 + side)).resize((size, size))))
    return out
