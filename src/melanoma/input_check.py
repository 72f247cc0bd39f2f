"""Input check: is this picture plausibly a dermoscopic image at all? Two low-level statistics of the model input.

The feature-space referral (referral.py) misses inputs the network maps close to lesions: on the shipped model,
noise, text and checkerboards were referred 0-50% of the time. Two statistics of the (un-normalised) model input
separate them without any learning:

* `contrast`: standard deviation of the luminance (0-255). Blank or single-colour frames have ~0; the lowest
  0.1% of lesions are still well above it.
* `edge_ratio`: mean absolute 8-neighbour Laplacian of the luminance / (contrast + 1). Lesions are smooth at the
  pixel scale (dermoscopy: 0.1-0.8); sensor noise, printed text and fine patterns are dominated by pixel-scale
  edges (1.2-3.3 measured on bench/referral_check.py's synthetic inputs).

Each statistic is checked on ONE side only, the side that is about the content rather than the source: too little
contrast (a blank frame) and too many pixel-scale edges (noise, text). The other sides are properties of the
camera and the resizing: HAM10000's 200x150 images, upsampled to the model's size, are smoother than the
9-class copies, and a band fitted on one source's images referred 13% of them for a low edge ratio (measured on
the shipped model), which would refer real lesions at every clinic with other cameras.

`fit` takes the validation images' statistics: the maximum edge ratio is their `1 - quantile` quantile * `margin`
(defaults 0.1%, x1.25), the minimum contrast their `quantile` quantile / `contrast_margin` (default 4: faint
lesions exist, e.g. a HAM10000 image at contrast 4.2 when the 9-class minimum was 9.8; a blank frame is ~0), so
(almost) no lesion is referred for this reason. Natural photos and smooth gradients are NOT caught here (their statistics
look like lesions'); the feature-space check handles photos.
"""

from __future__ import annotations

import numpy as np

from melanoma.errors import ModelError

NAMES = ("contrast", "edge_ratio")
REASON = "not like a dermoscopic image"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)


def statistics(x, preprocessing: dict) -> np.ndarray:
    """[N, 2] (contrast, edge_ratio) of a normalised model-input batch x [N, 3, H, W] (numpy or torch; the eval
    preset's output), computed on the pixels before normalisation (0-255), so they do not depend on the model's
    mean and std. numpy only (float32 like the model input): ONNX prediction never imports torch."""
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip(x * std + mean, 0.0, 1.0) * np.float32(255.0)
    luma = (pixels * _LUMA).sum(axis=1)                                   # [N, H, W]
    contrast = luma.reshape(len(luma), -1).std(axis=1, ddof=1)            # ddof=1: torch.std's unbiased default
    edges = np.abs(_laplacian(luma)).reshape(len(luma), -1).mean(axis=1)
    return np.stack([contrast, edges / (contrast + 1.0)], axis=1).astype(np.float64)


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """8-neighbour Laplacian [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] of [N, H, W], valid region only [N, H-2, W-2]."""
    h, w = luma.shape[1:]
    centre = luma[:, 1:h - 1, 1:w - 1]
    neighbours = sum(luma[:, dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3)
                     if (dy, dx) != (1, 1))
    return 8.0 * centre - neighbours


def fit(stats: np.ndarray, quantile: float = 0.001, margin: float = 1.25, contrast_margin: float = 4.0) -> dict:
    """The limits from validation images' `stats` [N, 2] (JSON-able, stored in model.json)."""
    stats = np.asarray(stats, dtype=np.float64)
    return {"statistics": list(NAMES),
            "min_contrast": float(np.quantile(stats[:, 0], quantile) / contrast_margin),
            "max_edge_ratio": float(np.quantile(stats[:, 1], 1.0 - quantile) * margin), "quantile": quantile,
            "margin": margin, "contrast_margin": contrast_margin}


def limits(fitted: dict) -> tuple[float, float]:
    """(min_contrast, max_edge_ratio) of a fitted check. Models fitted by the first, two-sided version (a "low" and
    a "high" list) are read one-sided too: their lower contrast and upper edge-ratio limits."""
    if "min_contrast" in fitted:
        return float(fitted["min_contrast"]), float(fitted["max_edge_ratio"])
    if "low" in fitted and "high" in fitted:
        return float(fitted["low"][0]), float(fitted["high"][1])
    raise ModelError(f"model.json referral.input_check has neither min_contrast nor low/high: {sorted(fitted)}")


def outside(stats: np.ndarray, fitted: dict) -> np.ndarray:
    """[N] bool: too little contrast or too many pixel-scale edges for a dermoscopic image."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, len(NAMES))
    min_contrast, max_edge_ratio = limits(fitted)
    return (stats[:, 0] < min_contrast) | (stats[:, 1] > max_edge_ratio)
