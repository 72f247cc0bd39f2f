"""The training loss: label smoothing, class weights per image, coarse targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melanoma.lightning_module import LesionClassifier
from melanoma.training import class_weights


def _module(weights=None, smoothing=0.1) -> LesionClassifier:
    return LesionClassifier("seed-cnn", 3, 0, lr=1e-3, weight_decay=0.0, label_smoothing=smoothing,
                            class_weights=weights, image_size=64)


def test_class_weights_are_inverse_frequency_and_zero_for_a_class_without_images():
    assert class_weights(np.array([0, 0, 0, 1]), 3) == pytest.approx([4 / 9, 4 / 3, 0.0])


def test_unweighted_loss_is_torch_cross_entropy_with_label_smoothing():
    logits, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 1, 0, 1, 0])
    expected = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert _module()._loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert _module([1.0, 1.0, 1.0])._loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weights_weight_each_image_and_a_class_absent_from_training_pulls_nothing():
    """Each image's smoothed cross-entropy counts with its target's weight; the weight of a class no image has
    (class 2 here) changes nothing. torch's weight= would weight class 2's smoothing term: with N / C for an
    absent class, every image was pulled towards it (session 17)."""
    logits, y = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 1, 0, 1, 1])
    per_image = F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")
    w = torch.tensor([2.0, 0.5])[y]
    expected = (w * per_image).sum() / w.sum()
    for absent in (0.0, 1.0, 100.0):
        assert _module([2.0, 0.5, absent])._loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)
    pulled = F.cross_entropy(logits, y, weight=torch.tensor([2.0, 0.5, 100.0]), label_smoothing=0.1)
    assert pulled.item() > 2 * expected.item()  # the formula the loss no longer uses
