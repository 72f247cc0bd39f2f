"""`train(cfg)`: hold-out or group-aware K-fold training on Lightning, then calibration, thresholds, referral
statistics and the model artifact. Returns its results so tests and other code can call it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from melanoma import data as datalib
from melanoma import fingerprint
from melanoma.artifacts import atomic_write_text
from melanoma.callbacks import (EMA, SWA, FlushLogEachEpoch, FrozenEarlyStages, FrozenNormStatistics,
                                LinearProbeFirst, RecordSampledIndices, StepMarker, StopWhenAlreadyStopped,
                                early_stage_parts)
from melanoma.config import TrainConfig, save_config
from melanoma.datamodule import LesionDataModule, decode_cache
from melanoma.errors import ConfigError, MelanomaError
from melanoma.fastpath import resolve_precision
from melanoma.finalize import finalize_split, summarize_cv
from melanoma.images import scan_paths
from melanoma.labelmaps import find_melanoma_class
from melanoma.lightning_module import LesionClassifier
from melanoma.models import default_preprocessing, pretrained_by_default
from melanoma.runlog import checkpoint_epochs, set_aside_log, settle_log
from melanoma.sources import (holdout_source_split, load_extra_sources, loss_targets, shared_with_source,
                              source_origin, splits_with_extras)

RUN_DIR_ENV = "MELANOMA_RUN_DIR"  # shared with DDP child processes, which re-run the same command


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """Fill the model-dependent defaults (pretrained, learning rate, optimiser, weight decay) in place."""
    is_seed = cfg.model == "seed-cnn"
    if cfg.pretrained is None:
        cfg.pretrained = pretrained_by_default(cfg.model) and cfg.weights is None
    if cfg.lr is None:
        cfg.lr = 1e-3
    cfg.extra.setdefault("optimizer", "adam" if is_seed else "adamw")
    if cfg.weight_decay is None:  # seed-cnn: none on top of the L2 its own layers apply
        cfg.weight_decay = 0.0 if is_seed else 0.01
    return cfg


def new_run_dir(stem: str) -> Path:
    """A NEW folder named `stem`, or `stem-2`, `stem-3`, ... when taken: mkdir is atomic, so two runs started in
    the same second (auto-named by the second) never share a folder."""
    for n in range(1, 1000):
        run = Path(stem if n == 1 else f"{stem}-{n}").resolve()
        try:
            run.mkdir(parents=True)
            return run
        except FileExistsError:
            continue
    raise ConfigError(f"{stem}: 999 run folders of that name exist; choose --out")


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """Create (or, with --resume, reopen) the run folder; never overwrite a finished or started run."""
    is_ddp_child = int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0
    inherited = os.environ.get(RUN_DIR_ENV) if is_ddp_child else None
    if cfg.out or inherited:
        run = Path(cfg.out or inherited).resolve()
    else:
        run = new_run_dir(f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.environ[RUN_DIR_ENV] = str(run)  # DDP children re-run this command: they must find the same folder
    if (run / "config.yaml").exists() and not cfg.resume and not is_ddp_child:
        raise ConfigError(f"{run}: run folder already exists; continue it with --resume {run} or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    cfg.out = str(run)
    if not is_ddp_child:
        save_config(cfg, run / "config.yaml")
    return run


def load_training_table(cfg: TrainConfig, run: Path):
    """Discover, validate and de-duplicate the data (conflict policy applied); summary and training-set
    fingerprint (every scanned image, see fingerprint.py) written to the run."""
    table = datalib.discover(cfg.data)
    lesions = datalib.read_lesion_ids(cfg.lesion_metadata) if cfg.lesion_metadata else None
    extras = load_extra_sources(cfg.extra_data, cfg.extra_labels, table.classes, cfg.coarse_labels)
    entries = datalib.scan(table) + scan_paths([s.path for src in extras for s in src.samples])
    fingerprint.save(fingerprint.build(entries), run)
    table, summary = datalib.prepare_training_table(table, conflict_policy=cfg.conflict_policy,
                                                    near_distance=cfg.near_distance, lesion_ids=lesions,
                                                    extras=extras, scan_entries=entries)
    for item in summary.get("unreadable", []):
        print(f"skipped {item['path']}: {item['reason']}")
    if "extra" in summary:
        print(f"extra training data: {summary['extra']['n_images']} images ({summary['extra']['removed']} left out)")
    atomic_write_text(run / "data_summary.json", json.dumps(summary, indent=2, default=str))
    return table, summary


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    """SIGTERM (a scheduler's or `kill`'s stop) takes the same path as Ctrl-C: Lightning shuts down, the partial
    epoch is dropped from the log, and the last finished epoch's checkpoint stays the resume point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainingInterrupted(MelanomaError):
    """Ctrl-C or SIGTERM during training: the last finished epoch is checkpointed."""


def make_trainer(cfg: TrainConfig, run: Path, extra_callbacks=()) -> L.Trainer:
    """A Lightning Trainer checkpointing every epoch (last.ckpt) and the best validation score; with --ema or
    --swa-epochs the averaged weights are validated, checkpointed and shipped."""
    monitor = cfg.monitored_metric()
    checkpoint = ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=monitor, mode="max",
                                 save_last=True)
    callbacks = [checkpoint, LearningRateMonitor("epoch"), FlushLogEachEpoch(), *averaging_callbacks(cfg, run)]
    if cfg.linear_probe_epochs:
        callbacks.append(LinearProbeFirst(cfg.linear_probe_epochs))
    if cfg.freeze_bn:
        callbacks.append(FrozenNormStatistics())
    if cfg.freeze_early_stages:
        callbacks.append(FrozenEarlyStages(cfg.freeze_early_stages))
    if not cfg.swa_epochs:  # SWA ships the final average: no early stop before its window
        callbacks.append(StopWhenAlreadyStopped(monitor=monitor, mode="max", patience=cfg.patience))
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    return L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=devices, num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision, default_root_dir=run,
        logger=CSVLogger(save_dir=run, name="logs", version=""),
        callbacks=[*callbacks, *extra_callbacks],
        limit_train_batches=cfg.max_train_batches or 1.0, use_distributed_sampler=False,
        num_sanity_val_steps=0, log_every_n_steps=5, enable_model_summary=False,
        # a progress bar only for a person watching a terminal, never in log files
        enable_progress_bar=bool(cfg.extra.get("progress_bar", sys.stderr.isatty())),
    )


def averaging_callbacks(cfg: TrainConfig, run: Path) -> list[L.Callback]:
    if cfg.ema:
        return [EMA(cfg.ema)]  # buffers (BN statistics) averaged too
    if cfg.swa_epochs:
        return [SWA(cfg.swa_epochs, cfg.epochs, run / "checkpoints" / "swa.ckpt")]
    return []


def class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Inverse-frequency weights N / (C * n_c) for the weighted-loss imbalance mode; 0 for a class with no
    training image (nothing to weight; e.g. the classes of a held-out source that the others lack)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0).tolist()


def source_codes(table) -> np.ndarray:
    """0 for the primary dataset's samples, 1, 2, ... for each extra source (for source-balanced sampling)."""
    names = sorted({s.origin for s in table.samples if s.origin is not None})
    return np.array([0 if s.origin is None else 1 + names.index(s.origin) for s in table.samples], dtype=np.int64)


def build_module(cfg: TrainConfig, class_names: list[str], train_labels: np.ndarray,
                 coarse_groups: list[list[int]] | None = None) -> LesionClassifier:
    mel = find_melanoma_class(class_names)
    weights = class_weights(train_labels, len(class_names)) if cfg.imbalance == "weighted-loss" else None
    module = LesionClassifier(
        cfg.model, len(class_names), class_names.index(mel) if mel else None, lr=cfg.lr,
        weight_decay=cfg.weight_decay, optimizer=cfg.extra["optimizer"],
        warmup_fraction=min(0.5, cfg.warmup_epochs / cfg.epochs), label_smoothing=cfg.label_smoothing,
        class_weights=weights, pretrained=cfg.pretrained, weights=cfg.weights, seed=cfg.seed,
        image_size=cfg.image_size, channels_last=cfg.channels_last, backbone_lr_scale=cfg.backbone_lr_scale,
        coarse_groups=coarse_groups or None, mixup=cfg.mixup, mixstyle=cfg.mixstyle, drop_path=cfg.drop_path,
        sam_rho=cfg.sam, rank_loss=cfg.rank_loss, **_swa_schedule(cfg))
    if cfg.freeze_early_stages:
        early_stage_parts(module.model, cfg.freeze_early_stages)  # a model without such stages: refused before fitting
    return module


def _swa_schedule(cfg: TrainConfig) -> dict:
    """--swa-lr: the cosine decay ends where the SWA window starts, at that fraction of the peak, held after."""
    if cfg.swa_lr is None:
        return {}
    return {"lr_floor": cfg.swa_lr, "decay_fraction": (cfg.epochs - cfg.swa_epochs) / cfg.epochs}


def fit_split(cfg, run: Path, table, images, pre, train_idx, val_idx, callbacks=()) -> dict | None:
    """Train on one split in `run`; on global rank 0 finalise (calibrate, thresholds, save). Resumes last.ckpt."""
    run.mkdir(parents=True, exist_ok=True)
    targets, coarse_groups = loss_targets(table)
    module = build_module(cfg, table.classes, table.label_indices()[train_idx], coarse_groups)
    done = run / "training_done.json"  # written once fit returns: a kill during finalisation does not re-train
    if cfg.resume and done.exists():
        trained = json.loads(done.read_text())
    else:
        trained = fit_module(cfg, run, module, table, images, pre, train_idx, val_idx, callbacks, targets)
        if trained is None:  # not rank 0
            return None
        atomic_write_text(done, json.dumps(trained, indent=2))
    return finalize_split(cfg, run, module, trained["best_checkpoint"], table, images, pre, train_idx, val_idx,
                          seconds=trained["seconds"])


def fit_module(cfg, run: Path, module, table, images, pre, train_idx, val_idx, callbacks=(), targets=None
               ) -> dict | None:
    """Lightning fit from scratch or from last.ckpt; a kill or SIGTERM at any moment leaves the run resumable and
    its log holding finished epochs only. `targets`: what the loss sees per sample (sources.loss_targets; None: the
    labels). Returns the best checkpoint (rank 0) or None (other ranks)."""
    # Augmentation runs in DataLoader workers: torch gives each worker one thread, and on a busy CPU a
    # 2-thread torch process augments 10-30x slower (OpenMP spin-waits) than a 1-thread worker.
    workers = cfg.num_workers if cfg.num_workers is not None else min(4, max(1, (os.cpu_count() or 1) - 1))
    dm = LesionDataModule(images, table.label_indices(), train_idx, val_idx, pre, cfg.batch_size,
                          balanced=cfg.imbalance in ("sampler", "source-balanced"), seed=cfg.seed,
                          num_workers=workers, samples_per_epoch=cfg.samples_per_epoch, sources=source_codes(table),
                          augmentation=cfg.augmentation, targets=targets,
                          natural_classes=cfg.imbalance == "source-balanced")
    if cfg.extra.get("record_samples"):
        callbacks = [*callbacks, RecordSampledIndices(run, train_idx)]
    if cfg.extra.get("step_marker"):
        callbacks = [*callbacks, StepMarker(Path(cfg.extra["step_marker"]), float(cfg.extra.get("step_pause", 0)))]
    last = run / "checkpoints" / "last.ckpt"
    resuming = bool(cfg.resume and last.exists())
    if resuming:
        set_aside_log(run, checkpoint_epochs(last))
    trainer = make_trainer(cfg, run, callbacks)
    started = time.time()
    try:
        with sigterm_as_keyboard_interrupt():
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None)
    except BaseException as exc:
        if trainer.is_global_zero:
            settle_log(run, checkpoint_epochs(last))
        if isinstance(exc, SystemExit) and trainer.interrupted:  # Lightning turns Ctrl-C into sys.exit(1)
            raise TrainingInterrupted(f"training interrupted; finished epochs are kept in {last}: continue with "
                                      f"`melanoma train --resume {cfg.out}`") from None
        raise
    if not trainer.is_global_zero:
        return None
    settle_log(run, float("inf"))
    swa = run / "checkpoints" / "swa.ckpt"
    best = str(swa) if cfg.swa_epochs else trainer.checkpoint_callback.best_model_path or str(last)
    return {"best_checkpoint": str(Path(best).resolve()), "seconds": round(time.time() - started, 1)}


def train(cfg: TrainConfig, callbacks=()) -> dict:
    """Train as configured; returns {"run": path, "summary": headline numbers, ...}. See docs/DESIGN.md."""
    cfg = resolve_defaults(cfg.validate()).absolutize()
    pre = default_preprocessing(cfg.model, image_size=cfg.image_size, color_constancy=cfg.color_constancy,
                                detail_size=cfg.detail_size)
    cfg.image_size = int(pre["input_size"])
    cfg.precision = resolve_precision(cfg)  # measured once per machine; stored so a resume never re-decides
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run = prepare_run_dir(cfg)
    table, summary = load_training_table(cfg, run)
    started = time.time()
    images = decode_cache(table, pre)
    print(f"decoded {len(images)} images once into memory in {time.time() - started:.1f} s")
    if cfg.folds:
        return train_cross_validation(cfg, run, table, images, pre, callbacks)
    if cfg.holdout_source:
        train_idx, val_idx = holdout_source_split(table, cfg.holdout_source, cfg.data, cfg.holdout_max_images,
                                                  cfg.split_seed_or_seed())
        shared = int(shared_with_source(table, source_origin(table, cfg.holdout_source, cfg.data)).sum())
        print(f"held-out source {cfg.holdout_source}: {len(train_idx)} train / {len(val_idx)} validation images"
              + (f"; {shared} images both sources hold do neither" if shared else ""))
    else:
        train_idx, val_idx = splits_with_extras(table, None, cfg.val_fraction, cfg.split_seed_or_seed(),
                                                validate_extras=cfg.val_sources == "all")[0]
    result = fit_split(cfg, run, table, images, pre, train_idx, val_idx, callbacks)
    return {"run": str(run), **(result or {})}


def train_cross_validation(cfg, run: Path, table, images, pre, callbacks=()) -> dict:
    """Group-aware stratified K-fold: one run folder per fold (finished folds are skipped on resume)."""
    fold_results = []
    for k, (train_idx, val_idx) in enumerate(splits_with_extras(table, cfg.folds, cfg.val_fraction,
                                                                   cfg.split_seed_or_seed(),
                                                                   validate_extras=cfg.val_sources == "all")):
        fold_dir = run / f"fold-{k}"
        done = fold_dir / "result.json"
        if done.exists():
            print(f"fold {k}: already finished, reusing {done}")
            fold_results.append(json.loads(done.read_text()))
            continue
        print(f"fold {k + 1}/{cfg.folds}: {len(train_idx)} train / {len(val_idx)} validation images")
        result = fit_split(cfg, fold_dir, table, images, pre, train_idx, val_idx, callbacks)
        if result is None:  # not rank 0
            continue
        fold_results.append(result)
    if not fold_results:
        return {"run": str(run)}
    result = {"run": str(run), **summarize_cv(cfg, run, table, fold_results)}
    if cfg.fold_ensemble:
        result["ensemble"] = ship_fold_ensemble(cfg, run)
    return result


def ship_fold_ensemble(cfg, run: Path) -> str:
    """The K fold models as one model (run/ensemble): mean of their calibrated probabilities, its alert threshold
    and referral fitted on the out-of-fold predictions (each image scored by the fold that did not train on it)."""
    from melanoma.ensemble import build_ensemble

    out = run / "ensemble"
    if not (out / "model.json").exists():  # a resumed run keeps an ensemble already built
        build_ensemble([run], out, target_sensitivity=cfg.target_sensitivity,
                       bootstrap=int(cfg.extra.get("bootstrap", 1000)), seed=cfg.seed)
    print(f"fold ensemble: {out}")
    return str(out)
