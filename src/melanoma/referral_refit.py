"""Re-fit a model's referral without retraining (`melanoma referral`).

The referral (referral.py) refers a lesion when the model's confidence is below the `confidence_quantile` of its
validation lesions or its out-of-distribution score is above their `ood_quantile` (worst source). Both quantiles
are chosen when the model is trained; this re-embeds the model's validation images (the paths and labels in its
val_predictions.csv, which must still exist), fits the referral again -- at other quantiles, and with this
version's method (the layers `referral.tap_layers` picks) -- and writes it into a copy of the model (or the model
itself). The network's weights are left byte for byte as they were: only
model.json's referral part and the `extra.referral.*` tensors beside the weights are replaced, then the weights'
SHA-256 in model.json is renewed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from melanoma.artifacts import EXTRA_PREFIX, HASH_KEY, atomic_write_text, read_meta, write_safetensors
from melanoma.errors import ConfigError, DataError, ModelError


def refit_referral(run, confidence_quantile: float = 0.01, ood_quantile: float = 0.995, out=None) -> dict:
    """Re-fit RUN's referral limits on its validation images at the given quantiles; write them into `out` (a new
    model folder holding a copy of RUN's model files) or, with out=None, into RUN itself. The out-of-fold split is
    the one the model was fitted with, so the same quantiles give the same limits. Returns the old and new limits
    and the share of validation lesions referred per source."""
    from melanoma.artifacts import check_new_model_folder, copy_model_files
    from melanoma.finalize import fit_referral_on_validation, infer_validation_images, source_of, training_sources
    from melanoma.referral import softmax

    _check_quantiles(confidence_quantile, ood_quantile)
    run = Path(run)
    meta = read_meta(run)
    if out:
        check_new_model_folder(run, out)  # named now, not after minutes of embedding
    old = meta.get("referral") or {}
    if not old.get("thresholds"):
        raise ModelError(f"{run / 'model.json'}: the model has no referral to re-fit")
    paths, labels = _validation_images(run / "val_predictions.csv", meta["class_names"])
    model, pre, layers, temperature = _model_for_refit(run, meta)
    outputs, job = infer_validation_images(model, paths, pre, layers, "referral", [meta])
    probs = softmax(outputs[0], temperature)
    sources = [source_of(p, training_sources(meta)) for p in paths]
    referral_meta, tensors, refer, reasons = fit_referral_on_validation(
        model, layers, outputs, probs, labels, temperature, sources, int(pre["input_size"]), _fold_seed(meta),
        confidence_quantile=confidence_quantile, ood_quantile=ood_quantile)
    # in place: everything is written into a staging copy first and swapped in by renames at the end, so a kill
    # never leaves weights whose SHA-256 disagrees with model.json (a model no loader would accept)
    staging = None if out else _fresh_staging_folder(run)
    target = copy_model_files(run, out or staging)
    digest = _replace_referral_tensors(target, tensors)  # named referral.*, as fit_referral returns them
    stored = json.loads((target / "model.json").read_text())  # as stored (read_meta may normalise)
    stored["referral"] = referral_meta
    stored["thresholds"].update(referral_meta["thresholds"])
    stored[HASH_KEY] = digest
    atomic_write_text(target / "model.json", json.dumps(stored, indent=2))
    _rewrite_refer_columns(target / "val_predictions.csv", refer, reasons)
    if staging:
        target = _swap_in(staging, run)
    job.finish()
    return {"model": str(target / "model.json"), "images": len(paths),
            "old": {"confidence_quantile": old.get("confidence_quantile"), "ood_quantile": old.get("ood_quantile"),
                    "layers": old.get("layers") or [], **old["thresholds"]},
            "new": {"confidence_quantile": confidence_quantile, "ood_quantile": ood_quantile,
                    "layers": referral_meta.get("layers") or [], **referral_meta["thresholds"]},
            "validation": referral_meta["validation"]}


def _fresh_staging_folder(run: Path) -> Path:
    """RUN's sibling staging folder for an in-place re-fit, emptied of what a killed earlier re-fit left."""
    import shutil

    staging = run.resolve().parent / f".{run.resolve().name}.referral-staging"
    if staging.exists():
        shutil.rmtree(staging)
    return staging


def _swap_in(staging: Path, run: Path) -> Path:
    """Move the staging folder's files over RUN's (each keeping the permissions of the file it replaces; the
    weights first, then model.json, then the CSV), remove the staging folder, return RUN."""
    import os
    import stat

    for name in ("model.safetensors", "model.json", "val_predictions.csv"):
        if (staging / name).is_file():
            if (run / name).exists():
                os.chmod(staging / name, stat.S_IMODE((run / name).stat().st_mode))
            os.replace(staging / name, run / name)
    for leftover in staging.iterdir():
        leftover.unlink()
    staging.rmdir()
    return run


def _check_quantiles(confidence_quantile: float, ood_quantile: float) -> None:
    if not 0.0 <= confidence_quantile < 0.5:
        raise ConfigError(f"--confidence-quantile must be in [0, 0.5), got {confidence_quantile}")
    if not 0.5 < ood_quantile <= 1.0:
        raise ConfigError(f"--ood-quantile must be in (0.5, 1], got {ood_quantile}")


def _fold_seed(meta: dict) -> int:
    """The seed of the referral's out-of-fold split: stored since session 13; before, a trained run used its
    training seed and `melanoma ensemble` its --seed (default 0)."""
    if "fold_seed" in meta["referral"]:
        return int(meta["referral"]["fold_seed"])
    return 0 if "ensemble" in meta else int((meta.get("training") or {}).get("seed") or 0)


def _validation_images(csv_path: Path, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """The labelled rows of a model's val_predictions.csv: (paths, label indices)."""
    from melanoma.evaluate import read_predictions_csv

    if not csv_path.is_file():
        raise ModelError(f"{csv_path}: missing; re-fitting the referral needs the model's validation predictions")
    table = read_predictions_csv(csv_path, class_names)
    unknown = sorted({lab for lab in table.labels if lab is not None and lab not in class_names})
    if unknown or any(lab is None for lab in table.labels):
        raise DataError(f"{csv_path}: every row needs a label among the model's classes "
                        f"({'unknown: ' + ', '.join(unknown) if unknown else 'some rows have none'})")
    if len(table.paths) < 4:
        raise DataError(f"{csv_path}: {len(table.paths)} validation images; the referral needs at least 4")
    return list(table.paths), np.array([class_names.index(lab) for lab in table.labels])


def _model_for_refit(run: Path, meta: dict):
    """(torch model, preprocessing, the layers this version's referral reads, temperature the referral was fitted
    at). The layers are `referral.tap_layers`' choice, not necessarily the ones the model was fitted with: a
    re-fit brings an older model's referral up to this version's method."""
    from melanoma.artifacts import load_model
    from melanoma.referral import tap_layers

    model, _ = load_model(run)
    return model, meta["preprocessing"], tap_layers(model), float(meta["referral"].get("temperature") or 1.0)


def _replace_referral_tensors(folder: Path, tensors: dict) -> str:
    """Swap the `extra.referral.*` tensors of folder/model.safetensors for `tensors` (names without `extra.`);
    every other tensor is written back unchanged. Returns the new file's SHA-256."""
    import torch
    from safetensors import safe_open

    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        file_meta = fh.metadata()
        kept = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith(EXTRA_PREFIX + "referral.")}
    kept.update({EXTRA_PREFIX + k: torch.as_tensor(v).contiguous() for k, v in tensors.items()})
    return write_safetensors(path, kept, file_meta)


def _rewrite_refer_columns(csv_path: Path, refer: np.ndarray, reasons: list[str]) -> None:
    """Update the refer / refer_reason columns of a prediction CSV in place; everything else stays as written."""
    from melanoma.evaluate import update_prediction_csv

    update_prediction_csv(csv_path, [{"refer": "true" if flag else "false", "refer_reason": why}
                                     for flag, why in zip(refer, reasons)])
