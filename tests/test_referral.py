"""Referral: feature capture (`embed`), calibration (`fit_referral`) and the decision (`Referrer`)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from melanoma import referral
from melanoma.errors import ModelError


def _tiny_cnn(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, num_classes)).eval()


def test_embed_captures_input_of_last_linear():
    model = _tiny_cnn()
    x = torch.randn(2, 3, 16, 16)
    features, logits = referral.embed(model, x)
    expected_features = model[:-1](x)
    assert features.shape == (2, 6) and logits.shape == (2, 3)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(logits, model(x))
    assert not model[-1]._forward_hooks, "the hook must be removed"


def test_embed_uses_timm_get_classifier():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=5).eval()
    features, logits = referral.embed(model, torch.randn(2, 3, 32, 32))
    assert features.shape == (2, model.num_features) and logits.shape == (2, 5)
    torch.testing.assert_close(model.get_classifier()(features), logits)


def test_tap_layers_name_one_intermediate_stage_per_network():
    from melanoma.ensemble import EnsembleNet
    from melanoma.models import create_model

    lite0 = create_model("efficientnet_lite0", num_classes=9, pretrained=False)
    assert referral.tap_layers(lite0) == ["blocks.5"]  # of 7 stages: the second-to-last (192 channels)
    pair = EnsembleNet([create_model("seed-cnn", 9, image_size=64) for _ in range(2)], 64)
    assert referral.tap_layers(pair) == ["members.0.features.12", "members.1.features.12"]
    assert referral.tap_layers(_tiny_cnn()) == []


def test_embed_appends_layer_means_and_standard_deviations():
    model = _tiny_cnn()
    x = torch.randn(2, 3, 16, 16)
    features, logits = referral.embed(model, x, ["1"])  # the ReLU after the conv: 4 channels
    out = model[1](model[0](x))
    torch.testing.assert_close(features[:, :6], model[:-1](x))
    torch.testing.assert_close(features[:, 6:], torch.cat([out.mean((2, 3)), out.std((2, 3))], 1))
    assert referral.layer_width(model, ["1"], 16) == 8 and referral.layer_width(model, [], 16) == 0
    assert not model[1]._forward_hooks and not model[-1]._forward_hooks
    with pytest.raises(ModelError, match="'9'"):
        referral.embed(model, x, ["9"])


def test_layer_distance_refers_inputs_that_only_intermediate_layers_tell_apart():
    """Version 3: pre-logits like validation (the classifier maps the odd input among the lesions) but layer
    statistics far off (texture/colour: a gradient, a photo) -> referred; the version-2 referral misses it."""
    features, logits, labels, centres = _clusters()
    rng = np.random.default_rng(7)
    stats = rng.normal(0, 1, (len(labels), 8))
    both = np.hstack([features, stats])
    meta, tensors = referral.fit_referral(both, logits, labels, 1.0, layers=["blocks.5"], layer_dim=8)
    json.dumps(meta)
    assert meta["version"] == 3 and meta["layers"] == ["blocks.5"] and meta["feature_dim"] == 40
    assert {"referral.layers." + n for n in referral.TENSOR_NAMES} <= set(tensors)
    assert meta["validation"]["share_referred"] <= 0.12
    referrer = referral.Referrer(meta, tensors)
    assert referrer.layers == ["blocks.5"]
    odd = np.hstack([centres[labels[:20]] + rng.normal(0, 1, (20, 32)), rng.normal(0, 1, (20, 8)) * 8 + 10])
    refer, reasons = referrer.decide(referral.softmax(logits[:20]), odd, logits[:20])
    assert refer.all() and all(referral.REASON_OOD in r for r in reasons)
    plain, plain_tensors = referral.fit_referral(features, logits, labels, 1.0)
    assert plain["version"] == 2 and "layers" not in plain and referral.Referrer(plain, plain_tensors).layers == []
    refer, _ = referral.Referrer(plain, plain_tensors).decide(referral.softmax(logits[:20]), odd[:, :32],
                                                              logits[:20])
    assert refer.mean() < 0.3
    with pytest.raises(ModelError, match="emits 32 referral features but its referral was fitted on 40"):
        referrer.decide(referral.softmax(logits[:20]), odd[:, :32], logits[:20])
    with pytest.raises(ModelError, match="layer-statistics columns"):
        referral.fit_referral(both, logits, labels, 1.0, layers=["blocks.5"], layer_dim=0)
    with pytest.raises(ModelError, match="referral.layers"):
        referral.Referrer(meta, {k: v for k, v in tensors.items() if not k.startswith("referral.layers.")})


def test_embed_without_classifier_is_a_model_error():
    with pytest.raises(ModelError, match="classifier"):
        referral.embed(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.randn(1, 3, 4, 4))


def _clusters(n_per_class=200, dim=32, classes=3, seed=0):
    """Gaussian class clusters in feature space, logits that mostly agree with the labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), dim))
    logits = rng.normal(0, 1, (len(labels), classes)) + 3 * np.eye(classes)[labels]
    return features, logits, labels, centres


@pytest.mark.parametrize("pca_dims", [64, 8], ids=["all-dims", "pca+residual"])
def test_fit_referral_refers_a_modest_share_of_validation_and_far_inputs(pca_dims):
    features, logits, labels, centres = _clusters()
    # the quantiles of sessions 9-12 (5% / 97.5%), under which the mechanisms below were designed
    meta, tensors = referral.fit_referral(features, logits, labels, temperature=1.5, pca_dims=pca_dims,
                                          confidence_quantile=0.05, ood_quantile=0.975)
    json.dumps(meta)  # must be storable in model.json
    val = meta["validation"]
    assert 0.03 <= val["share_low_confidence"] <= 0.07
    assert val["share_ood"] <= 0.06 and val["share_referred"] <= 0.12
    lenient, lenient_tensors = referral.fit_referral(features, logits, labels, temperature=1.5, pca_dims=pca_dims)
    assert lenient["confidence_quantile"] == 0.01 and lenient["ood_quantile"] == 0.995  # the defaults (session 13)
    assert lenient["validation"]["share_referred"] <= 0.04
    assert set(tensors) == {"referral." + n for n in referral.TENSOR_NAMES}
    assert all(t.dtype == torch.float32 for t in tensors.values())

    referrer = referral.Referrer(meta, {"extra." + k: v for k, v in tensors.items()})
    _, new_l, _, _ = _clusters(seed=1)
    new_f = centres[labels] + np.random.default_rng(2).normal(0, 1, features.shape)
    refer, _ = referrer.decide(referral.softmax(new_l, 1.5), new_f, new_l)
    assert refer.mean() <= 0.15, "fresh in-distribution samples must rarely be referred"

    far = np.random.default_rng(3).normal(0, 1, (20, 32)) * 10 + 40
    refer, reasons = referrer.decide(referral.softmax(new_l[:20], 1.5), far, new_l[:20])
    assert refer.all() and all(referral.REASON_OOD in r for r in reasons)
    lenient_referrer = referral.Referrer(lenient, {"extra." + k: v for k, v in lenient_tensors.items()})
    assert lenient_referrer.decide(referral.softmax(new_l[:20], 1.5), far, new_l[:20])[0].all()

    # a weak network response (all logits near 0: high energy) on lesion-like features is referred too
    flat = np.random.default_rng(4).normal(0, 0.01, new_l[:20].shape)
    ood = referrer.out_of_distribution(new_f[:20], flat) > meta["thresholds"]["ood_score"]
    assert ood.mean() >= 0.9
    with pytest.raises(ModelError, match="needs the logits"):
        referrer.decide(referral.softmax(new_l, 1.5), new_f)
    # a version-1 referral (no energy term) still works from the distance alone
    old = referral.Referrer({k: v for k, v in meta.items() if k != "score_normalisation"}, tensors)
    assert old.out_of_distribution(far, None).min() > old.out_of_distribution(new_f, None).max()


def test_worst_source_limits_keep_every_source_near_its_nominal_share():
    """A small, more varied second source (like the older archive beside HAM10000): pooled quantiles are set by
    the big source and refer many of the small one's lesions; worst-source limits keep each near 5% + 2.5%."""
    big_f, big_l, labels_big, centres = _clusters(n_per_class=300)
    rng = np.random.default_rng(5)
    labels_small = np.repeat(np.arange(3), 40)
    small_f = centres[labels_small] + rng.normal(0, 1.6, (len(labels_small), 32))  # wider spread
    small_l = rng.normal(0, 1.8, (len(labels_small), 3)) + 2 * np.eye(3)[labels_small]  # less confident
    features, logits = np.vstack([big_f, small_f]), np.vstack([big_l, small_l])
    labels = np.concatenate([labels_big, labels_small])
    sources = ["big"] * len(big_f) + ["small"] * len(small_f)

    quantiles = {"confidence_quantile": 0.05, "ood_quantile": 0.975}  # the mechanism, at the quantiles it was built at
    pooled, pooled_tensors = referral.fit_referral(features, logits, labels, 1.0, **quantiles)
    worst, _ = referral.fit_referral(features, logits, labels, 1.0, sources=sources, **quantiles)
    json.dumps(worst)
    refer, _ = referral.Referrer(pooled, pooled_tensors).decide(referral.softmax(small_l), small_f, small_l)
    assert refer.mean() > 0.15  # what the pooled limits do to the small source
    assert pooled["threshold_policy"] == "pooled" and worst["threshold_policy"] == "worst source"
    assert worst["thresholds"]["ood_score"] > pooled["thresholds"]["ood_score"]
    assert worst["thresholds"]["refer_confidence"] < pooled["thresholds"]["refer_confidence"]
    by_source = worst["validation"]["by_source"]
    assert set(by_source) == {"big", "small"} and by_source["small"]["n"] == len(small_f)
    assert by_source["small"]["share_referred"] <= 0.1
    # the same sources with too few images for their own quantiles: pooled again
    few, _ = referral.fit_referral(features, logits, labels, 1.0, sources=sources, min_source_images=200)
    assert few["threshold_policy"] == "pooled"
    with pytest.raises(ModelError, match="source names"):
        referral.fit_referral(features, logits, labels, 1.0, sources=sources[:-1])


def test_low_confidence_reason_and_no_stats():
    referrer = referral.Referrer({"thresholds": {"refer_confidence": 0.6}}, None)
    probs = np.array([[0.9, 0.1], [0.55, 0.45]])
    refer, reasons = referrer.decide(probs, None)
    assert refer.tolist() == [False, True]
    assert reasons == ["", referral.REASON_LOW_CONFIDENCE]
    assert not referrer.needs_features


def test_missing_stats_tensors_is_a_model_error():
    with pytest.raises(ModelError, match="referral"):
        referral.Referrer({"thresholds": {"refer_confidence": 0.5, "ood_score": 3.0}}, {})


def test_fit_referral_rejects_mismatched_inputs():
    with pytest.raises(ModelError):
        referral.fit_referral(np.zeros((5, 4)), np.zeros((4, 2)), np.zeros(5), 1.0)


@pytest.mark.slow
def test_imagenet_features_refer_non_dermoscopic_images(shared_train):
    """Mechanism on real images: statistics fitted on lesions (ImageNet lite0 features, random head) refer most
    noise / text / photo inputs and few held-out lesions."""
    from melanoma.data import load_image
    from melanoma.models import create_model, default_preprocessing
    from melanoma.transforms import eval_transform

    model = create_model("efficientnet_lite0", 9, pretrained=True).eval()
    transform = eval_transform(default_preprocessing("efficientnet_lite0"))
    classes = sorted(p for p in shared_train.iterdir() if p.is_dir())
    files = [sorted(c.glob("*.jpg")) for c in classes]
    fit = [(f, i) for i, fs in enumerate(files) for f in fs[:12]]
    held = [f for fs in files for f in fs[12:16]]

    def features(images):
        return referral.embed(model, torch.stack([transform(im) for im in images]))

    f_fit, l_fit = features([load_image(f) for f, _ in fit])
    meta, tensors = referral.fit_referral(f_fit.numpy(), l_fit.numpy(), np.array([i for _, i in fit]), 1.0)
    referrer = referral.Referrer(meta, tensors)

    def share_ood(images):
        f, logits = features(images)
        return float((referrer.out_of_distribution(f.numpy(), logits.numpy()) > referrer.ood_threshold).mean())

    ood = [im for kind, im in referral.synthetic_ood_images(224, per_kind=3)
           if kind in ("gaussian noise", "uniform noise", "text", "natural photo")]
    assert share_ood([load_image(f) for f in held]) <= 0.15
    assert share_ood(ood) >= 0.8
