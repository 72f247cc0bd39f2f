"""Matplotlib figures for `evaluate` and `report`, written as PNG files.

Uses `matplotlib.figure.Figure` directly (Agg canvas, no pyplot): no global state, no display needed, safe in
threads. Class names are long ("pigmented benign keratosis"): axes that show them are horizontal or rotated,
and every figure uses the constrained layout so nothing is clipped. Each function returns the path it wrote.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

DPI = 110
ALERT_STYLE = {"marker": "o", "markersize": 9, "color": "crimson", "zorder": 5}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _wrap(name: str, width: int = 16) -> str:
    """Break a long class name over lines ("pigmented benign\\nkeratosis")."""
    return "\n".join(textwrap.wrap(str(name), width)) or str(name)


def confusion_matrix_figure(cm, class_names, out, normalize: bool = False, title: str | None = None) -> Path:
    """Confusion matrix heat map (rows = true class). normalize=True divides each row by its total (recall on
    the diagonal); rows without images stay empty."""
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = cm / cm.sum(axis=1, keepdims=True) if normalize else cm
    n = len(class_names)
    size = max(5.0, 0.75 * n + 3.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=1 if normalize else max(cm.max(), 1))
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "images")
    limit = (1 if normalize else max(cm.max(), 1)) * 0.6
    for i in range(n):
        for j in range(n):
            if np.isnan(shown[i, j]):
                continue
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if n > 7 else 10,
                    color="white" if shown[i, j] > limit else "black")
    labels = [_wrap(c) for c in class_names]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=9)
    ax.set_yticks(range(n), labels, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix (counts)"))
    return _save(fig, out)


def _operating_point(y, scores, threshold):
    """(fpr, tpr, precision) of the decision scores >= threshold, or None."""
    if threshold is None:
        return None
    y, flagged = np.asarray(y, bool), np.asarray(scores) >= threshold
    tp, fp = (flagged & y).sum(), (flagged & ~y).sum()
    return fp / max((~y).sum(), 1), tp / max(y.sum(), 1), tp / (tp + fp) if tp + fp else 1.0


def roc_figure(y_true, scores, out, threshold=None, title="Melanoma vs rest: ROC", min_tpr: float = 0.8) -> Path:
    """ROC curve of one binary task with its AUC, the ISIC pAUC region (TPR >= min_tpr) shaded and the alert
    operating point marked."""
    y = np.asarray(y_true, bool)
    fpr, tpr, _ = skm.roc_curve(y, scores)
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {skm.roc_auc_score(y, scores):.3f})")
    # the ISIC pAUC is the area between the curve and the line TPR = min_tpr, where the curve is above it
    ax.fill_between(fpr, min_tpr, np.maximum(tpr, min_tpr), alpha=0.25,
                    label=f"pAUC region (sensitivity >= {min_tpr:.0%})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="chance")
    point = _operating_point(y, scores, threshold)
    if point:
        ax.plot(point[0], point[1], ls="none", **ALERT_STYLE,
                label=f"alert >= {threshold:.3g}: sens {point[1]:.2f}, spec {1 - point[0]:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity (false positive rate)",
           ylabel="sensitivity (true positive rate)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def pr_figure(y_true, scores, out, threshold=None, title="Melanoma vs rest: precision-recall") -> Path:
    """Precision-recall curve with average precision, prevalence baseline and the alert operating point."""
    y = np.asarray(y_true, bool)
    precision, recall, _ = skm.precision_recall_curve(y, scores)
    fig = _figure(6.0, 6.3)
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", lw=2,
            label=f"PR (AP {skm.average_precision_score(y, scores):.3f})")
    ax.axhline(y.mean(), ls=":", color="grey", lw=1, label=f"prevalence {y.mean():.2f}")
    point = _operating_point(y, scores, threshold)
    if point:
        ax.plot(point[1], point[2], ls="none", **ALERT_STYLE,
                label=f"alert >= {threshold:.3g}: recall {point[1]:.2f}, precision {point[2]:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05), xlabel="recall (sensitivity)", ylabel="precision (PPV)",
           title=title)
    # below the axes: inside, it hides the curve of a weak model (which hugs the bottom)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def per_class_roc_figure(y_true, probs, class_names, out, title="One-vs-rest ROC per class") -> Path:
    """One ROC curve per class (classes without positives or negatives are listed as 'not scorable')."""
    y, probs = np.asarray(y_true), np.asarray(probs)
    fig = _figure(8.5, 6.0)
    ax = fig.add_subplot()
    colours = [f"C{k % 10}" for k in range(len(class_names))]
    for k, name in enumerate(class_names):
        pos = y == k
        if not pos.any() or pos.all():
            ax.plot([], [], color=colours[k], label=f"{name}: not scorable (no positives)")
            continue
        fpr, tpr, _ = skm.roc_curve(pos, probs[:, k])
        ax.plot(fpr, tpr, color=colours[k], lw=1.5, ls="-" if k < 10 else "--",
                label=f"{name} (AUC {skm.roc_auc_score(pos, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate",
           title=title)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def reliability_figure(reliability: dict, out, ece: float | None = None, title="Reliability diagram") -> Path:
    """Top-label reliability diagram from `metrics.reliability_curve` data: accuracy per confidence bin against
    the diagonal, with the image count per bin underneath."""
    edges = np.asarray(reliability["edges"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    acc = np.array([np.nan if a is None else a for a in reliability["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in reliability["confidence"]])
    fig = _figure(6.0, 6.5)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centres, np.nan_to_num(acc), width=width, color="steelblue", edgecolor="black", alpha=0.8,
           label="accuracy in bin")
    # the gap is drawn hatched, unfilled, between accuracy and mean confidence (above or below the bar)
    ax.bar(centres, np.nan_to_num(np.abs(conf - acc)), bottom=np.nan_to_num(np.minimum(acc, conf)), width=width,
           fill=False, hatch="///", edgecolor="crimson", linewidth=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
           title=title + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centres, reliability["count"], width=width, color="grey", edgecolor="black")
    ax_n.set(xlabel="confidence (top-class probability)", ylabel="images")
    return _save(fig, out)


def class_distribution_figure(counts: dict, out, title="Images per class", used: dict | None = None) -> Path:
    """Horizontal bar chart of images per class (horizontal so long class names stay readable).

    used: images per class that training actually used (after the audit dropped conflicts and unreadable files),
    drawn darker over the dataset's bars and labelled "used of found"."""
    names, values = list(counts), [int(v) for v in counts.values()]
    fig = _figure(7.5, 0.45 * len(names) + 1.5)
    ax = fig.add_subplot()
    if used:
        found = ax.barh(range(len(names)), values, color="lightsteelblue", label="in the dataset")
        kept = [int(used.get(n, 0)) for n in names]
        ax.barh(range(len(names)), kept, color="steelblue", label="used for training and validation")
        ax.bar_label(found, labels=[f"{k:,} of {v:,}" for k, v in zip(kept, values)], padding=3, fontsize=9)
        ax.legend(loc="lower right", fontsize=8)
        title = f"{title} (used {sum(kept):,} of {sum(values):,})"
    else:
        bars = ax.barh(range(len(names)), values, color="steelblue")
        ax.bar_label(bars, padding=3, fontsize=9)
        title = f"{title} (total {sum(values):,})"
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values + [1]) * (1.3 if used else 1.15))
    ax.set(xlabel="images", title=title)
    return _save(fig, out)


def image_grid_figure(images, titles, out, ncols: int = 5, cell: float = 2.4, title: str | None = None) -> Path:
    """Thumbnails in a grid with a (wrapped) caption under each; `images` are PIL images or None (missing)."""
    n = max(len(images), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    width = max(12, int(cell * 11))  # caption characters per line at fontsize 8
    captions = ["\n".join(_wrap(line, width) for line in str(c).split("\n")) for c in titles]
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    # room for the captions: about 0.17 inch per line at fontsize 8, else constrained layout clips the top row
    fig = _figure(cell * ncols, (cell + 0.17 * lines + 0.25) * nrows + (0.4 if title else 0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions):
        if image is None:
            ax.text(0.5, 0.5, "image not available", ha="center", va="center", fontsize=8, color="grey")
        else:
            ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


CURVE_PANELS = (("loss", "loss"), ("acc", "accuracy"), ("bal_acc", "balanced accuracy"))


def training_curves_figure(curves: dict, out) -> Path:
    """Loss, accuracy and balanced accuracy per epoch, train (solid) vs validation (dashed).

    curves: {run name: {"train/loss": {epoch: value}, "val/loss": {...}, ...}}; one colour per run (CV folds).
    """
    fig = _figure(13.0, 4.2)
    axes = fig.subplots(1, len(CURVE_PANELS))
    last_epoch = 1
    for colour, (run, series) in enumerate(curves.items()):
        for ax, (key, label) in zip(axes, CURVE_PANELS):
            for split, style, marker in (("train", "-", "o"), ("val", "--", "s")):
                points = series.get(f"{split}/{key}") or {}
                if points:
                    epochs = sorted(points)
                    last_epoch = max(last_epoch, epochs[-1] + 1)
                    prefix = f"{run} " if len(curves) > 1 else ""
                    ax.plot([e + 1 for e in epochs], [points[e] for e in epochs], style, marker=marker,
                            markersize=4, color=f"C{colour % 10}",
                            label=f"{prefix}{'train' if split == 'train' else 'validation'}")
    for ax, (key, label) in zip(axes, CURVE_PANELS):
        ax.set(xlabel="epoch", title=label, xlim=(0.5, last_epoch + 0.5))
        ax.grid(alpha=0.3)
        # whole epochs only (MaxNLocator alone falls back to fractions when the range holds one integer)
        if last_epoch <= 15:
            ax.set_xticks(range(1, last_epoch + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key != "loss":
            ax.set_ylim(0, 1)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    return _save(fig, out)


# ------------------------------------------------------------------------------------------------ Grad-CAM

ALERT_COLOUR, CALM_COLOUR, REFER_COLOUR = "#b00020", "#1b5e20", "#e65100"
GRADCAM_ALPHA = 0.45  # heat over the lesion: enough to read both


def gradcam_panel_figure(whole, crop_box, model_input, cam, out, title: str, status: list[tuple[str, str]],
                         cam_label: str) -> Path:
    """One Grad-CAM panel: [whole image with the crop the model saw outlined | heatmap over the model input |
    colour bar], a title line and coloured status lines (text, colour) above the images.

    whole: RGB array (the image after the model's resize and colour processing, before the centre crop);
    crop_box: (left, top, size) of the centre crop in `whole`'s pixels; model_input: RGB array [S, S];
    cam: Grad-CAM map [S, S] in [0, 1] (relative: 1 = the strongest region of this image for this class)."""
    from matplotlib.patches import Rectangle

    lines = [(title, "black")] + status
    aspect = whole.shape[1] / whole.shape[0]
    fig = _figure(max(9.0, 4.0 * (aspect + 1) + 1.4), 4.4 + 0.25 * len(lines))  # inches; images 4 in high
    header, body = fig.subfigures(2, 1, height_ratios=[0.25 * len(lines), 4.4])
    for i, (text, colour) in enumerate(lines):
        header.text(0.01, 1 - (i + 0.5) / len(lines), text, ha="left", va="center", color=colour, fontsize=10.5,
                    fontweight="bold" if i else "normal")
    grid = body.add_gridspec(1, 3, width_ratios=[aspect, 1.0, 0.05])
    ax_whole, ax_cam, ax_bar = (body.add_subplot(grid[0, i]) for i in range(3))
    ax_whole.imshow(whole)
    left, top, size = crop_box
    ax_whole.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="white",
                                 linestyle="--", linewidth=1.5))
    ax_whole.set_title("Whole image as the model saw it\n(dashed: the centre crop it classified)", fontsize=9)
    ax_cam.imshow(model_input)
    heat = ax_cam.imshow(cam, cmap="jet", vmin=0.0, vmax=1.0, alpha=GRADCAM_ALPHA)
    ax_cam.set_title(f"Grad-CAM over the model input\n({model_input.shape[1]} x {model_input.shape[0]} px)",
                     fontsize=9)
    for ax in (ax_whole, ax_cam):
        ax.set_xticks([])
        ax.set_yticks([])
    bar = body.colorbar(heat, cax=ax_bar)
    bar.solids.set_alpha(1.0)  # the bar shows the colour scale itself, not the blended overlay
    bar.set_label(cam_label, fontsize=8)
    bar.ax.tick_params(labelsize=8)
    return _save(fig, out)
