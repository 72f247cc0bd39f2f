"""The Lightning callbacks of `melanoma train`: early stopping that survives a resume, the log written each epoch,
stochastic weight averaging with recomputed batch-norm statistics, linear probing before fine-tuning, and two
test/diagnostic hooks."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, WeightAveraging
from torch.optim.swa_utils import update_bn

from melanoma.artifacts import atomic_write_text
from melanoma.errors import ConfigError


class StopWhenAlreadyStopped(EarlyStopping):
    """EarlyStopping whose decision survives a resume: `trainer.should_stop` is not in a checkpoint, so a run killed
    between early stopping and its end would otherwise train on past the epoch where it stopped."""

    def on_train_start(self, trainer, pl_module) -> None:
        if self.wait_count >= self.patience:
            trainer.should_stop = True


class FlushLogEachEpoch(L.Callback):
    """Write the CSV log at every epoch start: a SIGKILL then loses at most the epoch it interrupts, which a
    resume re-runs anyway (Lightning otherwise buffers rows until the end of fit)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.logger is not None and trainer.current_epoch > 0:
            trainer.logger.save()


class FrozenParts(L.Callback):
    """Base of the callbacks that keep part of the backbone frozen: `parts(model)` names its parameters (no
    gradient, so AdamW, decay included, leaves them exactly as they were) and batch-norm layers (eval mode: their
    running statistics stay); `frozen(trainer)` says whether they are frozen now (True: the whole run)."""

    def __init__(self):
        self.params: list[torch.nn.Parameter] = []
        self.norms: list[torch.nn.Module] = []

    def parts(self, model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Module]]:
        raise NotImplementedError

    def frozen(self, trainer) -> bool:
        return True

    def on_fit_start(self, trainer, pl_module) -> None:
        self.params, self.norms = self.parts(pl_module.model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # per batch, not per epoch: Lightning puts the whole model back in train mode after each validation; the
        # callbacks that freeze for the whole run come after LinearProbeFirst in the callback list, so its
        # fine-tuning phase cannot unfreeze what they hold
        frozen = self.frozen(trainer)
        for p in self.params:
            p.requires_grad_(not frozen)
        for m in self.norms:
            m.train(not frozen)


def batch_norms(modules) -> list[torch.nn.Module]:
    """Every batch-norm layer inside `modules` (each module and its children)."""
    return [n for m in modules for n in m.modules() if isinstance(n, torch.nn.modules.batchnorm._BatchNorm)]


class LinearProbeFirst(FrozenParts):
    """Linear probe, then fine-tune (Kumar et al. 2022, "LP-FT"): for the first `epochs` epochs only the new
    classifier head learns; the pretrained backbone is frozen with its batch-norm layers in eval mode (the ImageNet
    statistics, not this data's). Then everything trains on under the one schedule. The phase follows from the
    epoch number, so a resumed run is in the right phase. Idea: a head fitted first on the pretrained features
    distorts those features less during fine-tuning, which is meant to keep more of what transfers to new sources."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def parts(self, model):
        return backbone_parts(model)

    def frozen(self, trainer) -> bool:
        return trainer.current_epoch < self.epochs


def backbone_parts(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Module]]:
    """The pretrained backbone of a timm model: every parameter and batch-norm layer outside its classifier head."""
    head = model.get_classifier()
    head_params, head_modules = set(map(id, head.parameters())), set(map(id, head.modules()))
    params = [p for p in model.parameters() if id(p) not in head_params]
    norms = [m for m in batch_norms([model]) if id(m) not in head_modules]
    return params, norms


class FrozenNormStatistics(FrozenParts):
    """Batch norm with its pretrained statistics (--freeze-bn): the backbone's batch-norm layers normalise with the
    ImageNet running mean and variance and never update them; their scale and shift still learn. Session 17 found
    the trained statistics encode the class-balanced mix of the sampler's batches, which no clinic's images have;
    fixed statistics carry no trace of the training mix (the detection / segmentation practice of frozen BN)."""

    def parts(self, model):
        return [], backbone_parts(model)[1]


class FrozenEarlyStages(FrozenParts):
    """The stem and the first `stages` stages of a timm EfficientNet / MobileNet (`model.blocks`) keep their
    pretrained weights and batch-norm statistics all run (--freeze-early-stages). Idea (surgical fine-tuning, Lee et
    al. 2023): the early layers hold the low-level filters that a source's pixel noise, compression and optics act
    on (session 45: the noise level is a source cue); kept at ImageNet's, they cannot become source detectors."""

    def __init__(self, stages: int):
        super().__init__()
        self.stages = int(stages)

    def parts(self, model):
        return early_stage_parts(model, self.stages)


def early_stage_parts(model: torch.nn.Module, stages: int) -> tuple[list[torch.nn.Parameter], list[torch.nn.Module]]:
    """The parameters and batch-norm layers of a timm EfficientNet's stem (conv_stem, bn1) and blocks[:stages]."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_stem"):
        raise ConfigError(f"--freeze-early-stages needs an EfficientNet / MobileNet model, not {type(model).__name__}")
    if stages > len(blocks):
        raise ConfigError(f"--freeze-early-stages {stages}: the model has {len(blocks)} stages")
    modules = [model.conv_stem, model.bn1, *blocks[:stages]]
    return [p for m in modules for p in m.parameters()], batch_norms(modules)


class EMA(WeightAveraging):
    """Exponential moving average of the weights and BN buffers after every optimiser step, with timm's warm-up:
    the decay at the n-th update is min(decay, (1 + n) / (10 + n)), so the first, barely trained weights fade out
    instead of keeping decay**steps of the average (30% after 120 steps at 0.99 without warm-up)."""

    def __init__(self, decay: float):
        super().__init__(use_buffers=True, avg_fn=partial(_warmup_ema, decay=decay))


def _warmup_ema(averaged: torch.Tensor, current: torch.Tensor, num_averaged, decay: float) -> torch.Tensor:
    n = float(num_averaged)
    rate = min(decay, (1.0 + n) / (10.0 + n))
    return averaged * rate + current * (1.0 - rate)


class SWA(WeightAveraging):
    """Stochastic weight averaging: the equal average of the weights after every optimiser step of the last
    `epochs` epochs; at the end the batch-norm statistics are recomputed for the averaged weights on one pass over
    the training data, and the result is written to `path` (the checkpoint that is shipped).
    Validation uses the average only once it exists (before the window, the current weights)."""

    def __init__(self, epochs: int, total_epochs: int, path: Path):
        super().__init__(use_buffers=False)
        self.first_epoch, self.path = total_epochs - epochs, path
        self.trainer_epoch = 0

    def should_update(self, step_idx=None, epoch_idx=None) -> bool:
        return step_idx is not None and self.trainer_epoch >= self.first_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.trainer_epoch = trainer.current_epoch
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _averaging(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._averaging():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._averaging():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)  # averaged weights -> the module
        update_bn(trainer.train_dataloader, pl_module.model, device=pl_module.device)
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": pl_module.state_dict()}, self.path)


class RecordSampledIndices(L.Callback):
    """Writes, per rank and epoch, the table indices this rank's sampler yields (checks DDP sharding)."""

    def __init__(self, run: Path, train_idx: np.ndarray):
        self.run, self.train_idx = run, np.asarray(train_idx)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.datamodule.train_sampler
        seen = self.train_idx[sampler.epoch_indices()].tolist()
        path = self.run / f"sampled-rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        atomic_write_text(path, json.dumps({"rank": trainer.global_rank, "world_size": trainer.world_size,
                                            "indices": seen}))


class StepMarker(L.Callback):
    """Test hook (config `extra: {step_marker: FILE, step_pause: SECONDS}`): writes the global step after every
    optimiser step, then pauses, so a test can kill a real training process in the middle of an epoch."""

    def __init__(self, path: Path, pause: float = 0.0):
        self.path, self.pause = path, pause

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.path.write_text(str(trainer.global_step))
        time.sleep(self.pause)
