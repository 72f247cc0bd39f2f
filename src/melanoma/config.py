"""Training configuration: one dataclass, loadable from YAML, overridable from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from melanoma.errors import ConfigError

DEFAULT_MODEL = "efficientnet_lite0"
# transforms.augmentation_ops; here so the CLI needs no torch import
AUGMENTATION_LEVELS = ("standard", "strong", "resolution", "geometric", "erasing", "zoom", "hair", "fixed-scale",
                       "strong-colour", "augmix", "jpeg", "noise", "noise-mild", "noise-match", "ink",
                       "marks")
# `melanoma threshold --prior-correction` (melanoma.priors); here so the CLI offers them without importing numpy
PRIOR_CORRECTIONS = ("training-mix", "none", "auto")  # auto: what the model's imbalance mode calls for
# sampler: every class and, within it, every source equally often; source-balanced: the natural class mix with
# every source equally often within a class; weighted-loss: inverse-frequency loss weights; none: the natural mix
IMBALANCE_MODES = ("sampler", "source-balanced", "weighted-loss", "none")
NATURAL_MIX_MODES = ("none", "source-balanced")  # trained at the sources' class mix: no prior correction to apply
# colour normalisation before the network (images.apply_color_constancy); here so the CLI needs no numpy import
# shades_of_gray: illuminant = the Minkowski 6-norm mean of each channel (bright skin dominates the estimate);
# grey_world: the plain mean (p = 1: the dark lesion pulls the estimate too); shades_of_gray_standardised: Shades of
# Gray, then each image's brightness and contrast brought to fixed levels (images.standardise_exposure);
# shades_of_gray_standardised_chroma: that, and each image's colourfulness (mean distance from grey) too;
# shades_of_gray_standardised_denoised: the standardised image, then an edge-preserving smoothing that flattens
# sensor noise and compression blocks (images.bilateral_smooth; a loss on the proxy, session 44)
COLOR_CONSTANCY = ("none", "shades_of_gray", "grey_world", "shades_of_gray_standardised",
                   "shades_of_gray_standardised_chroma", "shades_of_gray_standardised_denoised")
NAMED_LABEL_MAPS = ("auto", "ham10000", "ham10000-coarse")  # --extra-labels values that are not files (sources.py)
RESUME_SAFE_OPTIONS = ("num_workers",)  # may differ on --resume without changing what the run computes


@dataclass
class TrainConfig:
    """Everything that defines a training run; written to RUN/config.yaml so a run can be resumed or repeated."""

    data: str | None = None
    model: str = DEFAULT_MODEL
    pretrained: bool | None = None        # None: True for efficientnet_lite0/1/2 (offline weights), False otherwise
    weights: str | None = None            # local state dict / safetensors to start from
    epochs: int = 12
    image_size: int | None = None         # None: the model's default input size
    color_constancy: str = "shades_of_gray"  # or grey_world / none (COLOR_CONSTANCY); applied on every path,
                                          # stored in model.json. Without it the leave-one-source-out proxy's
                                          # unseen source lost 0.1-0.2 AUC
    detail_size: int | None = None        # larger images are first reduced to this shorter side (px), on every
                                          # path, so every source shows one level of detail (None: off)
    augmentation: str = "standard"        # standard | strong (wider colour jitter + blur + JPEG: for new sources)
                                          # | resolution (half the draws lose detail: transforms.RandomDetailLoss)
                                          # | geometric (standard without its colour jitter)
                                          # | erasing (standard, then half the draws lose a random rectangle)
                                          # | zoom (standard with crops of 30-100% and affine scale 0.75-1.25)
                                          # | hair (standard, half the draws first get dark hair strands drawn)
                                          # | ink (standard, half the draws first get a violet marker ring)
                                          # | marks (ink, its marks half rings and half arrows)
                                          # | fixed-scale (the eval resize, a square crop anywhere, no scaling)
    batch_size: int = 32
    lr: float | None = None               # None: 1e-3 (Adam for seed-cnn, as the notebooks; AdamW otherwise)
    weight_decay: float | None = None     # AdamW decoupled decay; None: 0.01 (seed-cnn: 0, it has its own L2)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1          # share of each target spread evenly over all classes
    mixup: float = 0.0                    # mixup's Beta(alpha, alpha) for the mixing weight (0: off; 0.2 as ImageNet)
    mixstyle: float = 0.0                 # MixStyle (melanoma.mixstyle): probability per early stage and batch of
                                          # blending image styles (0: off; 0.5 as published)
    drop_path: float = 0.0                # stochastic depth: the deepest residual block is skipped with this
                                          # probability in training, shallower ones less (timm's linear rule; 0: off)
    rank_loss: float = 0.0                # weight of the pairwise melanoma ranking loss added to the cross-entropy
                                          # (LesionClassifier._melanoma_rank_loss; 0: off)
    sam: float = 0.0                      # sharpness-aware minimisation's neighbourhood radius rho (0: off; 0.05
                                          # as published): two forward and backward passes per step
    freeze_bn: bool = False               # backbone batch norm keeps its ImageNet statistics (eval mode) all run
    freeze_early_stages: int = 0          # the stem and this many first stages keep their pretrained weights and
                                          # batch-norm statistics all run (callbacks.FrozenEarlyStages; 0: off)
    backbone_lr_scale: float = 1.0        # the pretrained backbone learns at lr * this (the new head at lr): < 1
                                          # keeps more of the ImageNet features
    linear_probe_epochs: int = 0          # first N epochs: only the classifier head learns (backbone frozen,
                                          # its BN in eval mode), then all of it ("LP-FT")
    coarse_labels: bool = False           # an extra source's ambiguous labels (HAM10000 akiec = AK or SCC, bkl =
                                          # pigmented benign or seborrheic keratosis) train through the summed
                                          # probability of the classes they allow instead of being left out
    val_fraction: float = 0.2
    folds: int | None = None              # K-fold cross-validation instead of one hold-out split
    fold_ensemble: bool = False           # with folds: also ship the K fold models as one ensemble (run/ensemble)
    seed: int = 42
    split_seed: int | None = None         # seed of the train/validation split (None: --seed); runs of several
                                          # seeds that share it share their validation images (one ensemble split)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None          # None: bf16-mixed on GPU; on CPU the faster of bf16-mixed/32-true (fastpath)
    channels_last: bool = True            # NHWC memory format (faster convolutions on AVX-512/AMX CPUs and GPUs)
    ema: float | None = None              # EMA of weights with this decay (e.g. 0.999); validated and shipped
    swa_epochs: int | None = None         # SWA: equal average over the last N epochs, BN statistics recomputed
    swa_lr: float | None = None           # with swa_epochs: the lr held over the window, a fraction of the peak
                                          # (None: the cosine decay runs on through the window)
    holdout_source: str | None = None     # leave this source out: train on the others, validate on it
    val_sources: str = "primary"          # primary | all: also validate on a share of every --extra-data source
    holdout_max_images: int = 2000        # at most this many held-out images validate (stratified, group-aware)
    monitor: str = "auto"                 # checkpoint choice: bal_acc | mel_auc | auto (mel_auc with a held-out source)
    num_workers: int | None = None        # None: min(4, cores - 1)
    imbalance: str = "sampler"            # one of IMBALANCE_MODES
    conflict_policy: str = "drop"         # drop | keep | first | reference (labels of --extra-data settle them)
    extra_data: list = field(default_factory=list)  # extra datasets that only ever train (e.g. HAM10000)
    extra_labels: str = "auto"            # their label map into our classes: auto | ham10000 | YAML (sources.py)
    samples_per_epoch: int | None = None  # sampler draws per epoch (None: the size of the training side)
    near_distance: int | None = 4         # pictures within this phash distance share a split group (None: off)
    lesion_metadata: str | None = None    # HAM10000-style CSV (image_id, lesion_id): photos of a lesion share a group
    target_sensitivity: float = 0.90      # melanoma alert threshold keeps at least this validation sensitivity
    patience: int = 6                     # early stopping on validation balanced accuracy (epochs)
    max_train_batches: int | None = None  # cap batches per epoch (tests, smoke runs)
    out: str | None = None
    resume: str | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first invalid field."""
        checks = [
            (self.data is not None or self.resume is not None, "--data is required (or --resume RUN)"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (0.0 < self.val_fraction < 0.5, f"val fraction must be in (0, 0.5), got {self.val_fraction}"),
            (self.folds is None or self.folds >= 2, f"folds must be >= 2, got {self.folds}"),
            (self.imbalance in IMBALANCE_MODES, f"unknown imbalance mode {self.imbalance!r}"),
            (self.conflict_policy in ("drop", "keep", "first", "reference"),
             f"unknown conflict policy {self.conflict_policy!r}"),
            (self.conflict_policy != "reference" or bool(self.extra_data),
             "conflict policy 'reference' needs --extra-data, whose labels settle the conflicts"),
            (self.color_constancy in COLOR_CONSTANCY,
             f"unknown colour constancy {self.color_constancy!r} (use {' or '.join(COLOR_CONSTANCY)})"),
            (self.detail_size is None or self.detail_size >= 16,
             f"detail size must be at least 16 px, got {self.detail_size}"),
            (self.augmentation in AUGMENTATION_LEVELS,
             f"unknown augmentation level {self.augmentation!r} (use {' or '.join(AUGMENTATION_LEVELS)})"),
            (self.samples_per_epoch is None or self.samples_per_epoch >= 1,
             f"samples per epoch must be >= 1, got {self.samples_per_epoch}"),
            (0.0 < self.target_sensitivity <= 1.0, f"target sensitivity must be in (0, 1], got {self.target_sensitivity}"),
            (0.0 < self.backbone_lr_scale <= 1.0,
             f"backbone lr scale must be in (0, 1], got {self.backbone_lr_scale}"),
            (0 <= self.linear_probe_epochs < self.epochs,
             f"linear-probe epochs must be between 0 and epochs - 1 ({self.epochs - 1}), got "
             f"{self.linear_probe_epochs}"),
            (0.0 <= self.label_smoothing < 1.0, f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.weight_decay is None or self.weight_decay >= 0.0,
             f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.mixup >= 0.0, f"mixup alpha must be >= 0, got {self.mixup}"),
            (0.0 <= self.drop_path < 1.0, f"drop-path rate must be in [0, 1), got {self.drop_path}"),
            (self.sam >= 0.0, f"SAM radius must be >= 0, got {self.sam}"),
            (self.freeze_early_stages >= 0, f"frozen early stages must be >= 0, got {self.freeze_early_stages}"),
            (self.rank_loss >= 0.0, f"ranking loss weight must be >= 0, got {self.rank_loss}"),
            (not (self.rank_loss and self.mixup),
             "--rank-loss and --mixup: a blended image is neither a melanoma nor another lesion; choose one"),
            (0.0 <= self.mixstyle <= 1.0, f"MixStyle probability must be in [0, 1], got {self.mixstyle}"),
            (not (self.mixstyle and self.swa_epochs),
             "--mixstyle and --swa-epochs: SWA's batch-norm recompute would see mixed styles; choose one"),
            (not (self.freeze_bn and self.swa_epochs),
             "--freeze-bn keeps the pretrained batch-norm statistics, --swa-epochs recomputes them: choose one"),
            (self.ema is None or 0.0 < self.ema < 1.0, f"EMA decay must be in (0, 1), got {self.ema}"),
            (self.swa_epochs is None or 1 <= self.swa_epochs <= self.epochs,
             f"SWA epochs must be between 1 and epochs ({self.epochs}), got {self.swa_epochs}"),
            (self.ema is None or self.swa_epochs is None, "choose one weight average: --ema or --swa-epochs"),
            (self.swa_lr is None or bool(self.swa_epochs), "--swa-lr needs --swa-epochs"),
            (self.swa_lr is None or 0.0 < self.swa_lr <= 1.0, f"SWA lr must be in (0, 1], got {self.swa_lr}"),
            (self.holdout_source is None or not self.folds, "--holdout-source and --folds exclude each other"),
            (not self.fold_ensemble or bool(self.folds), "--fold-ensemble needs --folds"),
            (self.val_sources in ("primary", "all"), f"unknown val sources {self.val_sources!r} (primary or all)"),
            (self.holdout_max_images >= 10, f"holdout max images must be >= 10, got {self.holdout_max_images}"),
            (self.monitor in ("auto", "bal_acc", "mel_auc"),
             f"unknown monitor {self.monitor!r} (auto, bal_acc, mel_auc)"),
            (self.precision in (None, "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
             f"unknown precision {self.precision!r} (32-true, bf16-mixed, 16-mixed)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def split_seed_or_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def monitored_metric(self) -> str:
        """What chooses the checkpoint and stops early: balanced accuracy, or the melanoma AUC (the default when a
        held-out source validates, since what must carry to a new clinic is the melanoma ranking)."""
        name = self.monitor if self.monitor != "auto" else ("mel_auc" if self.holdout_source else "bal_acc")
        return f"val/{name}"

    def absolutize(self) -> "TrainConfig":
        """Every path made absolute (config.yaml then means the same from any working folder, e.g. for --resume)."""
        def absolute(path):
            return str(Path(path).expanduser().resolve()) if path else path

        self.data, self.weights, self.lesion_metadata = map(absolute, (self.data, self.weights, self.lesion_metadata))
        self.out, self.resume = absolute(self.out), absolute(self.resume)
        self.extra_data = [absolute(p) for p in self.extra_data]
        if self.extra_labels not in NAMED_LABEL_MAPS:
            self.extra_labels = absolute(self.extra_labels)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path=None, **overrides) -> TrainConfig:
    """Read a YAML file of TrainConfig fields (unknown keys are an error), then apply non-None overrides."""
    values: dict = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read config ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: config must be a mapping of field: value")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def save_config(cfg: TrainConfig, path) -> None:
    from melanoma.artifacts import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_from_args(args) -> TrainConfig:
    """Build the config of `melanoma train`: --resume reads RUN/config.yaml (from any working folder), else
    --config then flags. An option given with --resume that would change the run is an error, never ignored."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and k not in ("resume",)}
    if args.resume:
        saved = Path(args.resume).expanduser().resolve() / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"{saved}: missing; --resume needs a run folder written by `melanoma train`")
        given = sorted(k for k, v in overrides.items() if v is not None and k not in RESUME_SAFE_OPTIONS)
        if getattr(args, "config", None):
            given.insert(0, "config")
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"{flags}: cannot change a run on --resume (the run continues as in {saved}); "
                              f"start a new run with --out instead")
        cfg = load_config(saved)
        cfg.resume = cfg.out = str(saved.parent)
        for key in RESUME_SAFE_OPTIONS:
            if overrides.get(key) is not None:
                setattr(cfg, key, overrides[key])
        return cfg.validate()
    return load_config(args.config, **overrides).validate()
