"""MixStyle: blends early feature statistics between images in training, identity in eval, no state-dict change."""

from __future__ import annotations

import pytest
import torch

from melanoma.config import TrainConfig
from melanoma.errors import ConfigError
from melanoma.lightning_module import LesionClassifier
from melanoma.mixstyle import attach_mixstyle, mix_style, mixstyle_layers
from melanoma.models import create_model


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3))


def test_mix_style_gives_each_image_a_blend_of_two_images_statistics_and_keeps_its_content():
    g = torch.Generator().manual_seed(0)
    content = torch.randn(8, 3, 16, 16, generator=g)
    x = content * torch.tensor([0.5, 3.0]).repeat(4)[:, None, None, None]  # two "styles" taking turns:
    x = x + torch.tensor([1.0, -2.0]).repeat(4)[:, None, None, None]      # (mean 1, std 0.5) and (-2, 3)
    torch.manual_seed(1)
    out = mix_style(x, alpha=1.0)  # alpha 1: a uniform mixing weight, so mixing is clearly visible
    mu, sigma = _stats(x)
    mu_out, sigma_out = _stats(out)
    assert bool(((mu_out >= mu.min() - 1e-5) & (mu_out <= mu.max() + 1e-5)).all())
    assert (mu_out - mu).abs().max() > 0.5  # some images took on part of the other style
    # the content (each image standardised per channel) is unchanged
    torch.testing.assert_close((out - mu_out[..., None, None]) / sigma_out[..., None, None],
                               (x - mu[..., None, None]) / sigma[..., None, None], atol=1e-4, rtol=0)
    same = content[:1].repeat(4, 1, 1, 1)  # one style for all: nothing to mix
    torch.testing.assert_close(mix_style(same, alpha=1.0), same, atol=1e-5, rtol=0)


def test_mixstyle_hooks_the_stride_4_8_16_stages_and_changes_training_passes_only():
    model = create_model("efficientnet_lite0", num_classes=9, pretrained=False)
    assert mixstyle_layers(model) == ["blocks.1", "blocks.2", "blocks.4"]
    keys = set(model.state_dict())
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain_eval = model.eval()(x)
        handles = attach_mixstyle(model, probability=1.0)
        assert set(model.state_dict()) == keys
        torch.testing.assert_close(model(x), plain_eval, rtol=0, atol=0)
        for handle in handles:
            handle.remove()
        plain_train = model.train()(x)  # train mode: BN normalises with the batch's statistics (and updates its own)
        handles = attach_mixstyle(model, probability=1.0)
        torch.manual_seed(3)
        mixed = model.train()(x)
        torch.manual_seed(3)
        assert torch.equal(model(x), mixed)  # drawn from the global RNG: re-seeded per step, a resume repeats it
        assert not torch.allclose(mixed, plain_train, atol=1e-3)
        for handle in handles:
            handle.remove()
        never = attach_mixstyle(model, probability=0.0)
        torch.testing.assert_close(model(x), plain_train, rtol=0, atol=1e-6)
        assert len(never) == 3


def test_mixstyle_is_wired_into_the_training_module_and_checked_in_the_config():
    module = LesionClassifier("efficientnet_lite0", 9, 0, lr=1e-3, weight_decay=0.0, image_size=64, mixstyle=0.5)
    assert module.hparams.mixstyle == 0.5
    assert len(module.model.blocks[1]._forward_hooks) == 1
    with pytest.raises(ConfigError, match="--mixstyle needs a timm model"):
        LesionClassifier("seed-cnn", 9, 0, lr=1e-3, weight_decay=0.0, image_size=64, mixstyle=0.5)
    with pytest.raises(ConfigError, match="MixStyle probability"):
        TrainConfig(data="d", mixstyle=1.5).validate()
    with pytest.raises(ConfigError, match="--mixstyle and --swa-epochs"):
        TrainConfig(data="d", mixstyle=0.5, swa_epochs=2).validate()
