#!/usr/bin/env python
"""Weight-space interpolation towards the pretrained backbone (WiSE-FT, Wortsman et al. 2022; session 27: no gain).

The backbone's weights and batch-norm statistics become alpha x fine-tuned + (1 - alpha) x ImageNet, the new
classifier head stays as trained; alpha 1 is the run itself. Robust fine-tuning's claim is that some alpha < 1 keeps
accuracy in-source and gains on a shifted distribution. Measured paired within each run of the leave-one-source-out
proxy (scripts/loso_insource.sh: HAM10000 alone): melanoma AUC in-source (RUN/val_predictions.csv) and on the
never-seen older archive (RUN/heldout-eval/predictions.csv, its label conflicts left out as `melanoma evaluate`
leaves them out; the images and helpers of scripts/adapt_check.py).

    python scripts/wise_ft.py runs/loso-insource-base/full-seed1 ... [--alphas 1 0.95 0.9 0.8] [--bn-images 512]

--bn-images N: instead of interpolating the batch-norm statistics, re-estimate them on N of the run's training
images (not augmented), as weight averages of batch-norm networks do. Only inference: under a minute per run and
alpha on 2 cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from adapt_check import adapt, melanoma_probability, scored_images, training_sample
from sklearn.metrics import roc_auc_score

from melanoma.models import classifier_prefix, create_model
from melanoma.predict import Predictor


def interpolated(fine_tuned: dict, pretrained: dict, head: str, alpha: float) -> dict:
    """alpha x fine-tuned + (1 - alpha) x pretrained for every float tensor outside the head; the rest as trained."""
    return {key: (alpha * value + (1 - alpha) * pretrained[key]
                  if value.is_floating_point() and not key.startswith(head + ".") else value)
            for key, value in fine_tuned.items()}


def check(run: Path, alphas: list[float], bn_images: int) -> None:
    predictor = Predictor.load(run)
    net, meta = predictor.backend.model, predictor.meta
    fine_tuned = {key: value.clone() for key, value in net.state_dict().items()}
    pretrained = create_model(meta["architecture"], num_classes=len(meta["class_names"]), pretrained=True,
                              image_size=int(meta["preprocessing"]["input_size"])).state_dict()
    conflicts = json.loads((run / "heldout-eval" / "metrics.json").read_text())["label_conflicts"]["images"]
    sets = {"in-source": scored_images(predictor, run / "val_predictions.csv", "mel"),
            "held-out": scored_images(predictor, run / "heldout-eval" / "predictions.csv", "melanoma", conflicts)}
    bn_batch = None  # training images the batch-norm statistics are re-estimated on (--bn-images)
    if bn_images:
        bn_batch = torch.stack([torch.from_numpy(predictor.model_input(path))
                                for path in training_sample(run, bn_images, balanced=False)])
    for alpha in alphas:
        net.load_state_dict(interpolated(fine_tuned, pretrained, classifier_prefix(net), alpha))
        model = net if bn_batch is None else adapt(net, bn_batch, 1.0)
        aucs = [roc_auc_score(is_mel, melanoma_probability(model, x, predictor)) for x, is_mel in sets.values()]
        print(f"{run},{alpha},{bn_images},{aucs[0]:.4f},{aucs[1]:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="scripts/loso_insource.sh run folders")
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.8])
    parser.add_argument("--bn-images", type=int, default=0,
                        help="re-estimate batch norm on this many training images (default: interpolate it)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("run,alpha,bn_images,insource_auc,heldout_auc")
    for run in args.runs:
        check(run, args.alphas, args.bn_images)


if __name__ == "__main__":
    main()
