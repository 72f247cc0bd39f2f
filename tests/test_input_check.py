"""Input check: pixel statistics keep real dermoscopy in band and put noise, text and blank frames outside."""

from __future__ import annotations

import numpy as np
import torch

from melanoma import input_check, referral
from melanoma.data import discover, load_image
from melanoma.models import default_preprocessing
from melanoma.transforms import eval_transform, prepare_image

PRE = default_preprocessing("efficientnet_lite0", image_size=96)


def _batch(images) -> torch.Tensor:
    transform = eval_transform(PRE)
    return torch.stack([transform(prepare_image(im, PRE)) for im in images])


def test_lesions_stay_in_band_and_non_dermoscopic_inputs_fall_outside(tiny_isic, ham_dir):
    lesions = [load_image(s.path) for s in discover(tiny_isic).samples]
    fitted = input_check.fit(input_check.statistics(_batch(lesions), PRE))
    assert fitted["statistics"] == ["contrast", "edge_ratio"] and fitted["min_contrast"] > 0
    # lesions of another source and camera (HAM10000, 200x150, smoother once resized) pass: only the
    # content-related side of each statistic is checked (a two-sided band referred 13% of them)
    other_source = [load_image(p) for p in sorted((ham_dir / "images").glob("*.jpg"))[:60]]
    assert not input_check.outside(input_check.statistics(_batch(other_source), PRE), fitted).any()
    inputs = referral.synthetic_ood_images(size=96, per_kind=4, seed=1)
    flagged = input_check.outside(input_check.statistics(_batch([im for _, im in inputs]), PRE), fitted)
    by_kind = {}
    for (kind, _), hit in zip(inputs, flagged):
        by_kind.setdefault(kind, []).append(hit)
    for kind in ("gaussian noise", "uniform noise", "plain colour"):
        assert all(by_kind[kind]), kind


def test_statistics_do_not_depend_on_the_normalisation():
    rng = np.random.default_rng(0)
    x01 = torch.from_numpy(rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32))
    pre_a = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    pre_b = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    norm = lambda pre: (x01 - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)  # noqa: E731
    np.testing.assert_allclose(input_check.statistics(norm(pre_a), pre_a), input_check.statistics(norm(pre_b), pre_b),
                               rtol=1e-4)


def test_referrer_names_the_reason_only_for_models_fitted_with_it():
    fitted = {"statistics": list(input_check.NAMES), "min_contrast": 5.0, "max_edge_ratio": 1.0}
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    stats = np.array([[30.0, 0.3], [20.0, 3.0], [0.5, 0.0], [120.0, 0.01]])  # lesion, noise, blank, smooth+contrasty
    probs = np.repeat(probs[:1], 4, axis=0)
    refer, reasons = referral.Referrer({"input_check": fitted}, None).decide(probs, None, None, stats)
    assert refer.tolist() == [False, True, True, False] and reasons[:2] == ["", input_check.REASON]
    refer, _ = referral.Referrer({}, None).decide(probs, None, None, stats)  # older model: no input check
    assert not refer.any()


def test_models_fitted_by_the_two_sided_version_still_load():
    old = {"statistics": list(input_check.NAMES), "low": [5.0, 0.2], "high": [90.0, 2.0]}
    stats = np.array([[30.0, 0.1], [30.0, 2.5], [3.0, 0.3]])  # smooth lesion, noisy, blank
    assert input_check.outside(stats, old).tolist() == [False, True, True]
