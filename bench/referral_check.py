"""Measure the referral: share of lesion images (wrongly) referred vs share of non-dermoscopic inputs referred.

Two modes:

* ``--model RUN`` (a trained model with a fitted referral in model.json): lesion share on the images listed in
  RUN/val_predictions.csv (the validation lesions the thresholds were fitted on; model.json also records the
  honest out-of-fold shares) or on ``--data``; non-dermoscopic share on synthetic/natural images.
  "odd input" is the pixel-statistics input check (input_check.py; models trained since it exists).
* no ``--model``: ImageNet-pretrained efficientnet_lite0 features (random 9-class head): referral statistics are
  fitted on half of ``--per-class`` lesion images per class of the shared Train split and checked on the other half
  plus the synthetic images. This tests the mechanism before a trained model exists.

    python bench/referral_check.py [--model runs/cv] [--data ../shared/data/isic-9class/Train] [--per-class 40]
        [--extra-lesions ../shared/data/ham10000/images --extra-n 300]

``--extra-lesions``: a folder of other dermoscopic images (e.g. HAM10000); a random sample of those whose file
name is NOT in ``--data`` is predicted too: lesions from another source that a trained model has never seen.

``--compare-policies`` (with ``--model``): refit the referral on the model's validation lesions with pooled and
with worst-source limits (referral.py) and print, per policy, the out-of-fold share of each source's lesions
referred and the share of non-dermoscopic inputs referred.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from melanoma import input_check, referral
from melanoma.predict import Predictor

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-9class" / "Train"


def _lesion_paths(data: Path, per_class: int, seed: int) -> tuple[list[str], list[int], list[str]]:
    """Up to `per_class` random image paths per class folder -> (paths, label indices, class names)."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, name in enumerate(classes):
        files = sorted(str(f) for f in (data / name).glob("*.jpg"))
        for f in rng.permutation(files)[:per_class]:
            paths.append(str(f))
            labels.append(i)
    return paths, labels, classes


def _pretrained_lite0_predictor(fit_paths, fit_labels, classes, size: int) -> Predictor:
    """A Predictor over ImageNet lite0 features with referral statistics fitted on `fit_paths`."""
    from melanoma.models import create_model, default_preprocessing

    model = create_model("efficientnet_lite0", len(classes), pretrained=True).eval()
    meta = {"architecture": "efficientnet_lite0", "class_names": classes, "melanoma_class": "melanoma",
            "preprocessing": default_preprocessing("efficientnet_lite0", image_size=size), "temperature": 1.0,
            "thresholds": {"melanoma_alert": 0.5}}
    from melanoma.predict import _TorchBackend

    predictor = Predictor(_TorchBackend(model), meta, "efficientnet_lite0 (ImageNet features)")
    _, x_logits, x_feats, x_stats = _embed_paths(predictor, fit_paths)
    ref_meta, tensors = referral.fit_referral(x_feats, x_logits, np.asarray(fit_labels), 1.0)
    ref_meta["input_check"] = input_check.fit(x_stats)
    predictor.meta["referral"] = ref_meta
    predictor.referrer = referral.Referrer(ref_meta, tensors)
    return predictor


def _embed_paths(predictor: Predictor, paths, batch: int = 32):
    """(probabilities, logits, features, input statistics) of the images at `paths`, un-augmented."""
    from melanoma.data import load_image

    parts = []
    for i in range(0, len(paths), batch):
        x = torch.stack([predictor.preprocess(load_image(p)) for p in paths[i:i + batch]])
        probs, feats, logits = predictor.infer(x)
        parts.append((probs, logits, feats, predictor.input_statistics(x)))
    return tuple(np.concatenate(column) for column in zip(*parts))


def _val_paths(run: Path) -> list[str]:
    csv_path = run / "val_predictions.csv"
    if not csv_path.is_file():
        return []
    with csv_path.open() as fh:
        return [row["path"] for row in csv.DictReader(fh)]


def _extra_lesions(folder: Path, data: Path, n: int, seed: int) -> list[str]:
    """Random `n` images of `folder` whose file names do not occur in `data` (no training/validation images)."""
    seen = {p.name for p in data.rglob("*.jpg")}
    files = sorted(str(p) for p in folder.rglob("*.jpg") if p.name not in seen)
    return [str(f) for f in np.random.default_rng(seed).permutation(files)[:n]]


def _print_shares(title: str, kinds: list[str], refer: np.ndarray, reasons: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'kind':<18}{'n':>5}{'referred':>10}{'low conf':>10}{'not like':>10}{'odd input':>10}")
    groups = defaultdict(list)
    for i, kind in enumerate(kinds):
        groups[kind].append(i)
    for kind, idx in [*sorted(groups.items()), ("ALL", list(range(len(kinds))))]:
        low = np.mean([referral.REASON_LOW_CONFIDENCE in reasons[i] for i in idx])
        ood = np.mean([referral.REASON_OOD in reasons[i] for i in idx])
        odd = np.mean([input_check.REASON in reasons[i] for i in idx])
        print(f"{kind:<18}{len(idx):>5}{refer[idx].mean():>10.1%}{low:>10.1%}{ood:>10.1%}{odd:>10.1%}")


def _compare_policies(predictor: Predictor, run: Path, embedded, ood_images) -> None:
    """Refit the referral pooled and worst-source on the validation lesions (`embedded`: their _embed_paths, in
    val_predictions.csv's order); print the shares each refers."""
    from melanoma.finalize import source_of, training_sources

    with (run / "val_predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    paths = [row["path"] for row in rows]
    labels = np.array([predictor.class_names.index(row["label"]) for row in rows])
    roots = training_sources(predictor.meta)
    sources = [source_of(p, roots) for p in paths]
    _, logits, feats, stats = embedded
    x = torch.stack([predictor.preprocess(im) for _, im in ood_images])
    o_logits, o_feats = predictor.backend(x)
    o_stats = predictor.input_statistics(x)
    temperature = float(predictor.meta.get("temperature") or 1.0)
    print("\nreferral refitted on the validation lesions (lesion shares out of fold)")
    for policy, min_images in (("pooled", 10 ** 9), ("worst source", 50)):  # 10**9: no source has its own limits
        meta, tensors = referral.fit_referral(feats, logits, labels, temperature, sources=sources,
                                              min_source_images=min_images, layers=predictor.referrer.layers,
                                              layer_dim=predictor.referrer.layer_dim)
        meta["input_check"] = input_check.fit(stats)
        shares = {name: f"{part['share_referred']:.1%}" for name, part in meta["validation"]["by_source"].items()}
        refer, _ = referral.Referrer(meta, tensors).decide(referral.softmax(o_logits, temperature), o_feats,
                                                           o_logits, o_stats)
        print(f"{policy:<13} lesions {meta['validation']['share_referred']:.1%} {shares}  "
              f"non-dermoscopic {refer.mean():.0%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--data", default=str(SHARED_TRAIN))
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=224, help="pretrained mode only")
    ap.add_argument("--ood-per-kind", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra-lesions", help="folder of other dermoscopic images (e.g. HAM10000 images/)")
    ap.add_argument("--extra-n", type=int, default=300)
    ap.add_argument("--compare-policies", action="store_true",
                    help="refit the referral pooled and worst-source on the validation lesions (with --model)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    val_lesions = []  # the model's validation lesions, when it recorded them (what --compare-policies refits on)
    if args.model:
        predictor = Predictor.load(args.model)
        val_lesions = _val_paths(Path(args.model))
        lesions = val_lesions or _lesion_paths(Path(args.data), args.per_class, args.seed)[0]
        print(f"model {args.model}; lesions: {len(lesions)} images; referral section:",
              predictor.meta.get("referral", {}).get("validation"))
    else:
        paths, labels, classes = _lesion_paths(Path(args.data), args.per_class, args.seed)
        fit = np.arange(len(paths)) % 2 == 0
        predictor = _pretrained_lite0_predictor([p for p, f in zip(paths, fit) if f],
                                                [lab for lab, f in zip(labels, fit) if f], classes, args.image_size)
        lesions = [p for p, f in zip(paths, fit) if not f]
        print(f"ImageNet lite0 features: fitted on {int(fit.sum())} lesions, held-out {len(lesions)};",
              predictor.meta["referral"]["validation"])
    embedded = None
    if args.compare_policies and val_lesions:
        # the validation lesions are embedded once: the shipped referral's decision and the refits share them
        embedded = _embed_paths(predictor, lesions)
        probs, logits, feats, stats = embedded
        refer, reasons = predictor.referrer.decide(probs, feats, logits, stats)
    else:
        res = predictor.predict_paths(lesions)
        refer, reasons = res.refer, res.refer_reason
    _print_shares("lesion images (share wrongly referred)", ["lesion"] * len(refer), refer, reasons)

    if args.extra_lesions:
        extra = predictor.predict_paths(_extra_lesions(Path(args.extra_lesions), Path(args.data), args.extra_n,
                                                       args.seed))
        _print_shares(f"other-source lesions from {args.extra_lesions} (not in --data)", ["lesion"] * len(extra),
                      extra.refer, extra.refer_reason)
    ood = referral.synthetic_ood_images(int(predictor.meta["preprocessing"]["input_size"]), args.ood_per_kind,
                                        args.seed)
    preds = predictor.predict([im for _, im in ood])
    print("counts:", dict(Counter(k for k, _ in ood)))
    _print_shares("non-dermoscopic images (share referred)", [k for k, _ in ood],
                  np.array([p.refer for p in preds]), [p.refer_reason for p in preds])
    if embedded is not None:
        _compare_policies(predictor, Path(args.model), embedded, ood)
    elif args.compare_policies:
        print("--compare-policies needs --model RUN with a val_predictions.csv: skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
