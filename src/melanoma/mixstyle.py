"""MixStyle (Zhou et al., ICLR 2021, "Domain generalization with MixStyle"): during training, the per-image channel
statistics (mean, standard deviation over H x W) of early feature maps are blended with those of another image of
the batch, so the network sees each lesion in another image's "style" (illumination, camera, colour response) and
relies less on it. Identity in eval mode: nothing of it reaches the saved weights, export or prediction.

Inserted after the stages that timm's `feature_info` lists at strides 4, 8 and 16 (the paper's res1-res3 of a
ResNet; efficientnet_lite0: blocks.1, blocks.2, blocks.4), as forward hooks, so the model's state dict is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from melanoma.errors import ConfigError

ALPHA = 0.1  # the paper's Beta(alpha, alpha) for the mixing weight: most draws lie near 0 or 1 (mild mixing)
EPS = 1e-6   # added to the variance before the square root (a flat feature map has variance 0)
STAGES = slice(1, 4)  # of feature_info: the stride-4, -8 and -16 stages (not the stem's stride 2, not the last)


def mix_style(x: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """x (N, C, H, W) with each image's channel mean / std replaced by a Beta(alpha, alpha) blend of its own and a
    random other image's (a random permutation of the batch). The statistics are detached (as published): the
    gradient flows through the normalised content only. Draws from the global RNG (re-seeded per training step)."""
    n = x.shape[0]
    xf = x.float()  # statistics in float32: under bf16 autocast a variance over H x W loses most of its digits
    mu = xf.mean(dim=(2, 3), keepdim=True).detach()
    sigma = (xf.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((n, 1, 1, 1)).to(x.device)
    order = torch.randperm(n, device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[order]
    sigma_mix = lam * sigma + (1 - lam) * sigma[order]
    return ((xf - mu) / sigma * sigma_mix + mu_mix).to(x.dtype)


def mixstyle_layers(model: nn.Module) -> list[str]:
    """Names of the modules after which MixStyle applies: timm's feature_info stages at strides 4, 8, 16."""
    info = getattr(model, "feature_info", None)
    names = [entry["module"] for entry in (info or [])][STAGES]
    if len(names) < 3:
        raise ConfigError("--mixstyle needs a timm model that lists its stages (feature_info); "
                          f"{type(model).__name__} does not")
    return names


def attach_mixstyle(model: nn.Module, probability: float, alpha: float = ALPHA) -> list:
    """Register MixStyle after each of mixstyle_layers(model): in training mode, with a batch of at least 2, each
    layer mixes with `probability` per batch. Returns the hook handles (handle.remove() detaches)."""
    modules = dict(model.named_modules())

    def hook(module, inputs, output):
        if not module.training or output.shape[0] < 2 or float(torch.rand(())) >= probability:
            return None  # unchanged
        return mix_style(output, alpha)

    return [modules[name].register_forward_hook(hook) for name in mixstyle_layers(model)]
