"""`melanoma evaluate`: predict a labelled dataset once, score it, write metrics.json, predictions.csv and plots.

Output folder (default `<model folder>/eval-<data name>`):
  metrics.json                     `metrics.compute_metrics` + model, data, label map, calibration context;
                                   computed from the probabilities as written to predictions.csv (6 decimals)
  predictions.csv                  the shared prediction CSV layout (model classes) + the dataset's own `label`
  confusion_matrix.png             counts;  confusion_matrix_normalised.png: rows divided by the class total
  roc_melanoma.png, pr_melanoma.png   melanoma vs rest with the alert operating point
  roc_per_class.png, reliability.png
Unreadable images are reported one line each on stderr, skipped, and counted in metrics.json. Dataset labels a
label map does not cover are counted in `uncovered_labels` and left out of the metrics (their predictions are
still in predictions.csv).
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melanoma import fingerprint, labelmaps, metrics, plots
from melanoma.audit import CROSS_SET_PHASH_DISTANCE, overlap_rule_text
from melanoma.data import discover
from melanoma.errors import DataError
from melanoma.images import scan_paths

MAX_LISTED_ERRORS = 200  # unreadable files listed by name in metrics.json (all are counted)


@dataclass
class PredictionTable:
    """A prediction CSV read back: one row per image, probabilities in `class_names` order."""

    class_names: list[str]
    images: list[str]
    paths: list[str]  # "" where the CSV has no path column
    labels: list[str | None]  # None where the CSV has no label (or an empty one)
    probs: np.ndarray  # [N, C] float64


def read_predictions_csv(path, class_names=None) -> PredictionTable:
    """Read the shared prediction CSV layout (predictions.csv, val_predictions.csv).

    class_names: the probability columns to read (model.json's class_names); None = every column between
    `image`/`path` and `prediction`. DataError (one line) on a missing column or a non-numeric probability.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if class_names is None:
        if "prediction" not in header:
            raise DataError(f"{path}: no 'prediction' column; not a prediction CSV")
        class_names = [c for c in header[:header.index("prediction")] if c not in ("image", "path")]
    missing = [c for c in class_names if c not in header]
    if missing:
        raise DataError(f"{path}: missing probability column(s) {', '.join(missing)}")
    try:
        probs = np.array([[float(r[c]) for c in class_names] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric probability ({exc})") from None
    return PredictionTable(list(class_names), [r.get("image", "") for r in rows], [r.get("path", "") for r in rows],
                           [r.get("label") or None for r in rows], probs.reshape(len(rows), len(class_names)))


def update_prediction_csv(path, updates: list[dict[str, str]]) -> None:
    """Replace columns of a prediction CSV row by row (updates[i]: {column: new text} for row i), in place and
    atomically; every other column stays as written, and a column the CSV does not have is not added."""
    import io

    from melanoma.artifacts import atomic_write_text

    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)
    for row, update in zip(rows, updates):
        row.update({column: text for column, text in update.items() if column in header})  # a shorter layout
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def threshold_at_csv_precision(threshold: float | None) -> float | None:
    """The alert threshold rounded like the CSV's probabilities (6 decimals).

    Trap: training picks the threshold as one validation melanoma's exact probability; compared with that
    image's value as written ("0.123370" < 0.1233701333) the image would no longer be flagged and the
    sensitivity read back from the CSV would drop below the target. Rounding both sides the same way keeps
    every p >= threshold flagged (rounding is monotone).
    """
    return None if threshold is None else float(f"{threshold:.6f}")


def default_output_dir(model, data) -> Path:
    """`<model folder>/eval-<data name>`: the run folder itself, or the folder holding the model file."""
    model_path = Path(model).expanduser()
    folder = model_path if model_path.is_dir() else model_path.parent
    data_path = Path(data).expanduser().resolve()
    return folder / f"eval-{data_path.stem if data_path.is_file() else data_path.name}"


def _alert_threshold(predictor) -> tuple[float | None, str]:
    """The melanoma alert threshold the model serves with, and where it came from."""
    value = ((predictor.meta.get("thresholds") or {}).get("melanoma_alert"))
    if value is not None:
        return float(value), "model.json thresholds.melanoma_alert"
    fallback = getattr(predictor, "alert_threshold", None)
    return (None if fallback is None else float(fallback)), "predictor default (model.json has none)"


def _labelled_table(data):
    """The dataset table; DataError when it carries no labels (nothing to score against)."""
    from melanoma.data import discover

    table = discover(data)
    if not table.samples or all(s.label is None for s in table.samples):
        raise DataError(f"{data}: no labelled images to evaluate on (use `melanoma predict` for unlabelled images)")
    return table


def _print_errors(errors) -> None:
    for path, reason in errors:
        print(f"skipped {path}: {reason}", file=sys.stderr)


def _plot_all(out: Path, y, probs, classes, melanoma_class, threshold, result: dict) -> list[str]:
    """All evaluation PNGs; returns their file names."""
    cm = result["confusion_matrix"]
    written = [plots.confusion_matrix_figure(cm, classes, out / "confusion_matrix.png"),
               plots.confusion_matrix_figure(cm, classes, out / "confusion_matrix_normalised.png", normalize=True),
               plots.per_class_roc_figure(y, probs, classes, out / "roc_per_class.png"),
               plots.reliability_figure(result["calibration"]["reliability"], out / "reliability.png",
                                        ece=result["calibration"]["ece"])]
    if melanoma_class is not None:
        is_mel, p_mel = y == classes.index(melanoma_class), probs[:, classes.index(melanoma_class)]
        if is_mel.any() and not is_mel.all():
            written.append(plots.roc_figure(is_mel, p_mel, out / "roc_melanoma.png", threshold=threshold,
                                            title=f"{melanoma_class} vs rest: ROC"))
            written.append(plots.pr_figure(is_mel, p_mel, out / "pr_melanoma.png", threshold=threshold,
                                           title=f"{melanoma_class} vs rest: precision-recall"))
    return [p.name for p in written]


def _context(predictor, model, table, data, resolved, errors, uncovered, n_scored, views: int) -> dict:
    """What was evaluated: model, data, label map, calibration stored by training."""
    meta = predictor.meta
    return {
        "model": {"path": str(model), "architecture": meta.get("architecture"),
                  "class_names": list(predictor.class_names), "temperature": meta.get("temperature", 1.0),
                  "thresholds": meta.get("thresholds")},
        "data": {"path": str(data), "kind": table.kind, "n_images": len(table), "n_scored": n_scored,
                 "unreadable": len(errors),
                 "unreadable_files": [{"path": p, "reason": r} for p, r in errors[:MAX_LISTED_ERRORS]]},
        "label_map": {"name": resolved.name, "targets": {t: [predictor.class_names[i] for i in g]
                                                         for t, g in zip(resolved.target_classes, resolved.groups)}},
        "uncovered_labels": uncovered,
        "unreadable_images": len(errors),
        # views averaged per image, and those the alert threshold was chosen on (model.json)
        "tta": {"enabled": views > 1, "views": views, "model_views": predictor.tta_views},
        # training stores the ECE before/after temperature scaling on validation data in model.json
        "training_calibration": meta.get("calibration"),
    }


def training_sources(meta: dict) -> list[str]:
    """Every dataset the model was trained on, as recorded in model.json (primary + extra sources)."""
    data = meta.get("data") or {}
    return [s for s in [data.get("source"), *(data.get("extra_sources") or [])] if s]


def _folder_fingerprints(folders) -> tuple[list[dict], list[str], list[str]]:
    """Scan each training folder that exists: (fingerprint arrays, folders checked, folders missing)."""
    parts, checked, missing = [], [], []
    for folder in folders:
        if not Path(folder).exists():
            missing.append(str(folder))
            continue
        table = discover(folder)
        parts.append(fingerprint.arrays(scan_paths([s.path for s in table.samples])))
        checked.append(str(folder))
    return parts, checked, missing


def _not_checked(table, missing: list[str], why: str) -> tuple[object, dict]:
    note = f"{why}: overlap with the training data was NOT checked"
    print(f"warning: {note}; scores may be optimistic if the model saw these images", file=sys.stderr)
    return table, {"checked": False, "checked_against": None, "n_excluded": 0, "missing": missing, "note": note}


def exclude_training_overlap(table, meta: dict, exclude_with=None, model_file=None, entries=None
                             ) -> tuple[object, dict]:
    """Drop the images of `table` that also occur in the model's training data: same pixels, phash within 2 (in
    any of the 8 orientations) or same ISIC id, and (HAM10000 layout) other photos of those lesions.

    The training data is the fingerprint stored in the model (meta["extra"], or read from `model_file`), else
    every source folder recorded in model.json; `exclude_with` (a folder or a list of folders) only ever ADDS
    to it. `exclude_with=False` turns the check off (a warning on stderr, recorded in the summary). `entries`:
    a scan of `table`'s samples already made (`images.scan_paths`, same order). Returns (table, summary)."""
    if exclude_with is False:
        print("warning: --no-overlap-check: images the model was trained on are scored too; the metrics may be "
              "optimistic", file=sys.stderr)
        return table, {"checked": False, "checked_against": None, "n_excluded": 0,
                       "note": "overlap check disabled by the user (--no-overlap-check)"}
    extra = [exclude_with] if isinstance(exclude_with, (str, Path)) else list(exclude_with or [])
    stored = fingerprint.find(meta.get("extra"))
    if stored is None and model_file is not None and Path(model_file).suffix == ".safetensors":
        stored = fingerprint.read_model_file(model_file)
    folders = extra if stored is not None else training_sources(meta) + extra
    parts, checked, missing = _folder_fingerprints(folders)
    described = checked
    if stored is not None:
        parts.insert(0, stored)
        described = [f"training-set fingerprint of {len(stored['pixel'])} images, stored in the model file", *checked]
    if not parts:
        return _not_checked(table, missing, f"training data not available ({', '.join(missing) or 'not recorded'})")
    if missing:
        print(f"warning: {', '.join(missing)}: not found; overlap with it was NOT checked", file=sys.stderr)
    entries = entries if entries is not None else scan_paths([s.path for s in table.samples])
    found = fingerprint.matches(fingerprint.combine(parts), table.samples, entries, CROSS_SET_PHASH_DISTANCE)
    kept, summary = _drop_overlap(table, set(found), ", ".join(described), fingerprint.summarize(found))
    return kept, {"checked": True, **summary, "missing": missing}


def label_conflicts(paths, y: np.ndarray, pixel_hash: dict) -> np.ndarray:
    """[N] bool: rows whose picture (identical decoded pixels) the data holds under two or more different scored
    labels (y: label-map targets, -1 = not scored). No prediction can be right for both copies, so scoring them
    counts the model wrong on one whatever it says (the 9-class split files 74 melanoma pictures as seborrheic
    keratosis too: melanoma AUC 0.734 with them, 0.794 without, for a HAM10000-only model)."""
    targets = defaultdict(set)
    for path, target in zip(paths, y):
        if target >= 0 and pixel_hash.get(str(path)):
            targets[pixel_hash[str(path)]].add(int(target))
    return np.array([len(targets.get(pixel_hash.get(str(p)), ())) > 1 for p in paths], dtype=bool)


def _report_conflicts(data, paths, conflicts: np.ndarray, pixel_hash: dict, scored: bool) -> dict:
    """One stderr line and metrics.json's summary of the label conflicts."""
    files = [str(p) for p, c in zip(paths, conflicts) if c]
    pictures = len({pixel_hash[f] for f in files})
    if files:
        what = "scored anyway (--score-label-conflicts)" if scored else "left out of the metrics"
        print(f"{data}: {len(files)} images are {pictures} pictures filed under two or more labels (identical "
              f"pixels; `melanoma audit` lists them): {what}", file=sys.stderr)
    return {"n_images": len(files), "n_pictures": pictures, "scored": scored, "images": files}


def _drop_overlap(table, shared: set, checked_against: str, matched_by: dict) -> tuple[object, dict]:
    """Remove the shared images and (HAM10000 layout: group = lesion_id) the other photos of their lesions, which
    are not independent of the model either; DataError when nothing is left."""
    seen_groups = {table.samples[i].group for i in shared}
    drop = {i for i, s in enumerate(table.samples)
            if i in shared or (table.kind == "ham10000" and s.group in seen_groups)}
    rule = overlap_rule_text(CROSS_SET_PHASH_DISTANCE) + " (phash compared in all 8 orientations: 90-degree turns, flips)"
    if drop:
        print(f"excluded {len(drop)} image(s) that also occur in the training data ({checked_against}), or show a "
              f"lesion that does ({len(shared)} shared images; {rule})", file=sys.stderr)
    kept = table.subset([i for i in range(len(table)) if i not in drop])
    if len(table) and not len(kept):
        raise DataError(f"{table.root}: every image also occurs in the model's training data "
                        f"({checked_against}): nothing independent to evaluate")
    return kept, {"checked_against": checked_against, "n_excluded": len(drop), "n_shared_images": len(shared),
                  "n_same_lesion_images": len(drop) - len(shared), "rule": rule, "matched_by": matched_by}


def evaluate(model, data, out=None, tta: bool | None = None, tta_views: int | None = None, label_map=None,
             bootstrap: int = 1000, seed: int = 0, batch_size: int = 32, exclude_overlap_with=None,
             score_label_conflicts: bool = False) -> dict:
    """Evaluate `model` (run folder, model.json/.safetensors or .onnx) on labelled `data`; returns metrics.json's
    content (see module docstring for the files written). Images that also occur in the model's training data are
    excluded first (see `exclude_training_overlap`: `exclude_overlap_with` adds folders to the model's training
    data, False = no check). Pictures that `data` holds under two different labels are left out of the metrics
    (reported; `label_conflicts`) unless score_label_conflicts."""
    from melanoma.predict import Predictor, write_predictions_csv

    predictor = Predictor.load(model)
    views = predictor.views_for_command(tta, tta_views)  # tta=None: the model's own (Predictor.views)
    full_table = _labelled_table(data)
    entries = scan_paths([s.path for s in full_table.samples])  # pixel hashes: overlap and label conflicts
    pixel_hash = {str(s.path): e.pixel_hash for s, e in zip(full_table.samples, entries)}
    table, overlap = exclude_training_overlap(full_table, predictor.meta, exclude_overlap_with, entries=entries)
    overlap["n_total"] = len(full_table)
    resolved = labelmaps.resolve_label_map(label_map, predictor.class_names, predictor.meta.get("melanoma_class"))
    out = Path(out) if out else default_output_dir(model, data)
    out.mkdir(parents=True, exist_ok=True)

    result, job = predictor.predict_resumable("evaluate", [s.path for s in table.samples], tta_views=views,
                                              batch_size=batch_size,
                                              progress=sys.stderr.isatty())
    _print_errors(result.errors)
    if not len(result.paths):
        raise DataError(f"{data}: none of its {len(table)} images could be read (reasons above)")
    sample_of = {str(s.path): s for s in table.samples}
    labels = [sample_of[str(p)].label for p in result.paths]
    # the bootstrap resamples groups: lesion / patient ids where the data names them, else single images
    groups = np.array([sample_of[str(p)].group for p in result.paths], dtype=object)
    y, uncovered = labelmaps.map_dataset_labels(labels, resolved)
    keep = y >= 0
    if not keep.any():
        raise DataError(f"{data}: none of its labels ({', '.join(sorted(uncovered)[:8])}) is a class of the model "
                        f"or of label map {resolved.name!r}; try --label-map isic2018|isic2019|isic2017|binary or a YAML map")
    conflicts = label_conflicts(result.paths, y, pixel_hash)
    if not score_label_conflicts:
        keep &= ~conflicts
        if not keep.any():
            raise DataError(f"{data}: every scored image is filed under two or more labels; nothing to score "
                            "(--score-label-conflicts scores them anyway)")
    # score the probabilities exactly as written (6 decimals): metrics.json is reproducible from the CSV
    write_predictions_csv(result, out / "predictions.csv", labels=labels)
    written = read_predictions_csv(out / "predictions.csv", predictor.class_names)
    probs = written.probs @ resolved.matrix(len(predictor.class_names))
    threshold, source = _alert_threshold(predictor)
    csv_threshold = threshold_at_csv_precision(threshold)
    report = metrics.compute_metrics(y[keep], probs[keep], resolved.target_classes,
                                     melanoma_class=resolved.melanoma_class, alert_threshold=csv_threshold,
                                     bootstrap=bootstrap, seed=seed, groups=groups[keep])
    report.update(_context(predictor, model, table, data, resolved, result.errors, uncovered, int(keep.sum()),
                           views))
    report["calibration"]["temperature"] = report["model"]["temperature"]
    report["training_overlap"] = overlap
    report["label_conflicts"] = _report_conflicts(data, result.paths, conflicts, pixel_hash, score_label_conflicts)
    if report["melanoma"] is not None:
        report["melanoma"]["alert_threshold"] = threshold  # the model's exact value (compared at 6 decimals)
        report["melanoma"]["alert_threshold_source"] = source

    pngs = _plot_all(out, y[keep], probs[keep], resolved.target_classes, resolved.melanoma_class, csv_threshold,
                     report)
    report["files"] = {"out": str(out), "metrics": "metrics.json", "predictions": "predictions.csv", "plots": pngs}
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    job.finish()
    return report


# ------------------------------------------------------------------------------------------------ terminal


def _ci(entry, digits: int = 3) -> str:
    """'0.871 [0.842, 0.897]' for a {"value", "ci"} entry; 'n/a' for None."""
    if entry is None:
        return "n/a"
    value = f"{entry['value']:.{digits}f}"
    if not entry.get("ci"):
        return value
    lo, hi = entry["ci"]
    return f"{value} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _melanoma_lines(mel: dict) -> list[str]:
    lines = [f"{mel['class']} vs rest ({mel['n_melanoma']} vs {mel['n_other']} images)",
             f"  AUC                          {_ci(mel['auc'])}",
             f"  pAUC above 80% sensitivity   {_ci(mel['pauc_above_80_sensitivity'])}  (raw, max 0.2)",
             f"  average precision            {_ci(mel['average_precision'])}"]
    if mel.get("alert_threshold") is not None:
        alert = f"alert >= {mel['alert_threshold']:.3g}:"
        lines += [f"  {alert} sensitivity {_ci(mel['sensitivity'])}",
                  f"  {'':<{len(alert)}} specificity {_ci(mel['specificity'])}"]
    lines.append(f"  specificity at 90% / 95% sensitivity: {_ci(mel['specificity_at_90_sensitivity'])} / "
                 f"{_ci(mel['specificity_at_95_sensitivity'])}")
    if mel.get("alerted_by_class"):
        lines.append("  the alert fires on: " + ", ".join(f"{name} {row['alerted']}/{row['n']} ({row['share']:.0%})"
                                                          for name, row in mel["alerted_by_class"].items()))
    if mel.get("expected_alert_share"):
        lines.append("  share of all lesions alerted at this sensitivity and specificity: " + "; ".join(
            f"{where} {share:.0%}" for where, share in mel["expected_alert_share"].items()))
    return lines


def _class_table(result: dict) -> list[str]:
    width = max(len("class"), *(len(c) for c in result["classes"]))
    lines = [f"{'class':<{width}}  {'n':>5}  {'recall (sensitivity) [95% CI]':<28}  {'AUC [95% CI]':<25}"]
    for name, row in result["per_class"].items():
        lines.append(f"{name:<{width}}  {row['support']:>5}  {_ci(row['recall']):<28}  {_ci(row['auc']):<25}")
    return lines


def _count_line(result: dict) -> str:
    """'120 scored / 135 excluded (in the training data) / 255 total; 2 unreadable, ...; label map binary'."""
    data, overlap = result.get("data") or {}, result.get("training_overlap") or {}
    excluded = overlap.get("n_excluded", 0)
    total = overlap.get("n_total", data.get("n_images", result["n_images"]) + excluded)
    line = f"{result['n_images']} scored / {excluded} excluded (in the training data) / {total} total images"
    if data:
        line += (f"; {data['unreadable']} unreadable, {sum(result.get('uncovered_labels', {}).values())} with "
                 "labels the map does not cover")
    return line + (f"; label map {result['label_map']['name']}" if result.get("label_map") else "")


def _overlap_lines(overlap: dict | None) -> list[str]:
    """Where the training-data check looked, or a warning that it did not."""
    if not overlap:
        return []
    if not overlap.get("checked", True):
        return [f"WARNING: {overlap.get('note')}"]
    lines = [f"training-data check: {overlap.get('checked_against')}"]
    if overlap.get("missing"):
        lines.append(f"WARNING: not found, so NOT checked: {', '.join(overlap['missing'])}")
    return lines


def format_metrics(result: dict) -> str:
    """A short terminal summary of `evaluate`'s result: headline numbers with 95% CIs and a per-class table."""
    data, cal = result.get("data", {}), result["calibration"]
    lines = [_count_line(result), *_overlap_lines(result.get("training_overlap")),
             f"accuracy            {_ci(result['accuracy'])}",
             f"balanced accuracy   {_ci(result['balanced_accuracy'])}   (mean recall, ISIC ranking metric)"]
    if result.get("melanoma"):
        lines += _melanoma_lines(result["melanoma"])
    temp = cal.get("temperature")
    lines.append(f"ECE {cal['ece']:.3f} ({cal['n_bins']} bins)" + (f", temperature {temp:.3g}" if temp else ""))
    if result.get("uncovered_labels"):
        lines.append("uncovered labels: " + ", ".join(f"{k} ({v})" for k, v in result["uncovered_labels"].items()))
    lines += [""] + _class_table(result)
    if result.get("files"):
        lines.append(f"\nwrote {result['files']['out']}: metrics.json, predictions.csv, "
                     f"{len(result['files']['plots'])} plots")
    return "\n".join(lines)
