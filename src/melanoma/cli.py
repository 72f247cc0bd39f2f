"""Command-line wiring only: parse arguments, call the module that does the work, print, exit.

Errors of type MelanomaError are printed as one line (`error: ...`) with exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from melanoma import __version__
from melanoma.config import AUGMENTATION_LEVELS
from melanoma.errors import MelanomaError

SHARED_TRAIN = "../shared/data/isic-9class/Train"


def _command(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    """Add a subcommand whose --help shows what it does and an example."""
    return sub.add_parser(
        name,
        help=help_,
        description=f"{help_}\n\nexample:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_audit(sub) -> None:
    p = _command(sub, "audit", "Audit an image dataset: class counts, sizes, unreadable files, exact and near "
                 "duplicates, label conflicts and (with --against) overlap with another set.",
                 f"melanoma audit {SHARED_TRAIN} --json audit.json")
    p.add_argument("data", help="folder of class folders, CSV manifest, ISIC ground-truth CSV or HAM10000 folder")
    p.add_argument("--against", help="another dataset: report its images that also occur in DATA")
    p.add_argument("--json", dest="json_path", help="write the full report as JSON to this file")
    p.add_argument("--near-distance", type=int, default=4,
                   help="max perceptual-hash Hamming distance (0-64) for near duplicates (default 4)")
    p.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="reject images above this many pixels as decompression bombs (default 100M)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.set_defaults(func=_run_audit)


def _run_audit(args) -> int:
    from melanoma import data

    table = data.discover(args.data)
    other = data.discover(args.against) if args.against else None
    report = data.audit(table, against=other, near_distance=args.near_distance,
                        max_pixels=args.max_pixels, workers=args.workers)
    print(data.format_audit(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_path}")
    return 0


def _add_augment(sub) -> None:
    p = _command(sub, "augment", "Write augmented copies of a class-folder dataset to a SEPARATE folder (never into "
                 "DATA); each copy records its source so splits keep copies with their source.",
                 f"melanoma augment {SHARED_TRAIN} --per-class 500 --out runs/augmented")
    p.add_argument("data")
    p.add_argument("--per-class", type=int, required=True, help="target number of images per class (originals + copies)")
    p.add_argument("--out", required=True, help="output folder (must not be inside DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_augment)


def _run_augment(args) -> int:
    from melanoma.augment import augment_dataset

    summary = augment_dataset(args.data, args.out, per_class=args.per_class, seed=args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def _add_train(sub) -> None:
    p = _command(sub, "train", "Train a classifier (Lightning): hold-out validation or group-aware K-fold CV; "
                 "writes a run folder with config, logs, checkpoints, model.safetensors and model.json.",
                 f"melanoma train --data {SHARED_TRAIN} --model efficientnet_lite0 --folds 5 --out runs/cv")
    p.add_argument("--data", help="training dataset (any layout `audit` reads)")
    p.add_argument("--config", help="YAML file of TrainConfig fields; flags override it")
    p.add_argument("--model", help="registry name: seed-cnn, efficientnet_lite0, or any timm model name")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights (offline for efficientnet_lite0; hub download for timm models)")
    p.add_argument("--weights", help="local state dict (.pt/.pth) or .safetensors file to start from")
    for flag, typ in [("--epochs", int), ("--image-size", int), ("--batch-size", int), ("--lr", float),
                      ("--val-fraction", float), ("--folds", int), ("--seed", int), ("--devices", str),
                      ("--num-nodes", int), ("--strategy", str), ("--precision", str), ("--num-workers", int),
                      ("--target-sensitivity", float), ("--max-train-batches", int), ("--patience", int),
                      ("--samples-per-epoch", int)]:
        p.add_argument(flag, type=typ)
    p.add_argument("--accelerator", choices=["auto", "cpu", "gpu"])
    p.add_argument("--imbalance", choices=["sampler", "weighted-loss", "none"],
                   help="class imbalance handling (default: class-balanced sampler)")
    p.add_argument("--conflict-policy", choices=["drop", "keep", "first", "reference"],
                   help="images filed under two classes: drop (default), keep, first, or reference (the label "
                        "--extra-data gives the same image or lesion decides)")
    p.add_argument("--color-constancy", choices=["none", "shades_of_gray"],
                   help="colour normalisation before the network, stored in model.json and applied on every path "
                        "(default none; shades_of_gray evens out clinic / device colour casts)")
    p.add_argument("--augmentation", choices=AUGMENTATION_LEVELS,
                   help="training augmentation (default standard; strong adds wider colour jitter, blur and JPEG "
                        "re-compression; measured WORSE on a new source, see the README's cross-source check)")
    p.add_argument("--extra-data", action="append", metavar="DIR",
                   help="extra dataset that only ever trains, never validates (repeatable), e.g. "
                        "../shared/data/ham10000; its copies of training images and lesions are left out")
    p.add_argument("--extra-labels", metavar="MAP",
                   help="label map of --extra-data into the training classes: auto (default: HAM10000 dx codes "
                        "-> 9-class names), ham10000, or a YAML file 'label: class | [classes] | null'")
    p.add_argument("--lesion-metadata", metavar="CSV",
                   help="HAM10000-style metadata (image_id, lesion_id): all photos of a lesion stay on one side of "
                        "every split, e.g. ../shared/data/ham10000/HAM10000_metadata.csv")
    p.add_argument("--near-distance", type=int,
                   help="pictures within this perceptual-hash distance share a split group (default 4)")
    p.add_argument("--out", help="run folder (default runs/<model>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run folder")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from melanoma.config import config_from_args
    from melanoma.training import train

    result = train(config_from_args(args))
    print(json.dumps(result.get("summary", {}), indent=2))
    return 0


def _add_threshold(sub) -> None:
    p = _command(sub, "threshold", "Re-choose the melanoma alert threshold of a run for another sensitivity target, "
                 "from its stored validation / out-of-fold predictions or from a clinic's own labelled images "
                 "(--predictions: the predictions.csv of `melanoma evaluate`); no retraining; updates model.json.",
                 "melanoma threshold runs/cv-lite0 --target-sensitivity 0.95 --predictions clinic-eval/predictions.csv")
    p.add_argument("run")
    p.add_argument("--target-sensitivity", type=float, required=True,
                   help="the highest threshold keeping at least this melanoma sensitivity is chosen")
    p.add_argument("--predictions", help="predictions.csv written by `melanoma evaluate` on local labelled images "
                   "(default: the run's validation predictions)")
    p.set_defaults(func=_run_threshold)


def _run_threshold(args) -> int:
    from melanoma.finalize import rethreshold

    print(json.dumps(rethreshold(args.run, args.target_sensitivity, args.predictions), indent=2))
    return 0


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", "Evaluate a model on labelled data: ISIC metrics with bootstrap 95% CIs, "
                 "predictions.csv, metrics.json and plots.",
                 "melanoma evaluate --model runs/cv --data path/to/Test --out runs/cv/eval")
    p.add_argument("--model", required=True, help="run folder, model.json/model.safetensors, or .onnx file")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="output folder (default: <model folder>/eval-<data name>)")
    p.add_argument("--tta", action="store_true", help="average over flips and 90-degree rotations")
    p.add_argument("--tta-views", type=int, default=8)
    p.add_argument("--label-map", help="isic2018 | isic2019 | isic2017 | binary | path to a YAML map")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--exclude-overlap-with", metavar="TRAIN",
                   help="leave out images that also occur in TRAIN (default: the training data named in model.json)")
    p.add_argument("--no-overlap-check", action="store_true",
                   help="score every image even if the model may have been trained on it")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from melanoma.evaluate import evaluate, format_metrics

    result = evaluate(args.model, args.data, out=args.out, tta=args.tta, tta_views=args.tta_views,
                      label_map=args.label_map, bootstrap=args.bootstrap, seed=args.seed,
                      batch_size=args.batch_size,
                      exclude_overlap_with=False if args.no_overlap_check else args.exclude_overlap_with)
    print(format_metrics(result))
    return 0


def _add_report(sub) -> None:
    p = _command(sub, "report", "Build a self-contained HTML report (plots embedded) for a training run.",
                 "melanoma report runs/cv --data ../shared/data/isic-9class/Train")
    p.add_argument("run")
    p.add_argument("--data", help="dataset for the class distribution and samples (default: the run's data)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from melanoma.report import build_report

    print(f"wrote {build_report(args.run, data=args.data)}")
    return 0


def _add_predict(sub) -> None:
    p = _command(sub, "predict", "Predict lesion classes for files, folders (recursive) or globs; flags probable "
                 "melanoma (alert) and images the model should not be trusted on (refer).",
                 "melanoma predict photos/ --out preds.csv --explain heatmaps/")
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", help="run folder, model.json/model.safetensors, or .onnx (default: shipped model)")
    p.add_argument("--out", help="output file (default: print CSV to stdout)")
    p.add_argument("--format", choices=["csv", "isic", "json"], default="csv")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--tta-views", type=int, default=8)
    p.add_argument("--explain", metavar="DIR", help="write Grad-CAM heatmap PNGs here")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
    from melanoma.predict import run_predict

    return run_predict(args.paths, model=args.model, out=args.out, fmt=args.format, tta=args.tta,
                       tta_views=args.tta_views, explain_dir=args.explain, batch_size=args.batch_size)


def _add_export(sub) -> None:
    p = _command(sub, "export", "Export a model to ONNX (dynamic batch, metadata embedded) and check parity "
                 "with PyTorch (fails above 1e-4).", "melanoma export runs/cv --out model.onnx")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from melanoma.export import export_onnx

    result = export_onnx(args.model, args.out, opset=args.opset)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melanoma",
        description="Train, evaluate, explain and serve CNNs that flag dermoscopic lesions needing a dermatologist's "
                    "second look. Decision support, not a diagnosis.")
    parser.add_argument("--version", action="version", version=f"melanoma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_audit, _add_augment, _add_train, _add_threshold, _add_evaluate, _add_report, _add_predict, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `melanoma` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MelanomaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
