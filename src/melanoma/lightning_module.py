"""The LightningModule: loss (label smoothing, optional class weights, seed-cnn's Keras-style L2), optimiser with
linear warm-up and cosine decay (optionally sharpness-aware), and the metrics logged for progress bars, CSV logs and
checkpoint choice."""

from __future__ import annotations

import contextlib
import math

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy

from melanoma.mixstyle import attach_mixstyle
from melanoma.models import create_model


class LesionClassifier(L.LightningModule):
    """Wraps a registry model; hyper-parameters are saved in every checkpoint so it rebuilds itself."""

    def __init__(self, architecture: str, num_classes: int, melanoma_index: int | None, lr: float,
                 weight_decay: float, optimizer: str = "adamw", warmup_fraction: float = 0.1,
                 label_smoothing: float = 0.1, class_weights: list[float] | None = None,
                 pretrained: bool = False, weights: str | None = None, seed: int = 0, image_size: int = 224,
                 channels_last: bool = False, backbone_lr_scale: float = 1.0,
                 coarse_groups: list[list[int]] | None = None, mixup: float = 0.0,
                 lr_floor: float = 0.01, decay_fraction: float = 1.0, mixstyle: float = 0.0,
                 drop_path: float = 0.0, sam_rho: float = 0.0, rank_loss: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        # drop_path only acts in training: the state dict, and so every model file, is the same without it
        self.model = create_model(architecture, num_classes=num_classes, pretrained=pretrained, weights=weights,
                                  image_size=image_size, drop_path_rate=drop_path or None)
        if channels_last:  # NHWC: oneDNN/cuDNN convolutions without layout conversions (measured in bench/)
            self.model = self.model.to(memory_format=torch.channels_last)
        if mixstyle > 0:  # training-time forward hooks; the state dict and eval mode are unchanged
            attach_mixstyle(self.model, mixstyle)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        # target t >= num_classes means "one of the classes coarse_groups[t - num_classes]" (sources.py)
        masks = torch.zeros(len(coarse_groups or []), num_classes, dtype=torch.bool)
        for g, members in enumerate(coarse_groups or []):
            masks[g, members] = True
        self.register_buffer("coarse_masks", masks, persistent=False)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.train_bal_acc = MulticlassAccuracy(num_classes, average="macro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_bal_acc = MulticlassAccuracy(num_classes, average="macro")  # mean per-class recall
        self.val_mel_auc = BinaryAUROC() if melanoma_index is not None else None
        self._perturbed = False  # True during SAM's second pass: its loss is not logged or counted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _l2_penalty(self) -> torch.Tensor | float:
        """Keras kernel_regularizer=l2(c) adds c * sum(w^2) to the loss (seed-cnn's Dense512)."""
        spec = getattr(self.model, "l2_penalty", None)
        if not spec:
            return 0.0
        params = dict(self.model.named_parameters())
        return spec["coef"] * sum(params[name].pow(2).sum() for name in spec["param_names"])

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with label smoothing; a coarse target's negative log-likelihood is that of the summed
        probability of the classes it allows (-log sum_c p_c), its smoothing term the same as a fine one's.

        Class weights weight each IMAGE by its target's weight (a weighted mean over the batch), smoothing included.
        Not F.cross_entropy(weight=..., label_smoothing=...): that weights the smoothing term of class c by w_c, so a
        rare class's large inverse-frequency weight pulls every image towards it, and a class absent from training
        (a held-out source's, weight N / C) took every prediction (session 17: melanoma AUC looked higher, every
        image was called actinic keratosis, squamous cell carcinoma or seborrheic keratosis)."""
        n = logits.shape[1]
        if self.class_weight is None and not bool((y >= n).any()):
            return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        allowed = self._allowed_classes(y, n)
        log_p = logits.float().log_softmax(-1)
        nll = -log_p.masked_fill(~allowed, float("-inf")).logsumexp(-1)
        eps = self.hparams.label_smoothing
        per_image = (1 - eps) * nll - eps * log_p.mean(-1)
        if self.class_weight is None:
            return per_image.mean()
        w = (self.class_weight * allowed).sum(-1) / allowed.sum(-1)  # a coarse target: its classes' mean weight
        return (w * per_image).sum() / w.sum()

    def _allowed_classes(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """(batch, n) bool: the classes each target allows (a fine target its own; a coarse one, y >= n, those of
        coarse_groups[y - n])."""
        allowed = F.one_hot(y.clamp(max=n - 1), n).bool()
        coarse = y >= n
        allowed[coarse] = self.coarse_masks[y[coarse] - n]
        return allowed

    def _melanoma_rank_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pairwise logistic loss on the melanoma score (RankNet; a smooth surrogate of 1 - AUC): the mean over
        every (melanoma, other lesion) pair of the batch of softplus(s_other - s_melanoma), s being the log-odds of
        melanoma (its logit less the logsumexp of the others', the alert's score before the softmax). A coarse target
        is an "other lesion" when melanoma is not among its classes. 0 when the batch lacks either kind."""
        n, mel = logits.shape[1], self.hparams.melanoma_index
        if mel is None:
            return logits.new_zeros(())
        logits = logits.float()
        score = logits[:, mel] - torch.cat([logits[:, :mel], logits[:, mel + 1:]], 1).logsumexp(-1)
        positive = y == mel
        negative = ~self._allowed_classes(y, n)[:, mel]  # a coarse target that may be a melanoma is neither
        if not positive.any() or not negative.any():
            return logits.new_zeros(())
        return F.softplus(score[negative][None, :] - score[positive][:, None]).mean()

    def _mixed(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mixup (Zhang et al. 2018): x blended with a shuffled copy of the batch at a Beta(alpha, alpha) weight.
        The loss is blended alike from both targets (not one soft target), so coarse targets and class weights
        work unchanged. Draws from the global RNG, which on_train_batch_start re-seeds per step (resumable)."""
        alpha = self.hparams.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        order = torch.randperm(len(y), device=y.device)
        return lam * x + (1.0 - lam) * x[order], y[order], lam

    def training_step(self, batch, batch_idx):
        x, y = batch
        mixing = self.hparams.mixup > 0
        if mixing:
            x, y_other, lam = self._mixed(x, y)
        logits = self(x)
        loss = self._loss(logits, y)
        if mixing:
            loss = lam * loss + (1.0 - lam) * self._loss(logits, y_other)
        if self.hparams.rank_loss:
            loss = loss + self.hparams.rank_loss * self._melanoma_rank_loss(logits, y)
        loss = loss + self._l2_penalty()
        if self._perturbed:
            return loss
        fine = y < logits.shape[1]  # coarse targets have no single class to be accurate on
        self.train_acc(logits[fine], y[fine])
        self.train_bal_acc(logits[fine], y[fine])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/bal_acc", self.train_bal_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.val_acc(logits, y)
        self.val_bal_acc(logits, y)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True)
        self.log("val/bal_acc", self.val_bal_acc, on_epoch=True, prog_bar=True)
        if self.val_mel_auc is not None:
            mel = self.hparams.melanoma_index
            self.val_mel_auc(logits.softmax(-1)[:, mel], (y == mel).long())
            self.log("val/mel_auc", self.val_mel_auc, on_epoch=True, prog_bar=True)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Dropout draws from the global RNG, which Lightning and the DataLoader also draw from in an order that
        # differs between a fresh and a resumed run: re-seed per optimiser step (and rank) so that a resumed run
        # continues bit for bit.
        torch.manual_seed((self.hparams.seed * 100_003 + self.global_step) * 64 + self.global_rank)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        if not self.hparams.sam_rho:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # the optimiser (AdamW, and the precision plugin around it) calls the closure once and steps with the
        # gradients it leaves: SAM's two passes live inside that closure, so checkpoints and resume are unchanged
        optimizer.step(closure=lambda: self._sharpness_aware(optimizer_closure))

    def _sharpness_aware(self, closure):
        """SAM (Foret et al. 2021): leave the gradient taken at the worst weights nearby, w + rho * g / ||g||
        (g: the gradient at w), for the optimiser to apply at w: it prefers flat minima. Two forward and backward
        passes on the same batch, with the same random draws (mixup, dropout); batch norm's running statistics
        learn from the first pass only. Returns the loss at w."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the random state is back where it was for the second pass
            loss = closure()
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            shifts = [p.grad * (self.hparams.sam_rho / (norm + 1e-12)) for p in params]
            torch._foreach_add_(params, shifts)
        try:
            self._perturbed = True
            with _running_stats_frozen(self.model):
                closure()
        finally:
            self._perturbed = False
            with torch.no_grad():
                torch._foreach_sub_(params, shifts)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        groups = self._param_groups()
        if hp.optimizer == "adam":  # the notebooks' seed-cnn recipe (Keras Adam 1e-3, no decoupled decay)
            opt = torch.optim.Adam(groups, lr=hp.lr)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(total * hp.warmup_fraction))

        # constant SWA learning rate: the decay ends early (decay_fraction of the steps) at lr_floor, held after
        end = max(warmup, int(total * hp.decay_fraction))
        floor = hp.lr_floor

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to lr_floor (default 1% of the peak)
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, end - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)  # the same factor scales every group's lr
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _param_groups(self) -> list[dict]:
        """One group (every parameter at lr), or with backbone_lr_scale < 1 the classifier head at lr and the
        backbone at lr * scale."""
        scale = self.hparams.backbone_lr_scale
        if scale == 1.0 or not hasattr(self.model, "get_classifier"):
            return [{"params": list(self.parameters())}]
        head = {id(p) for p in self.model.get_classifier().parameters()}
        backbone = [p for p in self.parameters() if id(p) not in head]
        return [{"params": [p for p in self.parameters() if id(p) in head]},
                {"params": backbone, "lr": self.hparams.lr * scale}]


@contextlib.contextmanager
def _running_stats_frozen(model: torch.nn.Module):
    """Batch norm in training mode normalises with the batch's statistics as usual, but momentum 0 leaves its running
    statistics where they are."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
