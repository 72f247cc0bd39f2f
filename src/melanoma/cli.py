"""Command-line wiring only: parse arguments, call the module that does the work, print, exit.

Plain argparse (no click / Typer / rich-argparse): no extra dependency, and `melanoma --help` or `audit` start in
well under a second because nothing imports torch until a command needs it (the command modules are imported
inside the `_run_*` functions).

Output contract: stdout carries the result only (a short summary, or JSON with `--json`); library logs, progress
bars and warnings go to stderr, and third-party ones only with `--verbose`. Errors are one line on stderr
(`error: ...`, exit status 2), never a traceback: MelanomaError for what the package checks, OSError/ValueError as
the last safety net; argparse errors print the subcommand's own usage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import sys
import warnings
from pathlib import Path

from melanoma import __version__
from melanoma.config import AUGMENTATION_LEVELS, COLOR_CONSTANCY, IMBALANCE_MODES, PRIOR_CORRECTIONS, TrainConfig
from melanoma.errors import DataError, MelanomaError

SHARED_TRAIN = "../shared/data/isic-9class/Train"
THIRD_PARTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch", "timm",
                       "PIL", "onnxruntime", "matplotlib")


# ------------------------------------------------------------------------------------------------ help & types


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default, keeps the examples' line breaks. An option whose default is None says in its
    own help what happens without it (e.g. "default: the model's input size"), so "(default: None)" is left out;
    so is a help text that already names its default."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse `type=` that parses `kind` (int/float) and rejects values outside the range."""
    parts = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
             f"{'<' if high_open else '<='} {high}" if high is not None else ""]
    wanted = f"{'an integer' if kind is int else 'a number'} {' and '.join(p for p in parts if p)}".strip()

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" messages
    parse.low, parse.high = low, high  # read by the tests that generate out-of-range values
    return parse


POSITIVE_INT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
PROBABILITY = _number(float, 0.0, 1.0, low_open=True)  # (0, 1]: a sensitivity target
PREVALENCE = _number(float, 0.0, 1.0, low_open=True, high_open=True)  # (0, 1): a share of a site's lesions


def existing_path(text: str) -> str:
    """An argparse `type=` for an input file or folder. An empty one is a usage error; a missing one is checked
    right after parsing (`_check_input_paths`): a data problem, so one line without the usage text."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def _check_input_paths(args) -> None:
    """DataError naming the first input path (an option with type=existing_path) that does not exist; runs before
    any model or library is loaded."""
    for action in getattr(args, "command_parser", argparse.ArgumentParser())._actions:
        if action.type is not existing_path:
            continue
        values = getattr(args, action.dest, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not Path(value).expanduser().exists():
                where = action.option_strings[-1] if action.option_strings else action.dest.upper()
                raise DataError(f"{value}: no such file or folder ({where})")


def _cfg_default(name: str):
    """TrainConfig's default for a field, as shown in `train --help`."""
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return field.default


RESUMES = ("Killed before it finished? Run the same command again: it predicts only the images it had not reached "
           "(partial results under $MELANOMA_CACHE_DIR, default ~/.cache/melanoma).")


def _command(sub, name: str, help_: str, examples: list[str] | str, resumes: bool = False
             ) -> argparse.ArgumentParser:
    """Add a subcommand whose --help shows what it does, its examples and every option's default; resumes: say
    that a killed run continues (partial.py)."""
    lines = "\n".join(f"  {e}" for e in ([examples] if isinstance(examples, str) else examples))
    description = f"{help_}" + (f" {RESUMES}" if resumes else "")
    p = sub.add_parser(name, help=help_.replace("%", "%%"), description=f"{description}\n\nexamples:\n{lines}",
                       formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show library logs, warnings and progress bars (on stderr)")
    p.set_defaults(command_parser=p)
    return p


def _add_json_flag(p) -> None:
    p.add_argument("--json", action="store_true", help="print the full result as JSON (for scripts) instead of the "
                   "short summary")


# ------------------------------------------------------------------------------------------------ output


def _round(value, digits: int = 3):
    """Floats rounded for people (AUC 0.972, not 0.9722222222222222), recursively."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def _summary_lines(result: dict, indent: str = "") -> list[str]:
    """`key: value` lines of a (nested) result, numbers rounded to 3 decimals, None and empty values left out."""
    lines = []
    for key, value in result.items():
        if value is None or value == {} or value == []:
            continue
        label = str(key).replace("_", " ")
        if isinstance(value, dict):
            lines += [f"{indent}{label}:", *_summary_lines(value, indent + "  ")]
        elif isinstance(value, list):
            lines.append(f"{indent}{label}: {', '.join(str(_round(v)) for v in value)}")
        else:
            lines.append(f"{indent}{label}: {_round(value)}")
    return lines


def _emit(result: dict, as_json: bool, summary: str | None = None) -> None:
    """The command's result on stdout: full JSON for scripts, else a short summary for people."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(summary if summary is not None else "\n".join(_summary_lines(result)))


@contextlib.contextmanager
def _library_output_to_stderr():
    """Whatever libraries print while a command works (Lightning's progress bars and banners) goes to stderr;
    stdout stays the command's result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _quiet_third_party_logs(verbose: bool) -> None:
    """Call after the libraries are imported (Lightning sets its own logger to INFO on import)."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def _show_warning(verbose: bool):
    """warnings.showwarning replacement: one `warning: ...` line on stderr for the package's own warnings;
    third-party ones (deprecations, library hints) only with --verbose."""
    def show(message, category, filename, lineno, file=None, line=None):
        ours = (category.__module__ or "").startswith("melanoma")  # MelanomaWarning, data.SparseClassWarning...
        if ours or verbose:
            text = " ".join(str(message).split())
            print(f"warning: {text}" if ours else f"warning ({category.__name__}): {text}", file=sys.stderr)
    return show


# ------------------------------------------------------------------------------------------------ audit


def _add_audit(sub) -> None:
    p = _command(sub, "audit", "Audit an image dataset: class counts, sizes, unreadable files, exact and near "
                 "duplicates, label conflicts and (with --against) overlap with another set. Reads images only "
                 "(no model, no torch).",
                 [f"melanoma audit {SHARED_TRAIN}",
                  f"melanoma audit {SHARED_TRAIN} --against ../shared/data/ham10000 --json audit.json"])
    p.add_argument("data", type=existing_path,
                   help="folder of class folders, CSV manifest, ISIC ground-truth CSV or HAM10000 folder")
    p.add_argument("--against", type=existing_path, help="another dataset: report its images that also occur in DATA")
    p.add_argument("--json", dest="json_path", nargs="?", const="-", metavar="FILE",
                   help="write the full report as JSON to FILE (no FILE: print it on stdout instead of the summary)")
    p.add_argument("--near-distance", type=_number(int, 0, 64), default=4,
                   help="max perceptual-hash Hamming distance (0-64) for near duplicates")
    p.add_argument("--max-pixels", type=POSITIVE_INT, default=100_000_000,
                   help="reject images above this many pixels as decompression bombs")
    p.add_argument("--workers", type=POSITIVE_INT, help="decoding processes (default: all cores)")
    p.set_defaults(func=_run_audit)


def _run_audit(args) -> int:
    from melanoma import data

    table = data.discover(args.data)
    other = data.discover(args.against) if args.against else None
    report = data.audit(table, against=other, near_distance=args.near_distance,
                        max_pixels=args.max_pixels, workers=args.workers)
    if args.json_path == "-":
        print(json.dumps(report, indent=2))
    else:
        print(data.format_audit(report))
    if args.json_path and args.json_path != "-":
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_path}")
    if report["n_readable"] == 0:
        raise DataError(f"{args.data}: none of its {report['n_unreadable']} image file(s) could be read (reasons above)")
    return 0


# ------------------------------------------------------------------------------------------------ augment


def _add_augment(sub) -> None:
    p = _command(sub, "augment", "Write augmented copies of a class-folder dataset to a SEPARATE folder (never into "
                 "DATA); each copy records its source so splits keep copies with their source.",
                 [f"melanoma augment {SHARED_TRAIN} --per-class 500 --out runs/augmented"])
    p.add_argument("data", type=existing_path, help="folder of class folders (or any layout `audit` reads)")
    p.add_argument("--per-class", type=POSITIVE_INT, required=True,
                   help="target number of images per class (originals + copies)")
    p.add_argument("--out", required=True, help="output folder (new or empty; must not be inside DATA)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed of the augmentations")
    _add_json_flag(p)
    p.set_defaults(func=_run_augment)


def _run_augment(args) -> int:
    with _library_output_to_stderr():
        from melanoma.augment import augment_dataset

        summary = augment_dataset(args.data, args.out, per_class=args.per_class, seed=args.seed)
    per_class = ", ".join(f"{k} {v['originals']}+{v['copies']}" for k, v in summary["classes"].items())
    _emit(summary, args.json, f"wrote {summary['copies']} augmented copies to {summary['out']} "
                              f"(manifest {summary['manifest']})\nper class, originals+copies: {per_class}")
    return 0


# ------------------------------------------------------------------------------------------------ train

# (flag, type, meaning); the default shown is TrainConfig's (a --config YAML may change it)
TRAIN_NUMBERS = [
    ("--epochs", POSITIVE_INT, "maximum training epochs (early stopping may end sooner)"),
    ("--image-size", _number(int, 32, 1024), "network input size in pixels (default: the model's own)"),
    ("--batch-size", POSITIVE_INT, "images per training batch"),
    ("--lr", _number(float, 0.0, 1.0, low_open=True),
     "peak learning rate (default: 1e-3; Adam for seed-cnn, AdamW otherwise)"),
    ("--weight-decay", _number(float, 0.0),
     "AdamW's decoupled weight decay; larger values pull the weights harder towards zero (default: 0.01; 0 for "
     "seed-cnn, whose layers apply their own L2)"),
    ("--val-fraction", _number(float, 0.0, 0.5, low_open=True, high_open=True),
     "share of the primary data held out for validation (hold-out runs; ignored with --folds)"),
    ("--folds", _number(int, 2), "K-fold cross-validation with K >= 2 folds (default: none, one hold-out split)"),
    ("--seed", NON_NEGATIVE_INT, "random seed (splits, sampling, augmentation)"),
    ("--split-seed", NON_NEGATIVE_INT, "seed of the train/validation split only (default: --seed); runs of "
     "several seeds with one split seed validate on the same images, so their ensemble is scored on them"),
    ("--backbone-lr-scale", _number(float, 0.0, 1.0, low_open=True),
     "the pretrained backbone learns at --lr times this, the new classifier head at --lr (< 1 keeps more of the "
     "pretrained features)"),
    ("--linear-probe-epochs", NON_NEGATIVE_INT, "train only the classifier head for the first N epochs (backbone "
     "frozen, its batch norm in eval mode), then everything: linear probe then fine-tune (LP-FT)"),
    ("--label-smoothing", _number(float, 0.0, 1.0, high_open=True),
     "share of every training target spread evenly over all classes (0: plain cross-entropy)"),
    ("--mixup", _number(float, 0.0),
     "mixup (Zhang et al. 2018): train on pairs of images blended with a Beta(ALPHA, ALPHA) weight, the loss blended "
     "alike (0: off; 0.2 is the usual ImageNet value)"),
    ("--mixstyle", _number(float, 0.0, 1.0),
     "MixStyle (Zhou et al. 2021): with this probability per batch, blend each image's early feature statistics "
     "with another image's, so the camera's and clinic's style stops being a cue (0: off; 0.5 as published)"),
    ("--drop-path", _number(float, 0.0, 1.0, high_open=True),
     "stochastic depth (Huang et al. 2016): in training, skip each residual block with a probability rising to RATE "
     "at the deepest (timm's drop_path_rate; 0: off; 0.2 as EfficientNet's ImageNet training)"),
    ("--freeze-early-stages", NON_NEGATIVE_INT,
     "the stem and the first N stages of an EfficientNet keep their pretrained weights and batch-norm statistics for "
     "the whole run (0: off); its low-level filters cannot turn into detectors of a source's noise or compression"),
    ("--rank-loss", _number(float, 0.0),
     "add this weight times a pairwise ranking loss on the melanoma score (every melanoma of a batch against every "
     "other lesion: a smooth surrogate of 1 - melanoma AUC) to the cross-entropy (0: off)"),
    ("--sam", _number(float, 0.0),
     "sharpness-aware minimisation (Foret et al. 2021) with this radius RHO: each step applies the gradient taken "
     "at the worst weights within RHO, which prefers flat minima; twice the compute per step (0: off; 0.05 as "
     "published)"),
    ("--num-nodes", POSITIVE_INT, "machines for distributed training"),
    ("--num-workers", NON_NEGATIVE_INT, "data-loading processes (default: min(4, cores - 1))"),
    ("--target-sensitivity", PROBABILITY,
     "the melanoma alert threshold keeps at least this validation sensitivity (0-1]"),
    ("--max-train-batches", POSITIVE_INT, "cap on batches per epoch (smoke runs)"),
    ("--patience", POSITIVE_INT, "early stopping: epochs without a better validation balanced accuracy"),
    ("--samples-per-epoch", POSITIVE_INT, "sampler draws per epoch (default: the size of the training side)"),
    ("--ema", _number(float, 0.0, 1.0, low_open=True, high_open=True),
     "keep an exponential moving average of the weights with this decay (e.g. 0.999); it is validated, "
     "checkpointed and shipped"),
    ("--swa-epochs", POSITIVE_INT, "stochastic weight averaging over the last N epochs (BN statistics recomputed); "
     "the average is shipped"),
    ("--swa-lr", _number(float, 0.0, 1.0, low_open=True),
     "with --swa-epochs: hold the learning rate at this fraction of the peak over the averaging window (the cosine "
     "decay ends there at it, as published SWA); default: the cosine decay runs on through the window"),
    ("--holdout-max-images", _number(int, 10), "at most this many images of --holdout-source validate"),
]
TRAIN_TEXTS = [
    ("--devices", "devices per machine: auto, a count, or a list such as 0,1"),
    ("--strategy", "Lightning strategy: auto, ddp, ..."),
    ("--precision", "32-true, bf16-mixed or 16-mixed (default: bf16-mixed on GPU; on CPU the faster of 32-true "
                    "and bf16-mixed for this model, measured once and cached)"),
    ("--holdout-source", "leave this source out (the primary data's folder name or an --extra-data folder name): "
                         "train on the others, validate, choose checkpoints and thresholds on it (images it and "
                         "a training source both hold do neither)"),
]


def _with_default(help_: str, name: str) -> str:
    default = _cfg_default(name)
    if default is None or "default:" in help_:
        return help_
    return f"{help_} (default: {default})"


def _add_train(sub) -> None:
    p = _command(sub, "train", "Train a classifier (Lightning): hold-out validation or group-aware K-fold CV; "
                 "writes a run folder with config, logs, checkpoints, model.safetensors and model.json.",
                 [f"melanoma train --data {SHARED_TRAIN} --epochs 12 --out runs/lite0",
                  f"melanoma train --data {SHARED_TRAIN} --model efficientnet_lite0 --folds 5 --out runs/cv",
                  f"melanoma train --data {SHARED_TRAIN} --extra-data ../shared/data/ham10000 --out runs/plus-ham",
                  "melanoma train --resume runs/cv"])
    p.add_argument("--data", type=existing_path, help="training dataset (any layout `audit` reads)")
    p.add_argument("--config", type=existing_path, help="YAML file of TrainConfig fields; flags override it")
    p.add_argument("--model", help=_with_default("registry name: seed-cnn, efficientnet_lite0, or any timm model "
                                                 "name", "model"))
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights (default: yes for efficientnet_lite0, offline; no for seed-cnn "
                        "and timm models, whose weights need a hub download)")
    p.add_argument("--weights", type=existing_path, help="local state dict (.pt/.pth) or .safetensors file to "
                   "start from")
    for flag, typ, meaning in TRAIN_NUMBERS:
        p.add_argument(flag, type=typ, help=_with_default(meaning, flag[2:].replace("-", "_")))
    for flag, meaning in TRAIN_TEXTS:
        p.add_argument(flag, help=_with_default(meaning, flag[2:].replace("-", "_")))
    p.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], help=_with_default("hardware", "accelerator"))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format, faster convolutions on AVX-512/AMX CPUs and GPUs (default: on)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="the backbone's batch-norm layers keep their pretrained (ImageNet) statistics for the whole "
                        "run instead of learning those of the class-balanced training batches (default: off)")
    p.add_argument("--fold-ensemble", action="store_true", default=None,
                   help="with --folds: also write the K fold models as ONE model (RUN/ensemble) whose alert "
                        "threshold and referral are fitted on the out-of-fold predictions")
    p.add_argument("--val-sources", choices=["primary", "all"],
                   help="validate on the primary data only (default) or on a share of every source (--extra-data "
                        "too), so checkpoint, alert threshold and referral statistics fit every training source")
    p.add_argument("--monitor", choices=["auto", "bal_acc", "mel_auc"],
                   help="validation figure that chooses the checkpoint and stops early (default: auto = mel_auc "
                        "with --holdout-source, else bal_acc)")
    p.add_argument("--imbalance", choices=IMBALANCE_MODES,
                   help="class imbalance handling (default: sampler, every class and source equally often; "
                        "source-balanced: the natural class mix, sources equal within a class)")
    p.add_argument("--conflict-policy", choices=["drop", "keep", "first", "reference"],
                   help="images filed under two classes: drop (default), keep, first, or reference (the label "
                        "--extra-data gives the same image or lesion decides)")
    p.add_argument("--color-constancy", choices=COLOR_CONSTANCY,
                   help="colour normalisation before the network, stored in model.json and applied on every path "
                        "(default: shades_of_gray, which evens out clinic / device colour casts; without it a source "
                        "the model never saw lost 0.1-0.2 melanoma AUC, docs/results.md session 27)")
    p.add_argument("--detail-size", type=POSITIVE_INT, metavar="PX",
                   help="reduce every larger image to this shorter side first, on every path (stored in model.json), "
                        "so sharper sources do not look different from the lowest-resolution one (e.g. 150 for "
                        "HAM10000's 200x150 copies; default: off)")
    p.add_argument("--augmentation", choices=AUGMENTATION_LEVELS,
                   help="training augmentation (default: standard; strong adds wider colour jitter, blur and JPEG "
                        "re-compression, measured WORSE on a new source, see docs; resolution: half the draws "
                        "first shrunk to 40-100%% of their size and enlarged back, so detail stops being a cue; "
                        "geometric: standard without its colour jitter; erasing: standard, then half the draws "
                        "lose a random rectangle of 2-25%% of the image; zoom: standard with crops of 30-100%% of the "
                        "image and an affine scale of 0.75-1.25; hair: standard, half the draws first get 1-12 "
                        "dark hair strands drawn over them; fixed-scale: the eval preset's resize and a square crop "
                        "at a random place, rotations and shifts but no scaling; strong-colour: strong's wider colour "
                        "jitter without its blur and JPEG; augmix, jpeg, noise, noise-mild and noise-match (per-source "
                        "noise: the less noisy source's images brought to the noisiest's levels), ink (half the "
                        "draws get a violet skin-marker ring), marks (ink with rings or arrows): docs/training.md)")
    p.add_argument("--extra-data", action="append", metavar="DIR", type=existing_path,
                   help="extra dataset that trains (repeatable), e.g. ../shared/data/ham10000; it validates only "
                        "with --val-sources all or --holdout-source; its copies of primary images and lesions are "
                        "left out")
    p.add_argument("--extra-labels", metavar="MAP",
                   help="label map of --extra-data into the training classes: auto (default: HAM10000 dx codes "
                        "-> 9-class names), ham10000, or a YAML file 'label: class | [classes] | null'")
    p.add_argument("--coarse-labels", action=argparse.BooleanOptionalAction, default=None,
                   help="train on --extra-data's ambiguous labels (HAM10000 akiec = actinic keratosis or squamous "
                        "cell carcinoma, bkl = pigmented benign or seborrheic keratosis) through the summed "
                        "probability of the classes they allow (default: off, they only settle conflicts)")
    p.add_argument("--lesion-metadata", metavar="CSV", type=existing_path,
                   help="HAM10000-style metadata (image_id, lesion_id): all photos of a lesion stay on one side of "
                        "every split, e.g. ../shared/data/ham10000/HAM10000_metadata.csv")
    p.add_argument("--near-distance", type=_number(int, 0, 64),
                   help="pictures within this perceptual-hash distance (0-64) share a split group (default: 4)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--resume", metavar="RUN", type=existing_path, help="continue an interrupted run folder")
    _add_json_flag(p)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from melanoma.config import config_from_args

    cfg = config_from_args(args)  # ConfigError before the slow imports
    with _library_output_to_stderr():
        from melanoma.training import train

        _quiet_third_party_logs(args.verbose)
        result = train(cfg)
    _emit(result.get("summary", {}), args.json)
    return 0


# ------------------------------------------------------------------------------------------------ threshold


def _add_threshold(sub) -> None:
    p = _command(sub, "threshold", "Re-choose the melanoma alert threshold of a model for another sensitivity "
                 "target, from its stored validation / out-of-fold predictions or from a clinic's own labelled "
                 "images (--predictions: the predictions.csv of `melanoma evaluate`); no retraining. Writes a NEW "
                 "model folder (--out) unless --in-place.",
                 ["melanoma threshold models/default --target-sensitivity 0.95 --out models/sens95",
                  "melanoma evaluate --model runs/cv --data clinic/ --out clinic-eval\n"
                  "  melanoma threshold runs/cv --target-sensitivity 0.9 --predictions clinic-eval/predictions.csv "
                  "--out runs/cv-clinic"])
    p.add_argument("run", type=existing_path, help="model folder (model.json + model.safetensors)")
    p.add_argument("--target-sensitivity", type=PROBABILITY, required=True,
                   help="the highest threshold keeping at least this melanoma sensitivity (0-1] is chosen")
    p.add_argument("--predictions", type=existing_path, help="predictions.csv written by `melanoma evaluate` on "
                   "local labelled images (default: the model's validation predictions, RUN/val_predictions.csv)")
    p.add_argument("--per-source", action=argparse.BooleanOptionalAction, default=None,
                   help="the lowest of the thresholds reaching the target on each training source's images "
                        "separately, so no source falls below it (an alert meant for clinics unlike any one source); "
                        "--no-per-source: one threshold on all images pooled (default: as the model's alert was "
                        "chosen, model.json thresholds.melanoma_alert_policy)")
    p.add_argument("--detail-levels", type=int, nargs="+", metavar="PX",
                   help="also calibrate images with less detail than the model trained on: predict its validation "
                        "images again reduced to each shorter side (px, below its detail_size, e.g. 135 120 100) "
                        "and store, per level, how far their melanoma odds are lowered so that the alert keeps the "
                        "target there too (model.json detail_calibration; a few minutes per level; run again "
                        "after a kill, it resumes)")
    p.add_argument("--prior-correction", choices=PRIOR_CORRECTIONS,
                   help="training-mix: move the probabilities from the balanced classes the network trained on to "
                        "the class mix of its training sources (read from its validation labels), so that classes "
                        "rare at a clinic stop drawing melanoma probability; none: remove it; auto: training-mix "
                        "for networks trained on balanced classes, none for those trained at the sources' mix "
                        "(--imbalance none or source-balanced) (default: keep the model's). The threshold is then "
                        "chosen on the moved probabilities; a detail calibration must be refitted with it "
                        "(--detail-levels)")
    p.add_argument("--tta-views", type=_number(int, 1, 8), metavar="N",
                   help="test-time augmentation: predict the model's validation images again averaging N views "
                        "(flips, 90-degree rotations; 1: none), choose the threshold on those probabilities and "
                        "store N in the model, so that predict, evaluate and the service average N views by default "
                        "(N forward passes per image); a detail calibration must be refitted with it "
                        "(--detail-levels). Resumes after a kill (default: keep the model's)")
    _add_out_or_in_place(p, "the new threshold", "RUN/model.json itself")
    _add_json_flag(p)
    p.set_defaults(func=_run_threshold)


def _add_tta_flags(p) -> None:
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: average the probabilities over flips and 90-degree rotations (each "
                        "view costs one more forward pass); --no-tta: one view (default: the views the model's alert "
                        "threshold was chosen on, model.json test_time_augmentation; 1 without it)")
    p.add_argument("--tta-views", type=_number(int, 1, 8),
                   help="views to average (1-8; default: 8 with --tta, else the model's); another count than the "
                        "model's warns: its alert threshold was chosen on those")


def _add_out_or_in_place(p, what: str, in_place: str) -> None:
    """--out NEW_FOLDER (a copy of RUN with `what`) or --in-place (update `in_place`): one of them, required."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help=f"new model folder: a copy of RUN with {what} (RUN is untouched)")
    where.add_argument("--in-place", action="store_true", help=f"update {in_place}")


def _threshold_summary(r: dict) -> str:
    old = "none" if r["old"] is None else f"{r['old']:.4f}"
    return (f"melanoma alert threshold {old} -> {r['new']:.4f} for target sensitivity {r['target_sensitivity']:.3f}\n"
            f"on {r['n_melanoma']} melanoma / {r['n_other']} other images ({r['predictions']}): "
            f"sensitivity {r['sensitivity']:.3f}, specificity {r['specificity']:.3f}\n"
            + "".join(f"  {name}: sensitivity {_round(v['sensitivity'])}, specificity {_round(v['specificity'])}, "
                      f"alerts on {v['alert_share']:.1%} of {v['n']} images\n" for name, v in r["by_source"].items()
                      if len(r["by_source"]) > 1)  # one line per source, when there are several
            + _detail_summary(r.get("detail_calibration"), r.get("detail_calibration_refitted"))
            + _prior_summary(r.get("prior_correction"), r.get("prior_correction_changed"))
            + (f"test-time augmentation: {r['tta_views']} view(s) per image from now on\n" if r.get("tta_views_changed")
               else "")
            + f"wrote {r['model']}")


def _prior_summary(section: dict | None, changed: bool) -> str:
    if not changed:
        return ""
    if not section:
        return "prior correction removed: probabilities as trained (every class equally likely)\n"
    counts = ", ".join(f"{c} {n}" for c, n in section["class_counts"].items())
    return f"prior correction: probabilities moved to the training mix ({counts})\n"


def _detail_summary(calibration: dict | None, refitted: bool) -> str:
    if not calibration:
        return ""
    levels = ", ".join(f"{lv['shorter_side']} px {lv['alert_threshold']:.4f}" for lv in calibration["levels"])
    how = "fitted" if refitted else f"kept (fitted for sensitivity {calibration['target_sensitivity']:.3f})"
    return f"detail calibration {how}: alert threshold of images reduced to {levels}\n"


def _run_threshold(args) -> int:
    from melanoma.finalize import rethreshold

    result = rethreshold(args.run, args.target_sensitivity, args.predictions, out=args.out,
                         per_source=args.per_source, detail_levels=args.detail_levels,
                         prior_correction=args.prior_correction, tta_views=args.tta_views)
    _emit(result, args.json, _threshold_summary(result))
    return 0


def _add_site_threshold(sub) -> None:
    p = _command(sub, "site-threshold", "Adapt the melanoma alert threshold to a site from its images' predictions, "
                 "WITHOUT diagnoses: the threshold that alerts the share of them which the model's validation "
                 "operating point predicts at the site's melanoma prevalence (--prevalence). On a source the model "
                 "never saw it kept 0.85-0.89 sensitivity at specificity 0.62-0.68 where the validation threshold "
                 "gave 0.90-0.96 at 0.25-0.57 (docs/results.md, session 46). Writes a NEW model folder (--out) "
                 "unless --in-place.",
                 ["melanoma predict clinic/ --out clinic.csv\n"
                  "  melanoma site-threshold models/default --predictions clinic.csv --prevalence 0.1 "
                  "--out models/clinic"])
    p.add_argument("run", type=existing_path, help="model folder (model.json + model.safetensors)")
    p.add_argument("--predictions", type=existing_path, required=True,
                   help="the site's images predicted by this model at its own test-time views (`melanoma predict` "
                        "CSV, or `melanoma evaluate`'s predictions.csv): their melanoma probabilities; at least 50 "
                        "images, a few hundred for a stable threshold")
    p.add_argument("--prevalence", type=PREVALENCE, required=True,
                   help="the share of the site's lesions that are melanomas, (0, 1): about 0.1 in a referral "
                        "clinic, 0.01-0.02 in screening")
    _add_out_or_in_place(p, "the adapted threshold", "RUN/model.json itself")
    _add_json_flag(p)
    p.set_defaults(func=_run_site_threshold)


def _run_site_threshold(args) -> int:
    from melanoma.artifacts import read_meta
    from melanoma.site_check import site_probabilities, write_site_threshold

    probabilities = site_probabilities(args.predictions, read_meta(args.run))
    result = write_site_threshold(args.run, args.out, probabilities, args.prevalence,
                                  chosen_on=f"{Path(args.predictions).resolve()} (alert share matched, no diagnoses)")
    _emit(result, args.json,
          f"melanoma alert threshold {result['old']:.4f} -> {result['new']:.4f}: alerts {result['alerted_after']:.1%} "
          f"of the {result['n_images']} site images (before {result['alerted_before']:.1%}), the share the "
          f"validation operating point predicts at {result['prevalence']:.0%} melanoma\nwrote {result['model']}")
    return 0


def _add_referral(sub) -> None:
    p = _command(sub, "referral", "Re-fit a model's referral limits at other quantiles of its validation images "
                 "(their paths and labels in val_predictions.csv; the images must still exist), without retraining: "
                 "how many lesions are referred for low confidence and as not like the training images. Writes a "
                 "NEW model folder (--out) unless --in-place; the network's weights stay as they are.",
                 ["melanoma referral runs/lite0 --out runs/lite0-referral",
                  "melanoma referral models/default --confidence-quantile 0.05 --ood-quantile 0.975 --out models/strict"],
                 resumes=True)
    p.add_argument("run", type=existing_path, help="model folder (model.json + model.safetensors + "
                   "val_predictions.csv)")
    p.add_argument("--confidence-quantile", type=_number(float, 0.0, 0.5, high_open=True), default=0.01,
                   help="refer below this quantile of the validation confidences (the most lenient source's)")
    p.add_argument("--ood-quantile", type=_number(float, 0.5, 1.0, low_open=True), default=0.995,
                   help="refer above this quantile of the validation lesions' out-of-distribution scores (out of "
                        "fold; the most lenient source's)")
    _add_out_or_in_place(p, "the new limits", "RUN itself")
    _add_json_flag(p)
    p.set_defaults(func=_run_referral)


def _referral_summary(r: dict) -> str:
    old, new = r["old"], r["new"]
    by_source = r["validation"].get("by_source") or {"all": r["validation"]}
    return (f"referral quantiles: low confidence {_round(old['confidence_quantile'])} -> "
            f"{new['confidence_quantile']}, not like the training images {_round(old['ood_quantile'])} -> "
            f"{new['ood_quantile']} (limits {old['refer_confidence']:.4f} / {old['ood_score']:.3f} -> "
            f"{new['refer_confidence']:.4f} / {new['ood_score']:.3f})\n"
            + (f"layers read: {_stages(old['layers'])} -> {_stages(new['layers'])}\n"
               if old["layers"] != new["layers"] else "")
            + "".join(f"  {name}: {v['share_referred']:.1%} of {v['n']} validation images referred "
                      f"({v['share_low_confidence']:.1%} low confidence, {v['share_ood']:.1%} not like the training "
                      "images, out of fold)\n" for name, v in by_source.items())
            + f"wrote {r['model']}")


def _stages(layers: list[str]) -> str:
    """Layer names without their ensemble member prefix ("members.3.blocks.5" -> "blocks.5"), each once."""
    return ", ".join(dict.fromkeys(re.sub(r"^members\.\d+\.", "", n) for n in layers)) or "none"


def _run_referral(args) -> int:
    with _library_output_to_stderr():
        from melanoma.referral_refit import refit_referral

        result = refit_referral(args.run, args.confidence_quantile, args.ood_quantile, out=args.out)
    _emit(result, args.json, _referral_summary(result))
    return 0


# ------------------------------------------------------------------------------------------------ evaluate


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", "Evaluate a model on labelled data: ISIC metrics with bootstrap 95% CIs, "
                 "predictions.csv, metrics.json and plots. Images the model was trained on are left out first.",
                 ["melanoma evaluate --model runs/cv --data path/to/Test --out runs/cv/eval",
                  "melanoma evaluate --model models/default --data ../shared/data/ham10000 --label-map isic2018"],
                 resumes=True)
    p.add_argument("--model", required=True, type=existing_path,
                   help="run folder, model.json/model.safetensors, or .onnx file")
    p.add_argument("--data", required=True, type=existing_path, help="labelled dataset (any layout `audit` reads)")
    p.add_argument("--out", help="output folder (default: <model folder>/eval-<data name>)")
    _add_tta_flags(p)
    p.add_argument("--label-map", help="dataset labels -> model classes: isic2018 | isic2019 | isic2017 | binary | "
                   "path to a YAML map (default: labels must be the model's class names)")
    p.add_argument("--bootstrap", type=NON_NEGATIVE_INT, default=1000,
                   help="bootstrap resamples for the 95%% CIs (0: no CIs)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="bootstrap random seed")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="images per inference batch")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--exclude-overlap-with", metavar="DIR", action="append", type=existing_path,
                       help="ALSO leave out images that occur in DIR (repeatable); the model's own training data "
                            "(fingerprint in the model file, or the folders named in model.json) is always checked")
    check.add_argument("--no-overlap-check", action="store_true",
                       help="score every image even if the model was trained on it (warns; recorded in "
                            "metrics.json)")
    p.add_argument("--score-label-conflicts", action="store_true",
                   help="also score pictures that DATA holds under two or more labels (identical pixels); by "
                        "default they are left out of the metrics, named on stderr and in metrics.json, because "
                        "one copy is wrong whatever the model predicts")
    _add_json_flag(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    with _library_output_to_stderr():
        from melanoma.evaluate import evaluate, format_metrics

        _quiet_third_party_logs(args.verbose)
        result = evaluate(args.model, args.data, out=args.out, tta=args.tta, tta_views=args.tta_views,
                          label_map=args.label_map, bootstrap=args.bootstrap, seed=args.seed,
                          batch_size=args.batch_size,
                          exclude_overlap_with=False if args.no_overlap_check else args.exclude_overlap_with,
                          score_label_conflicts=args.score_label_conflicts)
    _emit(result, args.json, format_metrics(result))
    return 0


# ------------------------------------------------------------------------------------------------ report


REPORT_INPUTS = ("model.json", "metrics.json", "val_metrics.json", "cv_summary.json")


def _add_report(sub) -> None:
    p = _command(sub, "report", "Build a self-contained HTML report (plots embedded) for a training run.",
                 ["melanoma report runs/cv --data ../shared/data/isic-9class/Train"])
    p.add_argument("run", type=existing_path, help="run folder written by `melanoma train`")
    p.add_argument("--data", type=existing_path,
                   help="dataset for the class distribution and samples (default: the run's data)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    run = Path(args.run)
    if not run.is_dir() or not any((run / name).is_file() for name in REPORT_INPUTS):
        raise DataError(f"{run}: not a run or evaluate folder (it holds none of {', '.join(REPORT_INPUTS)})")
    with _library_output_to_stderr():
        from melanoma.report import build_report

        path = build_report(args.run, data=args.data)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------ predict


def _add_predict(sub) -> None:
    p = _command(sub, "predict", "Predict lesion classes for files, folders (recursive) or globs; flags probable "
                 "melanoma (alert) and images the model should not be trusted on (refer).",
                 ["melanoma predict photos/ --out preds.csv --explain heatmaps/"])
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model", help="run folder, model.json/model.safetensors, or .onnx (default: shipped model)")
    p.add_argument("--out", help="output file (default: print CSV to stdout)")
    p.add_argument("--format", choices=["csv", "isic", "json"], default="csv",
                   help="csv: probabilities, alert and referral per image; isic: the ISIC challenge submission "
                        "CSV (ISIC 2018 columns); json: the model, one record per image and the skipped files")
    _add_tta_flags(p)
    p.add_argument("--explain", metavar="DIR", help="write Grad-CAM heatmap PNGs here")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="images per inference batch")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: keep the complete rows already in --out (csv) and predict only "
                        "the missing images (without an existing --out file: start fresh)")
    p.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
    from melanoma.predict import run_predict

    return run_predict(args.paths, model=args.model, out=args.out, fmt=args.format, tta=args.tta,
                       tta_views=args.tta_views, explain_dir=args.explain, batch_size=args.batch_size,
                       resume=args.resume)


# ------------------------------------------------------------------------------------------------ export


def _add_export(sub) -> None:
    p = _command(sub, "export", "Export a model to ONNX (dynamic batch, metadata embedded) and check parity "
                 "with PyTorch (fails above 1e-4).", ["melanoma export runs/cv --out model.onnx"])
    p.add_argument("model", help="run folder or model.json/model.safetensors")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX operator set version of the exported graph")
    p.add_argument("--int8", action="store_true",
                   help="also write OUT's .int8.onnx (static INT8 quantization), only if on labelled images melanoma "
                        "AUC moves by <= 0.005 and >= 99%% of alert decisions agree; prints both figures")
    p.add_argument("--calibration", metavar="PATH",
                   help="INT8 calibration images: a folder or a prediction CSV's paths (default: the run's "
                        "val_predictions.csv)")
    p.add_argument("--int8-check", metavar="PATH",
                   help="labelled images for the INT8 check: a prediction CSV with path and label, or a dataset "
                        "folder (default: the run's validation images not used for calibration)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    with _library_output_to_stderr():  # the ONNX exporter's own messages never reach stdout
        from melanoma.export import export_int8, export_onnx

        _quiet_third_party_logs(getattr(args, "verbose", False))
        result = export_onnx(args.model, args.out, opset=args.opset)
        if args.int8:
            try:
                result["int8"] = export_int8(args.model, args.out, calibration=args.calibration,
                                             check=args.int8_check)
            except MelanomaError:
                print(json.dumps(result, indent=2), file=sys.__stdout__)  # the fp32 file is written and good
                raise
    print(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------ ensemble


def _add_ensemble(sub) -> None:
    from melanoma.artifacts import WEIGHTS_DTYPES  # stdlib-only at import: the CLI stays fast to start

    p = _command(sub, "ensemble", "Combine trained runs into ONE model folder whose output is the mean of the "
                 "members' calibrated probabilities; its alert threshold, referral and metrics are fitted on the "
                 "ensemble's own held-out predictions. A CV run stands for all its folds.",
                 ["melanoma ensemble runs/lite0-s1 runs/lite0-s2 runs/lite0-s3 --out runs/ensemble",
                  "melanoma ensemble runs/cv --out runs/cv-ensemble"], resumes=True)
    p.add_argument("runs", nargs="+", type=existing_path, metavar="RUN",
                   help="run folders written by `melanoma train` (same classes, input size and preprocessing)")
    p.add_argument("--out", required=True, help="new model folder for the ensemble")
    p.add_argument("--target-sensitivity", type=PROBABILITY,
                   help="the alert keeps at least this held-out melanoma sensitivity (default: the first run's)")
    p.add_argument("--bootstrap", type=NON_NEGATIVE_INT, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of the bootstrap and referral folds")
    p.add_argument("--weights-dtype", choices=WEIGHTS_DTYPES, default="float32",
                   help="storage of the members' weights: float16 halves the file, int8 (per output channel, "
                        "dequantised at load) quarters it; the members are rounded before the held-out "
                        "predictions, so threshold and referral fit the shipped weights")
    _add_json_flag(p)
    p.set_defaults(func=_run_ensemble)


def _run_ensemble(args) -> int:
    from melanoma.ensemble import build_ensemble

    result = build_ensemble(args.runs, args.out, target_sensitivity=args.target_sensitivity,
                            bootstrap=args.bootstrap, seed=args.seed, weights_dtype=args.weights_dtype)
    m = result["metrics"]
    _emit(result, args.json, f"wrote {result['out']}: {len(result['members'])} members, "
                             f"{result['heldout']['images']} held-out images ({result['heldout']['scoring']}); "
                             f"balanced accuracy {_round(m['balanced_accuracy'])}, melanoma AUC "
                             f"{_round(m['melanoma_auc'])}, alert threshold {_round(result['melanoma_alert'])}")
    return 0


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melanoma", formatter_class=HelpFormatter,
        description="Train, evaluate, explain and serve CNNs that flag dermoscopic lesions needing a dermatologist's "
                    "second look. Decision support, not a diagnosis.\n\n"
                    "`melanoma COMMAND --help` shows a command's options, defaults and examples; docs/commands.md "
                    "describes them all.",
        epilog="examples:\n  melanoma predict photos/ --out preds.csv\n"
               "  melanoma evaluate --model models/default --data my-labelled-images/")
    parser.add_argument("--version", action="version", version=f"melanoma {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="show library logs, warnings and progress bars (on stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_audit, _add_augment, _add_train, _add_threshold, _add_site_threshold, _add_referral, _add_evaluate,
                _add_report, _add_predict, _add_export, _add_ensemble,
                __import__("melanoma.serve.cli", fromlist=["add_serve"]).add_serve):
        add(sub)
    for command in sub.choices.values():  # commands added outside this module behave like the others
        _same_conventions(command)
    return parser


def _same_conventions(command: argparse.ArgumentParser) -> None:
    """Defaults in --help, its own usage on errors, --verbose: for every command, wherever it is defined."""
    command.formatter_class = HelpFormatter
    command.set_defaults(command_parser=command)
    if "verbose" not in {a.dest for a in command._actions}:
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show library logs, warnings and progress bars (on stderr)")


def _parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """parse_args, except that an unknown option is reported with the SUBCOMMAND's usage (plain argparse reports
    it with the top-level one, which does not list the subcommand's options)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _one_line(exc: BaseException) -> str:
    """An exception as one line; an OSError names its file."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `melanoma` command; returns the exit status."""
    try:
        args = _parse(build_parser(), argv)
    except SystemExit as exc:  # --help, --version, or an argparse error (already printed with the usage)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not args.verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm >= 4.66 reads it: no progress bars unless asked
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(args.verbose)
        warnings.simplefilter("default")
        try:
            _check_input_paths(args)
            return args.func(args)
        except MelanomaError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        except (OSError, ValueError) as exc:  # last safety net: a check we have not written yet
            print(f"error: {_one_line(exc)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return 2
