"""The training loss: label smoothing, class weights per image, coarse targets, mixup, the melanoma ranking loss;
the SAM step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melanoma.lightning_module import LesionClassifier
from melanoma.training import class_weights


def _module(weights=None, smoothing=0.1, mixup=0.0, sam_rho=0.0, **kwargs) -> LesionClassifier:
    return LesionClassifier("seed-cnn", 3, 0, lr=1e-3, weight_decay=0.0, label_smoothing=smoothing,
                            class_weights=weights, image_size=64, mixup=mixup, sam_rho=sam_rho, **kwargs)


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


def test_melanoma_rank_loss_is_the_mean_pairwise_logistic_loss_over_melanoma_and_other_lesion_pairs():
    """Melanoma is class 0; its score is its log-odds. Target 3 is a coarse label covering classes 1 and 2 (an
    "other lesion"); target 4 covers classes 0 and 1 (may be a melanoma: in no pair)."""
    module = _module(coarse_groups=[[1, 2], [0, 1]], rank_loss=0.5)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 0, 2, 3, 4])
    p = logits.softmax(-1)[:, 0]
    score = torch.log(p / (1 - p))
    pairs = [F.softplus(score[j] - score[i]) for i in (0, 2) for j in (1, 3, 4)]
    assert module._melanoma_rank_loss(logits, y).item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-5)
    assert module._melanoma_rank_loss(logits, torch.tensor([1, 2, 1, 2, 3, 4])).item() == 0.0  # no melanoma
    assert module._melanoma_rank_loss(logits, torch.tensor([0, 0, 0, 0, 0, 4])).item() == 0.0  # no other lesion


def test_melanoma_rank_loss_is_added_to_the_training_loss_with_its_weight_and_pushes_melanomas_up():
    logits = torch.zeros(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    module = _module(rank_loss=2.0)
    module._melanoma_rank_loss(logits, y).backward()
    assert (logits.grad[[0, 3], 0] < 0).all() and (logits.grad[[1, 2], 0] > 0).all()  # descent raises melanomas
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    module.eval()  # no dropout: the forward passes below agree
    plain = _module().eval()
    plain.load_state_dict(module.state_dict())
    out = module(x)
    expected = plain.training_step((x, y), 0) + 2.0 * module._melanoma_rank_loss(out, y)
    assert module.training_step((x, y), 0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_blends_image_pairs_and_their_losses_alike():
    module = _module(mixup=0.4).eval()  # no dropout: the two forward passes below must agree
    x, y = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(5)
    mixed, y_other, lam = module._mixed(x, y)
    assert 0.0 < lam < 1.0
    # image i is lam * itself + (1 - lam) * one partner j, carrying j's label too; the partners are a permutation
    blends = lam * x[:, None] + (1 - lam) * x[None, :]  # [i, j]
    partner = [next(j for j in range(len(y)) if torch.allclose(mixed[i], blends[i, j])) for i in range(len(y))]
    assert sorted(partner) == list(range(len(y)))
    assert torch.equal(y_other, y[partner])
    torch.manual_seed(5)  # training_step draws the same blend: its loss is the blend of the two targets' losses
    loss = module.training_step((x, y), 0)
    logits = module(mixed)
    expected = lam * module._loss(logits, y) + (1 - lam) * module._loss(logits, y_other) + module._l2_penalty()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _backward_closure(module, x, y):
    def closure():
        module.zero_grad()
        loss = module.training_step((x, y), 0)
        loss.backward()
        return loss
    return closure


def test_sam_leaves_the_gradient_of_the_worst_nearby_weights_and_the_weights_where_they_were():
    """In training mode (batch statistics, mixup's random blend): the gradient left for the optimiser is the one at
    w + rho * g / ||g||, taken on the same blend as the first pass; batch norm's running statistics move once, as in
    a plain step."""
    module = LesionClassifier("efficientnet_lite0", 3, 0, lr=1e-3, weight_decay=0.0, image_size=64, sam_rho=0.05,
                              mixup=0.4)
    module = module.double()  # float64: a random-init network's large gradients make float32 rounding visible
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    reference = copy.deepcopy(module).train()
    torch.manual_seed(7)
    loss_at_w = _backward_closure(reference, x, y)()
    stats_once = {k: v.clone() for k, v in reference.state_dict().items() if "running_mean" in k}
    params = [p for p in reference.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    with torch.no_grad():
        for p in params:
            p.add_(p.grad * 0.05 / norm)
    torch.manual_seed(7)
    _backward_closure(reference, x, y)()

    weights = {k: v.clone() for k, v in module.state_dict().items()}
    module.train()
    torch.manual_seed(7)
    loss = module._sharpness_aware(_backward_closure(module, x, y))
    assert loss.item() == pytest.approx(loss_at_w.item(), rel=1e-6)
    for (name, p), q in zip(module.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, weights[name], rtol=0, atol=1e-12)  # back at w
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9)  # the gradient at w + e
    for name, value in stats_once.items():
        torch.testing.assert_close(module.state_dict()[name], value)
    assert all(m.momentum == 0.1 for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("rho, passes", [(0.0, 1), (0.05, 2)])
def test_the_optimizer_step_hook_runs_sams_two_passes_inside_the_optimizers_closure(rho, passes):
    """Lightning hands every step to LightningModule.optimizer_step with a closure (forward, backward); with SAM the
    optimiser's single closure call holds both passes."""
    module = _module(sam_rho=rho)
    x, y = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0])
    calls = []
    backward = _backward_closure(module, x, y)
    before = [p.detach().clone() for p in module.parameters()]
    module.optimizer_step(0, 0, torch.optim.SGD(module.parameters(), lr=0.1), lambda: calls.append(1) or backward())
    assert len(calls) == passes
    assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))
