"""After a split is trained: pick the best checkpoint, calibrate (temperature), choose the melanoma alert threshold,
fit the referral statistics, score the validation predictions, and write the model artifact. Also pools K folds."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from melanoma import fingerprint, input_check, metrics, priors
from melanoma.artifacts import atomic_write_text, check_new_model_folder, copy_model_files, save_model
from melanoma.errors import ConfigError, DataError, ModelError, ThresholdWarning
from melanoma.fastpath import machine
from melanoma.images import check_view_count
from melanoma.labelmaps import find_melanoma_class
from melanoma.predict import PredictionResult, Predictor, model_views, write_predictions_csv
from melanoma.referral import Referrer, embed, fit_referral, layer_width, softmax, source_masks, tap_layers
from melanoma.transforms import eval_transform


def infer(model: torch.nn.Module, images: list[torch.Tensor], pre: dict, batch_size: int = 64, layers=()):
    """Eval-preset logits, referral features (pre-logits, then the statistics of `layers`: referral.embed) and
    input statistics (input_check) for cached uint8 images; returns numpy (logits, features, image_stats)."""
    transform = eval_transform(pre)
    logits, features, stats = [], [], []
    model.eval()
    threads = torch.get_num_threads()
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            torch.set_num_threads(1)  # per-image transforms: one thread is 10x faster on a busy CPU
            x = torch.stack([transform(im) for im in images[start:start + batch_size]])
            torch.set_num_threads(threads)
            feats, out = embed(model, x, layers)
            logits.append(out.float().numpy())
            features.append(feats.float().numpy())
            stats.append(input_check.statistics(x, pre))
    return np.concatenate(logits), np.concatenate(features), np.concatenate(stats)


def _best_epoch(run: Path, monitor: str = "val/bal_acc") -> dict:
    """Epoch count and the epoch with the best monitored validation figure, read from the CSV log (model card)."""
    log = run / "logs" / "metrics.csv"
    if not log.exists():
        return {}
    import csv

    with log.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(monitor)]
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r[monitor]))
    return {"epochs_run": int(float(rows[-1]["epoch"])) + 1, "best_epoch": int(float(best["epoch"])) + 1}


def calibrate_and_threshold(logits, labels, class_names, melanoma_class, target_sensitivity):
    """Temperature (NLL on validation), ECE before/after, and the melanoma alert threshold on calibrated probs."""
    temperature = float(metrics.fit_temperature(logits, labels))
    probs = softmax(logits, temperature)
    calibration = {"temperature": temperature,
                   "ece_before": float(metrics.expected_calibration_error(softmax(logits), labels)),
                   "ece_after": float(metrics.expected_calibration_error(probs, labels))}
    threshold = None
    if melanoma_class is not None:
        mel = class_names.index(melanoma_class)
        threshold = float(metrics.choose_alert_threshold(labels == mel, probs[:, mel], target_sensitivity))
    return probs, calibration, threshold


def calibration_record(logits, labels, temperature: float = 1.0) -> dict:
    """model.json's calibration of a model that serves softmax(logits) as they are (`temperature`: the one it
    applied to get them): their ECE, and the temperature a refit on them would choose with the ECE it would give,
    recorded, not applied."""
    _, refit, _ = calibrate_and_threshold(logits, labels, None, None, 0.9)
    return {"temperature": temperature, "ece": refit["ece_before"], "refit_temperature": refit["temperature"],
            "ece_if_refit": refit["ece_after"]}


def write_predictions(path: Path, table, idx, probs, refer, reasons, threshold, melanoma_class) -> None:
    """Validation predictions in the shared CSV layout (predict.write_predictions_csv), with the true label."""
    mel = table.classes.index(melanoma_class) if melanoma_class else None
    p_mel = probs[:, mel] if mel is not None else np.zeros(len(probs))
    alert = p_mel >= threshold if threshold is not None else np.zeros(len(probs), bool)
    result = PredictionResult(paths=[str(table.samples[i].path) for i in idx], probs=probs, class_names=table.classes,
                              melanoma_probability=p_mel, alert=alert, refer=np.asarray(refer),
                              refer_reason=list(reasons), errors=[])
    write_predictions_csv(result, path, labels=[table.samples[i].label for i in idx])


def model_metadata(cfg, table, pre, calibration, threshold, referral_meta, headline, epochs: dict) -> dict:
    """model.json content (the single source of truth read by evaluate, predict, export and serve)."""
    summary_path = Path(cfg.out) / "data_summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    meta = {
        "architecture": cfg.model,
        "class_names": list(table.classes),
        "melanoma_class": find_melanoma_class(table.classes),
        "preprocessing": pre,
        "temperature": calibration["temperature"],
        "calibration": calibration,
        "thresholds": {"melanoma_alert": threshold, "target_sensitivity": cfg.target_sensitivity,
                       **referral_meta.get("thresholds", {})},
        "referral": referral_meta,
        "data": {"source": str(Path(cfg.data).resolve()),
                 "extra_sources": [str(Path(p).resolve()) for p in cfg.extra_data],
                 "images": len(table), "class_counts": data_summary.get("counts"),
                 "summary": data_summary},
        "metrics": headline,
        "training": {**cfg.to_dict(), **epochs},
        "model_card": {
            "input": "RGB dermoscopic image of one lesion (JPEG/PNG), any size; resized and centre-cropped as in "
                     "`preprocessing`",
            "output": "probability per class (temperature-scaled), melanoma alert, referral flag",
            "training_data": [Path(p).name or str(p) for p in [cfg.data, *cfg.extra_data]],
            "validated_on": validation_description(cfg),
            "expected_alert_share": metrics.expected_alert_share(headline.get("melanoma_sensitivity"),
                                                                 headline.get("melanoma_specificity")),
            "licence": "The training images are CC-BY-NC (ISIC Archive; HAM10000: Tschandl et al. 2018, Sci. Data "
                       "5:180161): use these weights non-commercially and cite the sources.",
        },
    }
    # limitations of THIS model, from the data it was trained and validated on (the report shows the same text)
    from melanoma.report import describe_limitations

    meta["model_card"]["limitations"] = " ".join(describe_limitations(meta))
    return meta


def validation_description(cfg) -> str:
    """Which images chose the checkpoint, the alert threshold and the referral statistics."""
    if cfg.holdout_source:
        return f"the held-out source {cfg.holdout_source} (never trained on)"
    if cfg.val_sources == "all" and cfg.extra_data:
        return "a group-aware share of every training source"
    return "a group-aware share of the primary data only"


def headline_metrics(m: dict) -> dict:
    """The few numbers shown in summaries (point values; the CIs stay in val_metrics.json)."""
    def value(entry):
        return entry.get("value") if isinstance(entry, dict) else entry

    mel = m.get("melanoma") or {}
    return {"balanced_accuracy": value(m.get("balanced_accuracy")), "accuracy": value(m.get("accuracy")),
            "melanoma_auc": value(mel.get("auc")), "melanoma_pauc": value(mel.get("pauc_above_80_sensitivity")),
            "melanoma_sensitivity": value(mel.get("sensitivity")),
            "melanoma_specificity": value(mel.get("specificity")), "n": m.get("n_images")}


def decode_validation_images(paths: list[str], pre: dict) -> list[torch.Tensor]:
    """A model's validation images (the paths its val_predictions.csv lists), decoded for `infer`; every path is
    checked before any is decoded, so a moved folder fails at once, naming the first missing image."""
    from melanoma.datamodule import decode_prepared

    check_validation_images(paths)
    return [decode_prepared(p, pre) for p in paths]


def check_validation_images(paths: list[str]) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ModelError(f"{missing[0]}: validation image missing ({len(missing)} of {len(paths)}; moved since "
                         "training?)")


def infer_validation_images(model, paths: list[str], pre: dict, layers, purpose: str, metas: list[dict]):
    """`infer` on a model's validation images, resumable: decoded and inferred chunk by chunk, each chunk saved
    (partial.PartialJob; `metas`: the model.json contents the outputs depend on). Returns ((logits, features,
    image_stats), job); call job.finish() once the outputs are written."""
    from melanoma.datamodule import decode_prepared
    from melanoma.partial import PartialJob

    check_validation_images(paths)  # all of them, once, before the first chunk
    settings = {"models": [{k: v for k, v in m.items() if k != "extra"} for m in metas], "pre": pre,
                "layers": list(layers)}
    job = PartialJob(purpose, settings, paths)
    names = ("logits", "features", "image_stats")
    parts = job.run(lambda chunk: dict(zip(names, infer(model, [decode_prepared(p, pre) for p in chunk], pre,
                                                        layers=layers))))
    return tuple(np.concatenate([part[name] for part in parts]) for name in names), job


def fit_referral_on_validation(model, layers, outputs, probs, labels, temperature: float, sources, input_size: int,
                               seed: int, **quantiles):
    """Fit the referral (referral.fit_referral, worst-source limits; `quantiles`: its confidence_quantile and
    ood_quantile, else its defaults) and the input check on a model's validation outputs (`infer`'s logits,
    features, image statistics), then refer those images with them.
    Returns (referral metadata, referral tensors, refer [N] bool, reasons [N])."""
    logits, features, image_stats = outputs
    referral_meta, tensors = fit_referral(features, logits, labels, temperature, seed=seed, sources=sources,
                                          layers=layers, layer_dim=layer_width(model, layers, input_size), **quantiles)
    referral_meta["input_check"] = input_check.fit(image_stats)
    refer, reasons = Referrer(referral_meta, tensors).decide(probs, features, logits, image_stats)
    return referral_meta, tensors, refer, reasons


def finalize_split(cfg, run: Path, module, best_ckpt: str, table, images, pre, train_idx, val_idx,
                   seconds: float) -> dict:
    """Best weights -> calibration, alert threshold, referral, metrics, model artifact and result.json."""
    state = torch.load(best_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    model = module.model.eval()
    labels = table.label_indices()[val_idx]
    layers = tap_layers(model)  # the referral's intermediate-layer statistics (referral.py)
    logits, features, image_stats = infer(model, [images[i] for i in val_idx], pre, layers=layers)
    mel_class = find_melanoma_class(table.classes)
    probs, calibration, threshold = calibrate_and_threshold(logits, labels, table.classes, mel_class,
                                                            cfg.target_sensitivity)
    roots = [str(Path(d).resolve()) for d in [cfg.data, *cfg.extra_data]]
    sources = [source_of(table.samples[i].path, roots) for i in val_idx]  # several: worst-source referral limits
    referral_meta, tensors, refer, reasons = fit_referral_on_validation(
        model, layers, (logits, features, image_stats), probs, labels, calibration["temperature"], sources,
        int(pre["input_size"]), cfg.seed)
    full = metrics.compute_metrics(labels, probs, table.classes, melanoma_class=mel_class,
                                   alert_threshold=threshold, bootstrap=int(cfg.extra.get("bootstrap", 1000)),
                                   seed=cfg.seed, groups=[table.samples[i].group for i in val_idx])
    atomic_write_text(run / "val_metrics.json", json.dumps(full, indent=2))
    head = headline_metrics(full)
    epochs = _best_epoch(run, cfg.monitored_metric())
    tensors = {**tensors, **fingerprint.load(cfg.out)}  # the training set's hashes travel with the weights
    save_model(model, model_metadata(cfg, table, pre, calibration, threshold, referral_meta, head, epochs), run,
               tensors)
    write_predictions(run / "val_predictions.csv", table, val_idx, probs, refer, reasons, threshold, mel_class)
    np.savez(run / "val_outputs.npz", val_idx=np.asarray(val_idx), logits=logits, probs=probs, refer=refer)
    result = {"run": str(run), "n_train": int(len(train_idx)), "n_val": int(len(val_idx)), **head,
              "temperature": calibration["temperature"], "melanoma_alert": threshold,
              "seconds": round(seconds, 1), **epochs, "precision": cfg.precision, "machine": machine(cfg.accelerator)}
    atomic_write_text(run / "result.json", json.dumps(result, indent=2))
    auc = head["melanoma_auc"]
    print(f"{run}: balanced accuracy {head['balanced_accuracy']:.3f}, "
          f"melanoma AUC {'-' if auc is None else f'{auc:.3f}'}, "
          f"{result['seconds']:.0f} s")
    return {"summary": result, **result}


def _mean_sd(values) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return {"mean": float(arr.mean()) if len(arr) else None,
            "sd": float(arr.std(ddof=1)) if len(arr) > 1 else None, "per_fold": [float(v) for v in arr]}


def summarize_cv(cfg, run: Path, table, fold_results: list[dict]) -> dict:
    """Pool out-of-fold predictions, score them with CIs, report mean ± sd over folds, ship the best fold's model."""
    n, classes = len(table), table.classes
    oof = np.full((n, len(classes)), np.nan)
    for r in fold_results:
        saved = np.load(Path(r["run"]) / "val_outputs.npz")
        oof[saved["val_idx"]] = saved["probs"]
    covered = ~np.isnan(oof).any(axis=1)
    labels = table.label_indices()
    mel_class = find_melanoma_class(classes)
    threshold = None
    if mel_class is not None:
        mel = classes.index(mel_class)
        threshold = float(metrics.choose_alert_threshold(labels[covered] == mel, oof[covered, mel],
                                                         cfg.target_sensitivity))
    pooled = metrics.compute_metrics(labels[covered], oof[covered], classes, melanoma_class=mel_class,
                                     alert_threshold=threshold, bootstrap=int(cfg.extra.get("bootstrap", 1000)),
                                     seed=cfg.seed, groups=[s.group for s, c in zip(table.samples, covered) if c])
    from melanoma.data import sparse_classes
    from melanoma.sources import primary_indices

    summary = {"folds": len(fold_results), "images": int(covered.sum()),
               "sparse_classes": sparse_classes(table.subset(primary_indices(table)), cfg.folds),
               "balanced_accuracy": _mean_sd(r["balanced_accuracy"] for r in fold_results),
               "melanoma_auc": _mean_sd(r["melanoma_auc"] for r in fold_results),
               "accuracy": _mean_sd(r["accuracy"] for r in fold_results),
               "seconds": round(sum(r["seconds"] for r in fold_results), 1),
               "out_of_fold": headline_metrics(pooled), "out_of_fold_alert_threshold": threshold}
    atomic_write_text(run / "cv_summary.json", json.dumps(summary, indent=2))
    atomic_write_text(run / "val_metrics.json", json.dumps(pooled, indent=2))
    _ship_best_fold(run, fold_results, summary, threshold)
    _concat_fold_predictions(run, fold_results)
    return {"summary": summary, "folds": fold_results}


def _ship_best_fold(run: Path, fold_results, summary: dict, threshold) -> None:
    """Root model = the fold with the best validation balanced accuracy; alert threshold from pooled OOF."""
    best = max(fold_results, key=lambda r: r["balanced_accuracy"] or 0)
    src = Path(best["run"])
    shutil.copyfile(src / "model.safetensors", run / "model.safetensors")
    meta = json.loads((src / "model.json").read_text())
    meta["thresholds"]["melanoma_alert"] = threshold
    meta["cv"] = {**summary, "shipped_fold": src.name}
    atomic_write_text(run / "model.json", json.dumps(meta, indent=2))


def _concat_fold_predictions(run: Path, fold_results) -> None:
    """RUN/val_predictions.csv = all folds' validation predictions (out-of-fold), one header."""
    lines: list[str] = []
    for r in fold_results:
        text = (Path(r["run"]) / "val_predictions.csv").read_text().splitlines()
        lines.extend(text if not lines else text[1:])
    atomic_write_text(run / "val_predictions.csv", "\n".join(lines) + "\n")


MIN_MELANOMAS_FOR_THRESHOLD = 30  # fewer: one melanoma moves the achieved sensitivity by > 3 points (warn)
def _training_images_among(paths: list[str], model_dir: Path, meta: dict) -> int:
    """How many of the predicted images the model was trained on: its stored fingerprint (pixels, phash, ISIC
    id) when it has one; otherwise files inside, or named like a file of, a training folder of model.json."""
    from melanoma.audit import CROSS_SET_PHASH_DISTANCE
    from melanoma.evaluate import training_sources
    from melanoma.images import scan_paths

    files = [p for p in paths if p and Path(p).is_file()]
    weights = model_dir / "model.safetensors"
    prints = fingerprint.read_model_file(weights) if weights.is_file() else None
    if prints is not None:
        samples = [SimpleNamespace(path=Path(p)) for p in files]  # matches() reads .path only
        return len(fingerprint.matches(prints, samples, scan_paths(files), CROSS_SET_PHASH_DISTANCE))
    folders = [Path(f).resolve() for f in training_sources(meta) if Path(f).is_dir()]
    names = {f.name for folder in folders for f in folder.rglob("*") if f.is_file()}
    return sum(any(Path(p).resolve().is_relative_to(f) for f in folders) or Path(p).name in names
               for p in paths if p)


def _warn_about(preds_path: Path, is_mel, paths, model_dir: Path, meta: dict, own_validation: bool) -> None:
    """Threshold warnings: too few melanomas for a stable threshold; predictions made on training images."""
    if is_mel.sum() < MIN_MELANOMAS_FOR_THRESHOLD:
        warnings.warn(f"{preds_path}: only {int(is_mel.sum())} melanomas; a threshold chosen on fewer than "
                      f"{MIN_MELANOMAS_FOR_THRESHOLD} is unstable (each melanoma moves the sensitivity by "
                      f"{100 / max(1, is_mel.sum()):.0f} points)", ThresholdWarning, stacklevel=3)
    if own_validation:  # the run's held-out validation images: not trained on, by construction
        return
    seen = _training_images_among(paths, model_dir, meta)
    if seen:
        warnings.warn(f"{preds_path}: {seen} of {len(paths)} images also occur in the model's training data; a "
                      "threshold chosen on them is optimistic (use images the model never saw)", ThresholdWarning,
                      stacklevel=3)


def training_sources(meta: dict) -> list[str]:
    """The resolved folders of a model's training sources (primary first), from model.json's `data`."""
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    return [str(p) for p in [data.get("source"), *(data.get("extra_sources") or [])] if p]


def source_of(path: str, roots: list[str]) -> str:
    """The folder name of the source root `path` lies under (the deepest one), else "other"."""
    parents = {str(p) for p in Path(path).resolve().parents}
    under = [r for r in roots if r in parents]
    return Path(max(under, key=len)).name if under else "other"


def worst_source_threshold(is_mel, p_mel, sources: list[str], target: float) -> float:
    """The highest threshold that keeps `target` sensitivity on EVERY source with at least 5 melanomas and 5 other
    images (the minimum of the per-source thresholds): an alert for a clinic unlike any one source."""
    thresholds = [float(metrics.choose_alert_threshold(is_mel[here], p_mel[here], target))
                  for _, here in source_masks(sources) if is_mel[here].sum() >= 5 and (~is_mel[here]).sum() >= 5]
    if not thresholds:
        raise DataError("no source has 5 melanoma and 5 other labelled images: cannot choose a per-source threshold")
    return min(thresholds)


def rethreshold(run, target_sensitivity: float, predictions=None, out=None, per_source: bool | None = None,
                detail_levels=None, prior_correction: str | None = None, tta_views: int | None = None) -> dict:
    """Re-choose the melanoma alert threshold of a model without retraining. From the run's stored validation
    (CV: out-of-fold) predictions, for another operating point; or, with `predictions` (the predictions.csv that
    `melanoma evaluate` wrote on a clinic's own labelled images), for that clinic: a threshold chosen on one
    source does not keep its sensitivity on another (docs, cross-source check).

    Writes the new threshold (and where it came from) into `out`, a new model folder holding a copy of RUN's
    model files, or, with out=None, into RUN/model.json itself. Warns (ThresholdWarning) when the predictions
    hold fewer than 30 melanomas or images the model was trained on. per_source=True: the lowest of the thresholds
    that reach the target on each training source's images separately (`worst_source_threshold`); None: as the
    model's alert was chosen (model.json). Returns old and new values and the achieved operating point (per source
    too). detail_levels (shorter sides in px, below the model's detail_size): also fit the detail calibration on
    the validation images reduced to each level (`detail_calibration`); without them an existing one is kept (its
    logit shifts then apply around the new threshold). prior_correction ("training-mix" or "none"; None: keep the
    model's): move the probabilities to the class mix of the model's validation labels, or back to the balanced
    training classes (melanoma.priors) before the threshold is chosen; the stored validation predictions are
    rewritten with the new probabilities, and a detail calibration must then be refitted (--detail-levels).
    tta_views (1-8; None: keep the model's): predict the validation images again averaging that many test-time
    augmentation views, choose the threshold (and fit any detail levels) on those probabilities, store the count
    (model.json test_time_augmentation: predict, evaluate and the service then average them by default) and the new
    validation predictions; a detail calibration must then be refitted too."""
    from melanoma import detail_calibration
    from melanoma.artifacts import read_meta
    from melanoma.evaluate import read_predictions_csv
    from melanoma.labelmaps import MELANOMA_NAMES, normalise_label

    run = Path(run)
    if not 0.0 < target_sensitivity <= 1.0:
        raise ConfigError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    meta_path = run / "model.json"
    preds_path = Path(predictions) if predictions else run / "val_predictions.csv"
    needs = ("`melanoma threshold` needs a run folder written by `melanoma train`"
             + (" and a predictions.csv written by `melanoma evaluate`" if predictions else ""))
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: missing; {needs}")
    meta = read_meta(run)  # a corrupt model.json is named before the predictions are looked at
    views = _views_change(meta, tta_views, predictions, bool(detail_levels))
    if detail_levels:
        if predictions:
            raise ConfigError("--detail-levels predicts the model's own validation images again at each level; "
                              "it cannot be combined with --predictions")
        detail_calibration.check_levels(detail_levels, (meta.get("preprocessing") or {}).get("detail_size"))
        if out:
            check_new_model_folder(run, out)  # named now, not after minutes of prediction
    if not preds_path.is_file():
        raise ModelError(f"{preds_path}: missing; {needs}")
    mel = meta.get("melanoma_class")
    if mel is None or not isinstance(meta.get("thresholds"), dict):
        raise ModelError(f"{meta_path}: the model has no melanoma class, so it has no alert threshold")
    table = read_predictions_csv(preds_path, meta["class_names"])
    if views:  # the threshold (and everything after it) follows the probabilities the model will give
        revalidated, views_job = _validation_at_views(run, table, views)
        table.probs = revalidated.probs
    prior, moved = _prior_change(run, meta, prior_correction, bool(detail_levels),
                                 None if predictions else table.labels)
    table.probs = priors.reweight(table.probs, moved)
    labelled = np.array([label is not None for label in table.labels], dtype=bool)
    names = {normalise_label(n) for n in (mel, *MELANOMA_NAMES)}
    is_mel = np.array([label is not None and normalise_label(label) in names for label in table.labels],
                      dtype=bool)[labelled]
    p_mel = table.probs[labelled, meta["class_names"].index(mel)]
    if is_mel.sum() < 5 or (~is_mel).sum() < 5:
        raise DataError(f"{preds_path}: {int(is_mel.sum())} melanoma and {int((~is_mel).sum())} other labelled "
                        "images; choosing a threshold needs at least 5 of each (far more for a stable one)")
    _warn_about(preds_path, is_mel, [p for p, ok in zip(table.paths, labelled) if ok], run, meta, not predictions)
    if per_source is None:  # keep how this model's alert was chosen
        per_source = meta["thresholds"].get("melanoma_alert_policy") == "worst source"
    paths = [p for p, ok in zip(table.paths, labelled) if ok]
    roots = training_sources(meta)
    sources = [source_of(p, roots) for p in paths]
    if per_source:
        new = worst_source_threshold(is_mel, p_mel, sources, target_sensitivity)
    else:
        new = float(metrics.choose_alert_threshold(is_mel, p_mel, target_sensitivity))
    old = meta["thresholds"].get("melanoma_alert")
    weights = priors.weights_of({**meta, "prior_correction": prior})
    detail = (detail_calibration.fit(run, detail_levels, target_sensitivity, per_source, new, paths, is_mel,
                                     class_weights=weights, views=views)
              if detail_levels else None)  # before anything is written: a bad image leaves no half-made folder
    target_dir = copy_model_files(run, out) if out else run
    meta = json.loads((target_dir / "model.json").read_text())  # as stored (read_meta may normalise)
    flagged = p_mel >= new
    achieved = operating_points(is_mel, flagged, sources)
    sensitivity, specificity = float(flagged[is_mel].mean()), float((~flagged[~is_mel]).mean())
    meta["thresholds"].update(melanoma_alert=new, target_sensitivity=target_sensitivity,
                              melanoma_alert_source=str(preds_path.resolve()) if predictions else "validation",
                              melanoma_alert_policy="worst source" if per_source else "pooled",
                              melanoma_alert_by_source=achieved)
    if detail:
        meta["detail_calibration"] = detail
    if views:
        _store_views(meta, target_dir / "val_predictions.csv", revalidated, table, views)
    if moved is not None:
        meta["prior_correction"] = prior
        if prior is None:
            meta.pop("prior_correction")
    if (moved is not None or views) and not predictions:  # the stored validation outputs follow the model's
        _rewrite_probabilities(target_dir / "val_predictions.csv", table, mel, new)  # probabilities and alert
    if isinstance(meta.get("model_card"), dict):  # what the card promises follows the new operating point
        from melanoma.report import describe_limitations, describe_views  # lazy: report pulls in matplotlib

        meta["model_card"]["expected_alert_share"] = metrics.expected_alert_share(sensitivity, specificity)
        meta["model_card"]["limitations"] = " ".join(describe_limitations(meta))  # and the project's latest figures
        if moved is not None:
            meta["model_card"]["prior_correction"] = priors.describe(meta)
        if views:
            meta["model_card"]["test_time_augmentation"] = describe_views(meta)
    if not predictions and isinstance(meta.get("metrics"), dict):  # the headline "at the alert" figures too
        meta["metrics"].update(melanoma_sensitivity=sensitivity, melanoma_specificity=specificity)
        if moved is not None or views:  # new probabilities: every headline figure is measured again on them
            meta["metrics"].update(_headline_of(table, meta["class_names"], mel, new))
    if (moved is not None or views) and not predictions:  # and their calibration
        meta["calibration"] = _served_calibration(table, meta)
    atomic_write_text(target_dir / "model.json", json.dumps(meta, indent=2))
    if views:
        views_job.finish()
    return {"model": str(target_dir / "model.json"), "predictions": str(preds_path),
            "target_sensitivity": target_sensitivity, "old": old, "new": new, "per_source": per_source,
            "sensitivity": sensitivity, "specificity": specificity,
            "n_melanoma": int(is_mel.sum()), "n_other": int((~is_mel).sum()), "by_source": achieved,
            "detail_calibration": meta.get("detail_calibration"), "detail_calibration_refitted": bool(detail),
            "prior_correction": meta.get("prior_correction"), "prior_correction_changed": moved is not None,
            "tta_views": model_views(meta), "tta_views_changed": bool(views)}


def _views_change(meta: dict, tta_views: int | None, predictions, refitting_detail: bool) -> int | None:
    """The new test-time view count for `rethreshold`, or None when it stays. A model with a detail calibration
    needs it refitted (its shifts were fitted on the old views' probabilities); a clinic's predictions.csv carries
    no record of its views, so it cannot set them."""
    if tta_views is None or tta_views == model_views(meta):
        return None
    check_view_count(tta_views)
    if predictions:
        raise ConfigError("--tta-views predicts the model's own validation images again with that many views; it "
                          "cannot be combined with --predictions (set the views first, `melanoma threshold MODEL "
                          "--tta-views N`, then evaluate the clinic's images with that model and choose from them)")
    if meta.get("detail_calibration") and not refitting_detail:
        raise ConfigError("the model has a detail calibration fitted on its current views' probabilities; a new "
                          "view count needs it refitted: add --detail-levels "
                          + " ".join(str(lv["shorter_side"]) for lv in meta["detail_calibration"]["levels"]))
    return int(tta_views)


def _validation_at_views(run: Path, table, views: int):
    """The model's validation images (the rows of `table`, its val_predictions.csv) predicted again averaging
    `views` test-time views, as the model's probabilities are given (prior correction; no detail shift: they are at
    the detail it trained on). Resumable (a kill keeps the chunks done); returns (PredictionResult row for row with
    `table`, the job to finish once the outputs are written)."""
    check_validation_images(table.paths)
    predictor = Predictor.load(run)
    predictor.detail_calibration = None
    result, job = predictor.predict_resumable(f"validation images at {views} views", table.paths, tta_views=views,
                                              progress=sys.stderr.isatty())
    if result.errors:
        path, reason = result.errors[0]
        raise DataError(f"{path}: {reason} (a validation image of the model; nothing was written)")
    return result, job


def _store_views(meta: dict, csv_path: Path, result, table, views: int) -> None:
    """model.json's test_time_augmentation (removed for one view) and the validation predictions made with it."""
    if views == 1:
        meta.pop("test_time_augmentation", None)
    else:
        meta["test_time_augmentation"] = {"views": views, "fitted_on": "validation"}
    write_predictions_csv(result, csv_path, labels=table.labels)


def _labelled_rows(table, class_names: list[str]) -> tuple[list[int], np.ndarray]:
    """(rows of a prediction table labelled with one of the model's classes, their class indices)."""
    known = [i for i, label in enumerate(table.labels) if label in class_names]
    return known, np.array([class_names.index(table.labels[i]) for i in known], dtype=int)


def _served_calibration(table, meta: dict) -> dict:
    """model.json's calibration section measured again on the probabilities the model now gives on its validation
    images (after a new prior correction or view count): their ECE, and the further temperature a refit on them
    would choose (on their log-probabilities) with the ECE it would give, recorded, not applied (as `ensemble`
    records it)."""
    known, labels = _labelled_rows(table, meta["class_names"])
    log_probs = np.log(np.clip(table.probs[known], 1e-12, 1.0))  # softmax(log p) == p: the served probabilities
    return {**calibration_record(log_probs, labels, meta.get("temperature", 1.0)),
            "measured_on": f"validation, probabilities as served ({model_views(meta)} view(s))"}


def _headline_of(table, class_names: list[str], melanoma_class: str, threshold: float) -> dict:
    """headline_metrics of a model's stored validation predictions (rows labelled with one of its classes)."""
    known, labels = _labelled_rows(table, class_names)
    computed = metrics.compute_metrics(labels, table.probs[known], class_names, melanoma_class=melanoma_class,
                                       alert_threshold=threshold, bootstrap=0)
    return {k: v for k, v in headline_metrics(computed).items() if v is not None}


def _rewrite_probabilities(csv_path: Path, table, melanoma_class: str, threshold: float) -> None:
    """The class probabilities, prediction, confidence, melanoma probability and alert of a prediction CSV after a
    prior correction changed (table.probs: the new probabilities, row for row); the rest stays as written."""
    from melanoma.evaluate import update_prediction_csv

    mel = table.class_names.index(melanoma_class)
    updates = []
    for row in table.probs:
        top = int(np.argmax(row))
        updates.append({**{c: f"{p:.6f}" for c, p in zip(table.class_names, row)},
                        "prediction": table.class_names[top], "confidence": f"{row[top]:.6f}",
                        "melanoma_probability": f"{row[mel]:.6f}",
                        "melanoma_alert": "true" if row[mel] >= threshold else "false"})
    update_prediction_csv(csv_path, updates)


def _prior_change(run: Path, meta: dict, method: str | None, refitting_detail: bool, validation_labels=None):
    """(the model's prior_correction section after `method`, weights moving probabilities made under the current
    one there, or None for no change). The training mix is read from the labels of RUN/val_predictions.csv
    (`validation_labels` when the caller has read them already), also when the threshold is chosen on a clinic's
    predictions. A change on a model with a detail calibration needs it refitted (its shifts were fitted around the
    old probabilities)."""
    from melanoma.evaluate import read_predictions_csv

    current = meta.get("prior_correction")
    if method is None:
        return current, None
    if method not in priors.METHODS:
        raise ConfigError(f"--prior-correction {method}: one of {', '.join(priors.METHODS)}")
    if method == "auto":
        method = priors.method_for(meta)
    if method == "none":
        section = None
    else:
        if validation_labels is None:
            own = run / "val_predictions.csv"
            if not own.is_file():
                raise ModelError(f"{own}: missing; the training mix is read from the model's validation labels")
            validation_labels = read_predictions_csv(own, meta["class_names"]).labels
        section = priors.training_mix(meta, validation_labels)
    if meta.get("detail_calibration") and not refitting_detail and section != current:
        raise ConfigError("the model has a detail calibration fitted around its current probabilities; changing "
                          "the prior correction needs it refitted: add --detail-levels "
                          + " ".join(str(lv["shorter_side"]) for lv in meta["detail_calibration"]["levels"]))
    n = len(meta["class_names"])
    return section, priors.change(priors.weights_of(meta), priors.weights_of({**meta, "prior_correction": section}), n)


def operating_points(is_mel, flagged, sources: list[str]) -> dict:
    """{source: {sensitivity, specificity, alert_share, n}} of an alert (None where a source lacks a class)."""
    out = {}
    for name, here in source_masks(sources):
        mel, other = flagged[here & is_mel], flagged[here & ~is_mel]
        out[name] = {"sensitivity": float(mel.mean()) if len(mel) else None,
                     "specificity": float((~other).mean()) if len(other) else None,
                     "alert_share": float(flagged[here].mean()), "n": int(here.sum())}
    return out
