"""`melanoma report FOLDER`: one self-contained HTML page (FOLDER/report.html, PNGs embedded as base64, opens
offline) plus its own PNGs in FOLDER/report/. FOLDER is a training run or a `melanoma evaluate` output folder.

Training run: model card (model.json), data (class distribution, one sample per class, the audit summary from
data_summary.json), training curves (logs/metrics.csv; CV: fold-*/logs/metrics.csv) with a fit diagnosis, and
validation results from val_predictions.csv (confusion matrix, ROC/PR with the alert operating point,
reliability diagram, per-class table with 95% CIs, most confident errors). A missing piece (no log yet, no
predictions, dataset not reachable) is stated in its section; the report is still written.

Evaluate folder (metrics.json, predictions.csv and evaluate's plots): the evaluated model's card, the evaluated
data (scored / excluded / total, the training-overlap check, label map, bootstrap), the results with evaluate's
own plots, and the most confident errors.

Text is written for a reader: lists joined, numbers rounded, no Python reprs. The limitations in the model card
are derived from the data the model was actually trained and validated on (model.json's data section), not
copied from a stock text (`describe_limitations`).

Fit diagnosis rules (`diagnose_fit`, on per-epoch means; "bal. acc." = balanced accuracy, else accuracy):
1. fewer than MIN_EPOCHS epochs                                             -> "not enough epochs to judge"
2. train bal. acc. - val bal. acc. > OVERFIT_GAP at the last epoch, or
   val loss at the end > (1 + VAL_LOSS_RISE) x its minimum, reached >= 2 epochs before the end, while the
   train loss kept falling                                                  -> "over-fitting"
3. train bal. acc. at the last epoch < UNDERFIT_TRAIN_SCORE (cannot even fit the training data), or
   val bal. acc. of the last epoch > best of the epochs before the last two + STILL_IMPROVING
   (stopped while still improving)                                          -> "under-fitting"
4. otherwise                                                                -> "good fit"
Training metrics are measured on augmented, class-balanced batches, so they read a little low.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from melanoma import metrics, plots, priors
from melanoma.errors import DataError, MelanomaError
from melanoma.predict import model_views

MIN_EPOCHS = 3
OVERFIT_GAP = 0.15
VAL_LOSS_RISE = 0.10
UNDERFIT_TRAIN_SCORE = 0.60
STILL_IMPROVING = 0.02
GALLERY_SIZE = 12
THUMBNAIL = 200  # pixels, longest side
REPORT_BOOTSTRAP = 1000


# --------------------------------------------------------------------------------------------- small helpers


def _esc(value) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _img(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded as a base64 data URI (the page works offline, as one file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


class _Html(str):
    """A table cell that is already HTML (built from escaped parts): not escaped again."""


def _text_html(text: str) -> str:
    """Escaped text; `code` spans (as in model.json's card) become <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _cell(value) -> str:
    return value if isinstance(value, _Html) else _text_html(_readable(value))


def _table(header, rows) -> str:
    """An HTML table (every cell made readable and escaped); header None = no header row (key/value tables)."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _bullets(items) -> _Html:
    return _Html("<ul>" + "".join(f"<li>{_text_html(i)}</li>" for i in items) + "</ul>")


def _readable(value) -> str:
    """Text for a reader, never a Python repr: lists joined, dicts as 'key value', yes/no, rounded numbers."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _fmt(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_readable(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{str(k).replace('_', ' ')} {_readable(v)}" for k, v in value.items()) or "none"
    return str(value)


def _read_json(path: Path):
    """Parsed JSON or None when the file is missing."""
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(entry, digits: int = 3) -> str:
    """'0.871 (0.842-0.897)' for a {"value", "ci"} entry."""
    if entry is None:
        return "n/a"
    if isinstance(entry, (int, float)):
        return _fmt(float(entry), digits)
    text = _fmt(entry["value"], digits)
    if entry.get("ci"):
        text += f" ({entry['ci'][0]:.{digits}f}-{entry['ci'][1]:.{digits}f})"
    return text


def _section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def _guarded(build, *args) -> str:
    """Run a section builder; a problem with one input becomes a note instead of a crash of the whole report."""
    try:
        return build(*args)
    except (MelanomaError, OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        return _note(f"This part could not be built: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")


# ------------------------------------------------------------------------------------------------ model card


STOCK_LIMITATIONS_START = "Trained on ISIC archive images (the sources above)"  # finalize.LIMITATIONS, any model
SMALL_CLASS = 50       # training images below which a class's predictions are not to be trusted
SMALL_TRAINING_SET = 1000  # images: below this a model is a pipeline check, not evidence
FEW_MELANOMAS = 30     # melanomas below which sensitivity and AUC carry very wide intervals


def _source_name(path) -> str:
    return Path(str(path)).name or str(path)


def _training_counts(meta: dict) -> tuple[int | None, dict, int, dict]:
    """(primary images, primary images per class, extra training-only images, all training images per class)."""
    data = meta.get("data") or {}
    summary = data.get("summary") or {}
    counts = data.get("class_counts") or summary.get("counts") or {}
    extra = summary.get("extra") or {}
    primary = summary.get("n_images") or (sum(counts.values()) if counts else None)
    totals = {c: counts.get(c, 0) + (extra.get("counts") or {}).get(c, 0)
              for c in meta.get("class_names", counts)}
    return primary, counts, int(extra.get("n_images") or 0), totals


def describe_training_data(meta: dict) -> str:
    """'1,987 images of Train (split into training and validation) + 8,194 training-only images of ham10000'."""
    data = meta.get("data") or {}
    if not data.get("source"):
        return "not recorded in the model file"
    primary, _, n_extra, _ = _training_counts(meta)
    folds = (meta.get("training") or {}).get("folds")
    split = f"{folds}-fold cross-validation" if folds else "split into training and validation"
    count = _readable(primary) if primary else "an unrecorded number of"
    text = f"{count} images of {_source_name(data['source'])} ({split})"
    extras = [_source_name(e) for e in data.get("extra_sources") or []]
    if extras and (meta.get("training") or {}).get("val_sources") == "all":
        text += f" + {n_extra:,} images of {' and '.join(extras)} (split the same way; copies and other photos " \
                f"of {_source_name(data['source'])} lesions left out)"
    elif extras:
        text += f" + {n_extra:,} training-only images of {' and '.join(extras)} (after leaving out copies and " \
                "other photos of the validation lesions)"
    return text


def describe_views(meta: dict) -> str:
    """What model.json's test_time_augmentation means for a reader of the model card."""
    views = model_views(meta)
    if views == 1:
        return "none: one view per image"
    return (f"{views} views per image (flips and 90-degree rotations), their probabilities averaged; the alert "
            "threshold was chosen on those averages; the referral decides on the un-augmented view")


def describe_limitations(meta: dict) -> list[str]:
    """The limitations of THIS model, from the data it was actually trained and validated on (model.json)."""
    data = meta.get("data") or {}
    if not data.get("source"):
        return ["The model file does not record its training data: its limitations cannot be stated. Treat it as "
                "unvalidated."]
    primary, _, n_extra, totals = _training_counts(meta)
    total = (primary or 0) + n_extra
    items = []
    if total and total < SMALL_TRAINING_SET:
        items.append(f"Trained on {total:,} images only: far too few for a skin-lesion classifier. Treat its "
                     "outputs as a check that the pipeline runs, not as evidence about any lesion.")
    small = {c: n for c, n in totals.items() if n < SMALL_CLASS}
    if small and len(small) == len(totals):
        items.append(f"Every class has fewer than {SMALL_CLASS} training images: no class can be recognised "
                     "reliably.")
    elif small:
        items.append("Few training images for " + ", ".join(f"{c} ({n:,})" for c, n in small.items())
                     + f": do not rely on its output for {'this class' if len(small) == 1 else 'these classes'}.")
    n_val = (meta.get("metrics") or {}).get("n")
    first = _source_name(data["source"])
    validated_on = (meta.get("model_card") or {}).get("validated_on") or ""
    training = meta.get("training") or {}
    held_out = training.get("holdout_source")
    if held_out or (training.get("val_sources") == "all" and data.get("extra_sources")):
        items.append(f"Validation, the alert threshold and the calibration come from {validated_on}"
                     + (f" ({n_val:,} validation images)." if n_val else "."))
    else:
        items.append(f"Validation, the alert threshold and the calibration come from {first} only"
                     + (f" ({n_val:,} validation images)" if n_val else "")
                     + (": the extra sources only train." if data.get("extra_sources") else "."))
    if not data.get("extra_sources"):
        items.append(f"One source only ({first}): the model has seen no other clinic, camera or population, and "
                     "can learn the look of its source instead of the lesion.")
    items.append(("Measured on one source left out of training; other clinics can differ again. "
                  if held_out else "Not measured on images from a source left out of training. ")
                 + "In this project's leave-one-source-out check (docs/results.md: trained on HAM10000, scored "
                 "on the older ISIC archive's own images) the new source cost 0.03-0.19 melanoma AUC, depending on "
                 "the recipe (about 0.88-0.90 on the training source, 0.71-0.85 there), and an alert chosen for 90% "
                 "sensitivity on the training source caught 67-95% of its melanomas: "
                 "re-choose the threshold on local labelled images (`melanoma threshold MODEL --predictions CSV`) "
                 "before use.")
    items.append("Made for dermoscopic images of one lesion; other photos, skin types and devices may degrade it. "
                 "The referral flag catches many unsuitable inputs, not all: `refer = no` means no reason was found.")
    return items


def _preprocessing_text(pre: dict) -> str:
    size, resize = pre.get("input_size"), pre.get("resize", pre.get("input_size"))
    text = f"{size} x {size} px centre crop after resizing the shorter side to {resize} px"
    if pre.get("detail_size"):
        text = f"larger images first reduced to a {pre['detail_size']} px shorter side, then " + text
    if (pre.get("color_constancy") or "none") != "none":
        text += f", {pre['color_constancy'].replace('_', '-')} colour constancy"
    return text


def _training_text(training: dict) -> str:
    parts = [f"{training['epochs_run']} of {training['epochs']} epochs" if training.get("epochs_run")
             else f"{training['epochs']} epochs" if training.get("epochs") else None,
             f"best epoch {training['best_epoch']}" if training.get("best_epoch") else None,
             f"learning rate {training['lr']:g}" if training.get("lr") else None,
             f"batch size {training['batch_size']}" if training.get("batch_size") else None,
             f"{training['folds']} folds" if training.get("folds") else None,
             f"imbalance handled by {training['imbalance'].replace('-', ' ')}" if training.get("imbalance") else None,
             f"seed {training['seed']}" if training.get("seed") is not None else None]
    return ", ".join(p for p in parts if p) or "not recorded"


def _alert_text(thresholds: dict, detail: dict | None = None) -> str:
    text = f"{_fmt(thresholds.get('melanoma_alert'))} on the calibrated melanoma probability"
    if thresholds.get("target_sensitivity") is not None:
        text += f" (chosen for {thresholds['target_sensitivity']:.0%} melanoma sensitivity on validation)"
    if detail and detail.get("levels"):
        levels = ", ".join(f"{lv['shorter_side']} px {_fmt(lv['alert_threshold'])}" for lv in detail["levels"])
        text += (f"; images with less detail have their melanoma odds lowered so that it acts as the threshold "
                 f"fitted at their level ({levels}; detail calibration)")
    return text


def _model_card(meta: dict | None, where: Path) -> str:
    """Intended use, training data, limitations (from the data actually used) and the facts of the model."""
    if meta is None:
        return _note(f"No model.json in {where} yet: the model card appears once training has finished.")
    card = dict(meta.get("model_card") or {})
    thresholds = meta.get("thresholds") or {}
    stored = card.get("limitations")
    rows = [("intended use", card.get("intended_use", "decision support for dermatologists, not a diagnosis")),
            ("input", card.get("input", "a dermoscopic image of one lesion")),
            ("output", card.get("output", "probability per class, melanoma alert, referral flag")),
            ("training data", describe_training_data(meta)),
            ("limitations", _bullets(describe_limitations(meta)))]
    derived = " ".join(describe_limitations(meta))
    if stored and not str(stored).startswith(STOCK_LIMITATIONS_START) and stored != derived:
        rows.append(("notes stored with the model", stored))
    if card.get("licence"):
        rows.append(("licence", card["licence"]))
    rows += [("architecture", meta.get("architecture")),
             ("classes", meta.get("class_names", [])),
             ("melanoma class", meta.get("melanoma_class") or "none (no melanoma alert)"),
             ("preprocessing", _preprocessing_text(meta.get("preprocessing") or {})),
             ("test-time augmentation", describe_views(meta)),
             ("temperature (calibration)", _fmt(meta.get("temperature"))),
             ("prior correction", priors.describe(meta)),
             ("melanoma alert threshold", _alert_text(thresholds, meta.get("detail_calibration"))),
             ("referral confidence threshold", _fmt(thresholds.get("refer_confidence"))),
             ("training", _training_text(meta.get("training") or {}))]
    return '<p class="warning">Decision support for dermatologists, not a diagnosis.</p>' + _table(None, rows)


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    """Flatten cv_summary.json-like dicts into readable rows: 'metric: mean ± sd (per fold ...)'."""
    rows = []
    for key, value in summary.items():
        name = key.replace("_", " ")
        if isinstance(value, dict) and "mean" in value:
            folds = ", ".join(_fmt(v) for v in value.get("per_fold", []))
            rows.append((name, f"{_fmt(value['mean'])} ± {_fmt(value.get('sd'))} (folds: {folds})"))
        elif isinstance(value, dict):
            rows += [(f"{name}: {k.replace('_', ' ')}", _fmt(v)) for k, v in value.items()]
        else:
            rows.append((name, _fmt(value) if not isinstance(value, list) else ", ".join(map(str, value))))
    return rows


def _cv_section(run: Path) -> str:
    summary = _read_json(run / "cv_summary.json")
    if not summary:
        return ""
    return "<h3>Cross-validation (cv_summary.json)</h3>" + _table(None, _summary_rows(summary))


# ------------------------------------------------------------------------------------------------------ data


def _dataset_location(run: Path, meta: dict | None, data) -> str | None:
    """The dataset to show: --data, else the one the run was trained on (model.json, then config.yaml)."""
    if data:
        return str(data)
    source = ((meta or {}).get("data") or {}).get("source")
    if source:
        return source
    config = run / "config.yaml"
    if config.is_file():
        import yaml

        return (yaml.safe_load(config.read_text()) or {}).get("data")
    return None


def _class_counts(table, summary: dict | None) -> dict | None:
    """Images per class: the discovered dataset, else the training summary (after de-duplication)."""
    if table is not None and table.classes:
        return {c: sum(s.label == c for s in table.samples) for c in table.classes}
    summary = summary or {}
    return summary.get("counts") or summary.get("class_counts")


def _sample_grid(table, out_dir: Path) -> str:
    """One image per class (the first by file name), as the notebooks showed."""
    from melanoma.data import load_image

    images, titles = [], []
    for name in table.classes:
        sample = next(s for s in table.samples if s.label == name)
        images.append(_thumbnail(load_image, sample.path))
        titles.append(f"{name}\n{Path(sample.path).name}")
    png = plots.image_grid_figure(images, titles, out_dir / "samples.png", ncols=5, title="One image per class")
    return _img(png, "one sample image per class")


def _thumbnail(load_image, path):
    """A small RGB thumbnail, or None when the file cannot be read."""
    try:
        image = load_image(path)
    except (MelanomaError, OSError):
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


_AUDIT_LABELS = {
    "policy": "policy for images filed under two classes", "n_images_in": "images found", "n_images": "images used",
    "n_unreadable": "unreadable images", "n_exact_duplicate_groups": "exact-duplicate groups",
    "near_distance": "near-duplicate pHash distance", "n_near_duplicate_pairs": "near-duplicate pairs",
    "n_images_with_lesion_id": "images with a lesion id",
    "n_lesions_with_several_images": "lesions with several images",
    "n_groups": "split groups (duplicates and lesions kept together)",
    "n_conflict_groups": "groups filed under two classes", "n_conflict_images": "images in those groups",
    "n_conflict_groups_settled_by_reference": "of them settled by the reference labels",
    "n_groups_contradicted_by_reference": "groups contradicted by the reference labels",
    "n_images_dropped": "images left out", "classes_removed": "classes removed"}


def _audit_summary(summary: dict | None) -> str:
    if not summary:
        return _note("No data_summary.json in the run (written at the start of training).")
    scalars = [(_AUDIT_LABELS.get(k, k.replace("_", " ")), v) for k, v in summary.items()
               if not isinstance(v, dict) and k != "unreadable"]
    body = "<h3>Audit summary (data_summary.json)</h3>" + _table(None, scalars)
    unreadable = summary.get("unreadable") or []
    if unreadable:
        body += _table(["unreadable file", "reason"], [(u.get("path"), u.get("reason")) for u in unreadable[:20]])
    return body + _extra_sources_summary(summary.get("extra"))


def _extra_sources_summary(extra: dict | None) -> str:
    """Extra training sources (--extra-data): what joined the training side, what was left out and why."""
    if not extra:
        return ""
    sources = _table(["extra source (trains only)", "images", "mapped labels", "reference only", "unmapped labels"],
                     [(s.get("source"), s.get("images"), s.get("mapped"), s.get("reference_only"),
                       ", ".join(f"{k} {v}" for k, v in (s.get("unmapped_labels") or {}).items()) or "none")
                      for s in extra.get("sources", [])])
    counts = _table(["class", "extra training images"], sorted((extra.get("counts") or {}).items()))
    removed = ", ".join(f"{k.replace('_', ' ')}: {_readable(v)}"
                        for k, v in (extra.get("removed") or {}).items()) or "none"
    return (f"<h3>Extra training data ({_esc(_readable(extra.get('n_images')))} images)</h3>" + sources + counts
            + f"<p>Left out: {_esc(removed)}.</p>")


def _data_section(run: Path, meta: dict | None, data, out_dir: Path) -> str:
    from melanoma.data import discover

    # a model folder without the run around it (models/default) still carries the summary in model.json
    summary = _read_json(run / "data_summary.json") or ((meta or {}).get("data") or {}).get("summary")
    location, table, parts = _dataset_location(run, meta, data), None, []
    if location and Path(location).exists():
        table = discover(location)
        parts.append(f"<p>Dataset: <code>{_esc(location)}</code> ({len(table):,} images).</p>")
    else:
        parts.append(_note(f"Dataset {location or '(unknown)'} is not reachable from here: pass --data to show "
                           "its images."))
    counts = _class_counts(table, summary)
    # the dataset the run trained on: also show what training kept of it (the audit drops conflicts)
    used = (summary or {}).get("counts") if table is not None and not data else None
    if counts:
        parts.append(_img(plots.class_distribution_figure(counts, out_dir / "class_distribution.png", used=used),
                          "images per class"))
    if table is not None and table.classes:
        parts.append(_guarded(_sample_grid, table, out_dir))
    parts.append(_audit_summary(summary))
    return "".join(parts)


# -------------------------------------------------------------------------------------------------- training

# the logged names of each curve, first found wins (Lightning adds _epoch when a metric is logged per step too)
_LOG_COLUMNS = {"train/loss": ("train/loss_epoch", "train/loss"), "val/loss": ("val/loss_epoch", "val/loss"),
                "train/acc": ("train/acc_epoch", "train/acc"), "val/acc": ("val/acc_epoch", "val/acc"),
                "train/bal_acc": ("train/bal_acc_epoch", "train/bal_acc"),
                "val/bal_acc": ("val/bal_acc_epoch", "val/bal_acc")}


def read_training_log(path) -> dict[str, dict[int, float]]:
    """Per-epoch curves from a Lightning CSVLogger metrics.csv: {"train/loss": {epoch: mean value}, ...}.

    Rows without an epoch (learning-rate rows) are ignored; several values in one epoch are averaged.
    """
    with Path(path).open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r.get("epoch") or "").strip()]
    curves = {}
    for name, candidates in _LOG_COLUMNS.items():
        column = next((c for c in candidates if any((r.get(c) or "").strip() for r in rows)), None)
        if column is None:
            continue
        values: dict[int, list[float]] = {}
        for r in rows:
            if (r.get(column) or "").strip():
                values.setdefault(int(float(r["epoch"])), []).append(float(r[column]))
        curves[name] = {epoch: float(np.mean(v)) for epoch, v in sorted(values.items())}
    return curves


def _last(series: dict | None):
    return series[max(series)] if series else None


def _overfit_reasons(curves: dict, score: str) -> list[str]:
    reasons = []
    train_s, val_s = _last(curves.get(f"train/{score}")), _last(curves.get(f"val/{score}"))
    if train_s is not None and val_s is not None and train_s - val_s > OVERFIT_GAP:
        reasons.append(f"train {score} {train_s:.3f} exceeds validation {val_s:.3f} by more than {OVERFIT_GAP}")
    val_loss, train_loss = curves.get("val/loss") or {}, curves.get("train/loss") or {}
    if len(val_loss) >= MIN_EPOCHS:
        best = min(val_loss, key=val_loss.get)
        end = max(val_loss)
        rising = val_loss[end] > (1 + VAL_LOSS_RISE) * val_loss[best] and end - best >= 2
        train_falling = best in train_loss and end in train_loss and train_loss[end] < train_loss[best]
        if rising and train_falling:
            reasons.append(f"validation loss rose from {val_loss[best]:.3f} (epoch {best + 1}) to "
                           f"{val_loss[end]:.3f} (epoch {end + 1}) while the training loss kept falling")
    return reasons


def _underfit_reasons(curves: dict, score: str) -> list[str]:
    reasons = []
    train_s = _last(curves.get(f"train/{score}"))
    if train_s is not None and train_s < UNDERFIT_TRAIN_SCORE:
        reasons.append(f"train {score} is only {train_s:.3f} (< {UNDERFIT_TRAIN_SCORE}): the model does not fit "
                       "even its training data")
    val = curves.get(f"val/{score}") or {}
    epochs = sorted(val)
    if len(epochs) > 2:
        earlier = max(val[e] for e in epochs[:-2])
        if val[epochs[-1]] > earlier + STILL_IMPROVING:
            reasons.append(f"validation {score} was still improving at the end ({earlier:.3f} -> "
                           f"{val[epochs[-1]]:.3f} over the last two epochs): train longer")
    return reasons


def diagnose_fit(curves: dict) -> tuple[str, list[str]]:
    """(verdict, reasons) from per-epoch curves, by the rules in the module docstring."""
    score = "bal_acc" if curves.get("val/bal_acc") else "acc"
    n_epochs = max((len(s) for s in curves.values()), default=0)
    if n_epochs < MIN_EPOCHS:
        return "not enough epochs to judge", [f"{n_epochs} epoch(s) logged; the rules need {MIN_EPOCHS}"]
    reasons = _overfit_reasons(curves, score)
    if reasons:
        return "over-fitting", reasons
    reasons = _underfit_reasons(curves, score)
    if reasons:
        return "under-fitting", reasons
    train_s, val_s = _last(curves.get(f"train/{score}")), _last(curves.get(f"val/{score}"))
    return "good fit", [f"train and validation {score} end close together ({_fmt(train_s)} vs {_fmt(val_s)}), "
                        "validation loss did not rise and the curves have levelled off"]


def _training_logs(run: Path) -> dict[str, Path]:
    """{run name: metrics.csv}: the run's own log, or one per CV fold."""
    logs = {}
    if (run / "logs" / "metrics.csv").is_file():
        logs["run"] = run / "logs" / "metrics.csv"
    for fold in sorted(run.glob("fold-*")):
        if (fold / "logs" / "metrics.csv").is_file():
            logs[fold.name] = fold / "logs" / "metrics.csv"
    return logs


def _training_section(run: Path, out_dir: Path) -> str:
    logs = _training_logs(run)
    if not logs:
        return _note("No training log yet (logs/metrics.csv or fold-*/logs/metrics.csv not found).")
    curves = {name: read_training_log(path) for name, path in logs.items()}
    parts = [_img(plots.training_curves_figure(curves, out_dir / "training_curves.png"), "training curves")]
    rows = []
    for name, series in curves.items():
        verdict, reasons = diagnose_fit(series)
        rows.append((name, verdict, "; ".join(reasons)))
    parts.append("<h3>Fit diagnosis</h3>" + _table(["run", "verdict", "why"], rows))
    parts.append(_note(f"Rules: over-fitting when the final train-validation gap in balanced accuracy exceeds "
                       f"{OVERFIT_GAP} or the validation loss ends {VAL_LOSS_RISE:.0%} above its minimum while the "
                       f"training loss falls; under-fitting when train balanced accuracy ends below "
                       f"{UNDERFIT_TRAIN_SCORE} or validation is still improving by more than {STILL_IMPROVING} "
                       f"over the last two epochs; needs {MIN_EPOCHS}+ epochs. Train metrics come from augmented, "
                       "class-balanced batches, so they read slightly low."))
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ validation


def _keep_rows(table, keep: np.ndarray):
    """The rows of a PredictionTable where `keep` (bool mask) is true."""
    index = np.flatnonzero(keep)
    return replace(table, images=[table.images[i] for i in index], paths=[table.paths[i] for i in index],
                   labels=[table.labels[i] for i in index], probs=table.probs[index])


def _validation_data(run: Path, meta: dict | None):
    """(prediction table, y, class names, melanoma class, threshold, skipped labels) from val_predictions.csv;
    rows whose label is not one of the model's classes are left out (and their labels returned)."""
    from melanoma.evaluate import read_predictions_csv, threshold_at_csv_precision

    names = (meta or {}).get("class_names")
    table = read_predictions_csv(run / "val_predictions.csv", names)
    names = table.class_names
    index = {c: i for i, c in enumerate(names)}
    y = np.array([index.get(label, -1) for label in table.labels], dtype=np.int64)
    skipped = sorted({str(label) for label, k in zip(table.labels, y) if k < 0})
    table = _keep_rows(table, y >= 0)
    melanoma = (meta or {}).get("melanoma_class", "melanoma")
    # compared at the CSV's 6 decimals (see threshold_at_csv_precision: else the threshold image is lost)
    threshold = threshold_at_csv_precision(((meta or {}).get("thresholds") or {}).get("melanoma_alert"))
    return table, y[y >= 0], names, melanoma if melanoma in names else None, threshold, skipped


def _headline(result: dict, meta: dict | None) -> str:
    cal, mel = result["calibration"], result["melanoma"] or {}
    training_cal = (meta or {}).get("calibration") or {}
    images = f"{result['n_images']:,}" + (f" ({mel['n_melanoma']:,} melanomas)" if mel.get("n_melanoma") is not None
                                          else "")
    rows = [("images", images),
            ("balanced accuracy (ISIC ranking metric)", _ci(result["balanced_accuracy"])),
            ("accuracy", _ci(result["accuracy"]))]
    if mel:
        rows += [("melanoma AUC", _ci(mel["auc"])),
                 ("melanoma pAUC above 80% sensitivity (raw, max 0.2)", _ci(mel["pauc_above_80_sensitivity"])),
                 ("melanoma average precision", _ci(mel["average_precision"])),
                 (f"alert >= {_fmt(mel['alert_threshold'])}: sensitivity", _ci(mel["sensitivity"])),
                 (f"alert >= {_fmt(mel['alert_threshold'])}: specificity", _ci(mel["specificity"])),
                 ("specificity at 90% / 95% sensitivity", f"{_ci(mel['specificity_at_90_sensitivity'])} / "
                                                         f"{_ci(mel['specificity_at_95_sensitivity'])}")]
    rows.append(("ECE (15 bins), probabilities as served", _fmt(cal["ece"])))
    if "ece" in training_cal:  # an ensemble's, or one measured again after a new prior correction or view count
        rows.append(("ECE on the model's validation images (model.json)", _fmt(training_cal["ece"])))
    elif training_cal:
        rows.append(("temperature; ECE before / after (training)",
                     f"{_fmt(training_cal.get('temperature'))}; {_fmt(training_cal.get('ece_before'))} / "
                     f"{_fmt(training_cal.get('ece_after'))}"))
    return _table(["metric", "value (95% bootstrap CI)"], rows)


def _per_class_table(result: dict) -> str:
    alerted = (result.get("melanoma") or {}).get("alerted_by_class") or {}
    rows = [(name, r["support"], _fmt(r["precision"]), _ci(r["recall"]), _fmt(r["specificity"]), _fmt(r["f1"]),
             _ci(r["auc"]), _fmt(r["average_precision"]), _alerted(alerted.get(name)))
            for name, r in result["per_class"].items()]
    return "<h3>Per class</h3>" + _table(["class", "n", "precision", "recall / sensitivity (95% CI)",
                                          "specificity", "F1", "AUC one-vs-rest (95% CI)", "AP",
                                          "melanoma alert fires on"], rows)


def _alerted(row: dict | None) -> str:
    return "n/a" if row is None else f"{row['alerted']}/{row['n']} ({row['share']:.0%})"


def _validation_plots(result, y, probs, names, melanoma, threshold, out_dir: Path) -> str:
    cm = result["confusion_matrix"]
    pngs = [(plots.confusion_matrix_figure(cm, names, out_dir / "confusion_matrix.png"), "confusion matrix"),
            (plots.confusion_matrix_figure(cm, names, out_dir / "confusion_matrix_normalised.png", normalize=True),
             "row-normalised confusion matrix")]
    if melanoma is not None and result["melanoma"]["auc"] is not None:
        is_mel, p_mel = y == names.index(melanoma), probs[:, names.index(melanoma)]
        pngs += [(plots.roc_figure(is_mel, p_mel, out_dir / "roc_melanoma.png", threshold=threshold), "ROC"),
                 (plots.pr_figure(is_mel, p_mel, out_dir / "pr_melanoma.png", threshold=threshold), "PR")]
    pngs += [(plots.per_class_roc_figure(y, probs, names, out_dir / "roc_per_class.png"), "per-class ROC"),
             (plots.reliability_figure(result["calibration"]["reliability"], out_dir / "reliability.png",
                                       ece=result["calibration"]["ece"]), "reliability diagram")]
    return '<div class="grid">' + "".join(_img(p, alt) for p, alt in pngs) + "</div>"


def _error_gallery(table, y, probs, names, out_dir: Path) -> str:
    """The most confident wrong predictions (thumbnails with true and predicted class)."""
    from melanoma.data import load_image

    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != y)
    if not len(wrong):
        return _note("No misclassified validation images.")
    worst = wrong[np.argsort(-conf[wrong], kind="stable")][:GALLERY_SIZE]
    images = [_thumbnail(load_image, table.paths[i]) if table.paths[i] else None for i in worst]
    titles = [f"true: {names[y[i]]}\npred: {names[pred[i]]} ({conf[i]:.2f})\n{table.images[i]}" for i in worst]
    png = plots.image_grid_figure(images, titles, out_dir / "confident_errors.png", ncols=4, cell=2.8)
    return (f"<h3>Most confident errors ({len(worst)} of {len(wrong)} misclassified)</h3>"
            + _img(png, "most confident errors"))


def _validation_section(run: Path, meta: dict | None, out_dir: Path) -> str:
    if not (run / "val_predictions.csv").is_file():
        return _note("No val_predictions.csv yet: validation results appear once training has finished.")
    table, y, names, melanoma, threshold, skipped = _validation_data(run, meta)
    if not len(y):
        return _note("val_predictions.csv has no rows with a label among the model's classes.")
    result = metrics.compute_metrics(y, table.probs, names, melanoma_class=melanoma, alert_threshold=threshold,
                                     bootstrap=REPORT_BOOTSTRAP, seed=0)
    kind = "out-of-fold predictions of all folds" if any(run.glob("fold-*")) else "hold-out validation split"
    parts = [f"<p>From <code>val_predictions.csv</code> ({_esc(kind)}, {len(y)} images).</p>"]
    if skipped:
        parts.append(_note(f"Rows with labels outside the model's classes were left out: {', '.join(skipped)}"))
    parts += [_headline(result, meta),
              _validation_plots(result, y, table.probs, names, melanoma, threshold, out_dir),
              _per_class_table(result), _guarded(_error_gallery, table, y, table.probs, names, out_dir)]
    return "".join(parts) + _evaluations_in(run)


def _evaluations_in(run: Path) -> str:
    """Evaluate output folders inside the run folder (evaluate's default place), each with its own report."""
    found = sorted(p.parent.name for p in run.glob("*/metrics.json"))
    if not found:
        return ""
    return (f"<h3>Evaluations on other data</h3><p>{_esc(', '.join(found))}: run <code>melanoma report "
            f"{_esc(run)}/&lt;folder&gt;</code> for each one's report.</p>")


# ------------------------------------------------------------------------------------------------------ page

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;height:auto;margin:.4em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1em;align-items:start}
.note{color:#555;font-style:italic}.warning{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
nav a{margin-right:1em}code{background:#f5f5f5;padding:0 .2em}
"""

_RUN_SECTIONS = (("model", "Model card"), ("data", "Data"), ("training", "Training"),
                 ("validation", "Validation"))
_EVAL_SECTIONS = (("model", "Model card"), ("data", "Evaluated data"), ("results", "Results"))


def _page(title: str, subtitle: str, sections, bodies: dict[str, str]) -> str:
    """The whole HTML page; subtitle is HTML built from escaped parts."""
    nav = "".join(f'<a href="#{key}">{_esc(label)}</a>' for key, label in sections)
    body = "".join(_section(label, bodies[key], key) for key, label in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1><p>{subtitle}</p><nav>{nav}</nav>"
            f"{body}</body></html>\n")


# the files that make a folder a training run (any one of them: a run that has only just started has config.yaml)
_RUN_MARKERS = ("model.json", "config.yaml", "data_summary.json", "val_predictions.csv", "cv_summary.json", "logs")


def build_report(run_dir, data=None) -> Path:
    """Write FOLDER/report.html (self-contained) and its PNGs in FOLDER/report/; returns the HTML path.

    FOLDER: a training run folder (model card, data, training curves, validation results) or a `melanoma
    evaluate` output folder (metrics.json: model card, evaluated data, results with the evaluate plots).
    data: dataset for a run's class distribution and sample images (default: the dataset it was trained on).
    """
    folder = Path(run_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected a training run or a melanoma evaluate output folder)")
    if (folder / "metrics.json").is_file() and not (folder / "model.json").is_file():
        return _write_page(folder, _evaluation_page(folder))
    if not any((folder / m).exists() for m in _RUN_MARKERS) and not any(folder.glob("fold-*")):
        raise DataError(f"{folder}: neither a training run (model.json, config.yaml, logs/) nor a melanoma "
                        "evaluate output folder (metrics.json)")
    return _write_page(folder, _run_page(folder, data))


def _write_page(folder: Path, html_text: str) -> Path:
    path = folder / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    tmp.replace(path)  # atomic: a browser never sees half a report
    return path


def _run_page(run: Path, data) -> str:
    out_dir = run / "report"
    out_dir.mkdir(exist_ok=True)
    meta = _guarded_json(run / "model.json")
    bodies = {"model": _guarded(_model_card, meta, run) + _guarded(_cv_section, run),
              "data": _guarded(_data_section, run, meta, data, out_dir),
              "training": _guarded(_training_section, run, out_dir),
              "validation": _guarded(_validation_section, run, meta, out_dir)}
    kind = "training run" if (run / "config.yaml").is_file() or (run / "logs").is_dir() else "model folder"
    state = (f"{_esc(meta.get('architecture', 'unknown architecture'))} &middot; {kind}" if meta
             else "training run, not finished yet (no model.json)")
    subtitle = f"{state} &middot; folder <code>{_esc(run.resolve())}</code>"
    return _page(f"melanoma report: {run.resolve().name}", subtitle, _RUN_SECTIONS, bodies)


def _guarded_json(path: Path) -> dict | None:
    """model.json as a dict; None when missing or unreadable (the sections then say so)."""
    try:
        value = _read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------ evaluate folder


def _read_metrics(folder: Path) -> dict:
    """metrics.json of an evaluate output folder; DataError (one line) when it is not readable JSON."""
    path = folder / "metrics.json"
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}): not written by melanoma evaluate?") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(result, dict) or "n_images" not in result or "per_class" not in result:
        raise DataError(f"{path}: not a melanoma evaluate result (no n_images / per_class)")
    return result


def _evaluated_model(result: dict) -> tuple[dict | None, str]:
    """(the evaluated model's model.json, or None; why not)."""
    from melanoma.artifacts import read_meta

    path = (result.get("model") or {}).get("path")
    if not path:
        return None, "metrics.json does not name the model"
    try:
        return read_meta(path), ""
    except MelanomaError as exc:
        return None, f"the model's model.json is not reachable from here ({exc})"


def _eval_model_section(result: dict) -> str:
    meta, why = _evaluated_model(result)
    model = result.get("model") or {}
    head = f"<p>Model evaluated: <code>{_esc(model.get('path', 'unknown'))}</code>.</p>"
    if meta is not None:
        return head + _model_card(meta, Path(model["path"]))
    thresholds = model.get("thresholds") or {}
    rows = [("architecture", model.get("architecture")), ("classes", model.get("class_names")),
            ("temperature (calibration)", model.get("temperature")),
            ("melanoma alert threshold", thresholds.get("melanoma_alert"))]
    return (head + '<p class="warning">Decision support for dermatologists, not a diagnosis.</p>'
            + _note(f"No model card: {why}. What metrics.json records:") + _table(None, rows))


def _image_counts(result: dict) -> str:
    """'398 scored / 135 excluded (seen in training) / 533 in the dataset' plus unreadable and unscored labels."""
    data, overlap = result.get("data") or {}, result.get("training_overlap") or {}
    excluded = int(overlap.get("n_excluded") or 0)
    total = data.get("n_total") or int(data.get("n_images") or 0) + excluded
    scored = int(data.get("n_scored") or result.get("n_images") or 0)
    text = f"{scored:,} scored / {excluded:,} excluded (seen in training) / {total:,} in the dataset"
    unscored = sum((result.get("uncovered_labels") or {}).values())
    extras = [f"{int(data['unreadable']):,} unreadable" if data.get("unreadable") else "",
              f"{unscored:,} with a label the model cannot score" if unscored else ""]
    return text + "".join(f"; {e}" for e in extras if e)


def _overlap_text(overlap: dict) -> tuple[str, bool]:
    """(what the training-overlap check did, whether it was done)."""
    if not overlap.get("checked_against"):
        return (overlap.get("note") or "not checked") + ": these figures may include images the model was trained "\
               "on, which flatters them.", False
    text = f"checked against {overlap['checked_against']}: {int(overlap.get('n_excluded') or 0):,} images left out"
    if overlap.get("n_same_lesion_images"):
        text += f" ({overlap['n_shared_images']:,} shared, {overlap['n_same_lesion_images']:,} other photos of " \
                "those lesions)"
    if overlap.get("rule"):
        text += f"; rule: {overlap['rule']}"
    return text, True


def _label_map_text(result: dict) -> str:
    lmap = result.get("label_map") or {}
    merged = [f"{t} = {' + '.join(g)}" for t, g in (lmap.get("targets") or {}).items() if [t] != list(g)]
    return (lmap.get("name") or "none") + (f" ({'; '.join(merged)})" if merged else " (the model's own classes)")


def _bootstrap_text(result: dict) -> str:
    boot = result.get("bootstrap") or {}
    if not boot:
        return "not computed"
    unit = {"image": "images", "group": "lesions / patients"}.get(boot.get("unit"), boot.get("unit") or "images")
    return (f"{boot.get('level', 0.95):.0%} percentile bootstrap, {int(boot.get('resamples', 0)):,} resamples of "
            f"{int(boot.get('n_units', 0)):,} {unit}")


def _eval_data_section(result: dict) -> str:
    data, overlap = result.get("data") or {}, result.get("training_overlap") or {}
    overlap_text, checked = _overlap_text(overlap)
    tta = result.get("tta") or {}
    rows = [("dataset", f"{data.get('path', 'unknown')} ({data.get('kind', 'unknown')} layout)"),
            ("images", _image_counts(result)),
            ("overlap with the training data", overlap_text if checked else "NOT checked (see the warning above)"),
            ("label map", _label_map_text(result)),
            ("test-time augmentation", f"{tta['views']} views" if tta.get("enabled") else "off"),
            ("95% confidence intervals", _bootstrap_text(result))]
    uncovered = result.get("uncovered_labels") or {}
    if uncovered:
        rows.append(("labels left out of the metrics", ", ".join(f"{k} ({v:,})" for k, v in uncovered.items())))
    parts = [] if checked else [f'<p class="warning">Overlap with the training data: {_esc(overlap_text)}</p>']
    mel = result.get("melanoma") or {}
    if mel and mel.get("n_melanoma") is not None and mel["n_melanoma"] < FEW_MELANOMAS:
        parts.append(f'<p class="warning">Only {int(mel["n_melanoma"])} melanomas: melanoma sensitivity and AUC '
                     "carry very wide confidence intervals here.</p>")
    parts.append(_table(None, rows))
    unreadable = data.get("unreadable_files") or []
    if unreadable:
        parts.append(_table(["unreadable file", "reason"], [(u.get("path"), u.get("reason")) for u in unreadable[:20]]))
    return "".join(parts)


_EVAL_PLOTS = (("confusion_matrix.png", "confusion matrix"),
               ("confusion_matrix_normalised.png", "row-normalised confusion matrix"),
               ("roc_melanoma.png", "melanoma ROC"), ("pr_melanoma.png", "melanoma precision-recall"),
               ("roc_per_class.png", "per-class ROC"), ("reliability.png", "reliability diagram"))


def _resolved_label_map(result: dict, model_classes: list[str]):
    """The label map evaluate used, rebuilt from metrics.json (a YAML map that moved: from its recorded targets)."""
    from melanoma import labelmaps

    lmap = result.get("label_map") or {}
    melanoma = (result.get("melanoma") or {}).get("class")
    if lmap.get("name") in (None, "identity"):
        return labelmaps.identity_map(model_classes, melanoma)
    try:
        return labelmaps.resolve_label_map(lmap["name"], model_classes)
    except (MelanomaError, OSError):
        targets = lmap.get("targets") or {}
        lookup = {labelmaps.normalise_label(n): t for t, g in targets.items() for n in [t, *g]}
        return labelmaps.ResolvedLabelMap(lmap["name"], list(targets),
                                          [[model_classes.index(c) for c in g] for g in targets.values()],
                                          lookup, melanoma)


def _eval_gallery(folder: Path, result: dict, out_dir: Path) -> str:
    """The most confident errors among the scored images of predictions.csv (in the label map's classes)."""
    from melanoma import labelmaps
    from melanoma.evaluate import read_predictions_csv

    model_classes = (result.get("model") or {}).get("class_names")
    table = read_predictions_csv(folder / "predictions.csv", model_classes)
    resolved = _resolved_label_map(result, table.class_names)
    y, _ = labelmaps.map_dataset_labels(table.labels, resolved)
    table = _keep_rows(table, y >= 0)
    probs = table.probs @ resolved.matrix(len(table.class_names))
    return _error_gallery(table, y[y >= 0], probs, resolved.target_classes, out_dir)


def _eval_results_section(folder: Path, result: dict, out_dir: Path) -> str:
    pngs = [_img(folder / name, alt) for name, alt in _EVAL_PLOTS if (folder / name).is_file()]
    parts = [_headline(result, {"calibration": result.get("training_calibration")}),
             '<div class="grid">' + "".join(pngs) + "</div>" if pngs else _note("No plots in this folder."),
             _per_class_table(result)]
    if (folder / "predictions.csv").is_file():
        parts.append(_guarded(_eval_gallery, folder, result, out_dir))
    return "".join(parts)


def _evaluation_page(folder: Path) -> str:
    result = _read_metrics(folder)
    out_dir = folder / "report"
    out_dir.mkdir(exist_ok=True)
    bodies = {"model": _guarded(_eval_model_section, result), "data": _guarded(_eval_data_section, result),
              "results": _guarded(_eval_results_section, folder, result, out_dir)}
    model = result.get("model") or {}
    data = result.get("data") or {}
    subtitle = (f"evaluation of {_esc(model.get('architecture', 'a model'))} on "
                f"<code>{_esc(data.get('path', 'unknown data'))}</code> &middot; folder "
                f"<code>{_esc(folder.resolve())}</code>")
    return _page(f"melanoma evaluation report: {folder.resolve().name}", subtitle, _EVAL_SECTIONS, bodies)
