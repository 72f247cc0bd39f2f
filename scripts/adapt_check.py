"""Would adapting the batch-norm statistics to a clinic's unlabelled images (AdaBN) help there? (session 16: no)

AdaBN (Li et al. 2016; Schneider et al. 2020) re-estimates every BatchNorm layer's running mean and variance on
images of the new site; `strength` blends (0: the training statistics, 1: the new images' alone). Each layer is
measured after the layers before it were adapted, in one forward pass over the sample (a forward pre-hook per
layer), so the sample is one batch.

For a model trained WITHOUT the older archive (scripts/loso_insource.sh: HAM10000 alone) this splits images into
two random halves, adapts a copy of the model on one half (no labels used, except to thin the sample to a clinic's
10% melanoma prevalence), scores the other half and swaps, so no image is scored by a model adapted on it:

* in-source: the model's own validation images (RUN/val_predictions.csv, HAM10000), where nothing should change;
* held-out source: the older archive's images `melanoma evaluate` scored (RUN/heldout-eval/predictions.csv, label
  map binary; the pictures filed under two labels left out as evaluate leaves them out).

For a scripts/loso.sh row (trained with --holdout-source: its validation images ARE the held-out source's) the
held-out set is RUN/val_predictions.csv and there is no in-source set.

Prints melanoma AUC and sensitivity / specificity at the model's own alert threshold (chosen on HAM10000).

`--statistics` (session 17) asks what the trained statistics encode: the model's in-source validation AUC with its
statistics re-estimated on its OWN training images (no new site), drawn class-balanced as the training sampler
draws them or in the source's natural class mix, augmented as in training or not.

    python scripts/adapt_check.py runs/loso-adapt/full-seed1 [--splits 2] [--statistics]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from melanoma import images, transforms
from melanoma.data import discover
from melanoma.evaluate import read_predictions_csv
from melanoma.predict import Predictor

MAX_IMAGES = 512  # one batch: Lite0 at 160 px peaked near 5 GiB with about 400 images


def _blend_hook(strength: float):
    def hook(layer, args):
        x = args[0].float()
        dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels
        layer.running_mean.mul_(1.0 - strength).add_(strength * x.mean(dim=dims))
        layer.running_var.mul_(1.0 - strength).add_(strength * x.var(dim=dims, unbiased=True))
    return hook


@torch.no_grad()
def adapt(model: nn.Module, batch: torch.Tensor, strength: float, stem_only: bool = False) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics (all layers, or the stem's alone) are re-estimated on `batch`."""
    model = copy.deepcopy(model).eval()  # eval: each layer normalises with the statistics its hook just set
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    handles = [layer.register_forward_pre_hook(_blend_hook(strength)) for layer in layers[:1 if stem_only else None]]
    model(batch[:MAX_IMAGES])
    for handle in handles:
        handle.remove()
    return model


def scored_images(predictor, csv_path: Path, melanoma: str, leave_out=()) -> tuple[torch.Tensor, np.ndarray]:
    """(model inputs, is-melanoma flags) of a prediction CSV's images, without the rows whose path is in
    `leave_out`; `melanoma` is the label the CSV gives melanomas."""
    table, leave_out = read_predictions_csv(csv_path), set(leave_out)
    kept = [i for i, path in enumerate(table.paths) if path not in leave_out]
    x = torch.from_numpy(np.stack([predictor.model_input(table.paths[i]) for i in kept]))
    return x, np.array([table.labels[i] == melanoma for i in kept])


@torch.no_grad()
def melanoma_probability(model, x, predictor) -> np.ndarray:
    """Calibrated melanoma probability of the raw network (no detail calibration: every image here is at least
    the models' 150 px detail size, where it does not apply)."""
    out = [model(x[i:i + 128]) for i in range(0, len(x), 128)]
    return torch.cat(out).div(predictor.temperature).softmax(1)[:, predictor.melanoma_index].numpy()


def cross_adapted(predictor, x, is_mel, variant: dict, splits: int) -> list[np.ndarray]:
    """Per random split: melanoma probabilities of every image from a model adapted on the OTHER half."""
    results = []
    for split in range(splits):
        rng = np.random.default_rng(split)
        order = rng.permutation(len(x))
        halves = [order[: len(order) // 2], order[len(order) // 2:]]
        probs = np.zeros(len(x))
        for scored, adapting in (halves, halves[::-1]):
            if variant.get("prevalence"):  # all non-melanomas of the half, melanomas drawn to the prevalence
                others, mels = adapting[~is_mel[adapting]], adapting[is_mel[adapting]]
                n_mel = min(len(mels), round(variant["prevalence"] / (1 - variant["prevalence"]) * len(others)))
                adapting = np.concatenate([others, rng.choice(mels, n_mel, replace=False)])
            model = adapt(predictor.backend.model, x[adapting], variant["strength"], variant.get("stem_only", False))
            probs[scored] = melanoma_probability(model, x[scored], predictor)
        results.append(probs)
    return results


def _line(name: str, is_mel, probs_per_split, threshold: float) -> str:
    aucs = [roc_auc_score(is_mel, p) for p in probs_per_split]
    sens = np.mean([(p[is_mel] >= threshold).mean() for p in probs_per_split])
    spec = np.mean([(p[~is_mel] < threshold).mean() for p in probs_per_split])
    return (f"  {name:46s} AUC {np.mean(aucs):.3f}" + (f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else "")
            + f"  sensitivity / specificity at the alert {sens:.2f} / {spec:.2f}")


VARIANTS = [("all layers, strength 1", {"strength": 1.0}), ("all layers, strength 0.1", {"strength": 0.1}),
            ("stem only, strength 1", {"strength": 1.0, "stem_only": True}),
            ("all layers, strength 1, 10% prevalence sample", {"strength": 1.0, "prevalence": 0.1}),
            ("stem only, strength 1, 10% prevalence sample", {"strength": 1.0, "stem_only": True, "prevalence": 0.1})]


def training_sample(run: Path, n: int, balanced: bool, seed: int = 0) -> list[Path]:
    """n images of the run's training source that are not among its validation images, in the source's natural
    class mix or with every class drawn equally often (with replacement where a class has too few)."""
    data = json.loads((run / "model.json").read_text())["training"]["data"]
    validation = set(read_predictions_csv(run / "val_predictions.csv").paths)
    pool = [s for s in discover(data).samples if str(s.path) not in validation]
    rng = np.random.default_rng(seed)
    if not balanced:
        return [pool[i].path for i in rng.choice(len(pool), n, replace=False)]
    by_class: dict[str, list[Path]] = {}
    for sample in pool:
        by_class.setdefault(sample.label, []).append(sample.path)
    per_class = n // len(by_class)
    return [path for _, paths in sorted(by_class.items())
            for path in rng.choice(paths, per_class, replace=len(paths) < per_class)]


def statistics_check(run: Path, predictor, n: int = MAX_IMAGES) -> None:
    """In-source validation AUC with the statistics re-estimated on the model's own training images."""
    x, is_mel = scored_images(predictor, run / "val_predictions.csv", "mel")
    model = predictor.backend.model
    print(f" in-source (HAM10000 validation), statistics re-estimated on {n} of the model's training images")
    print(_line("trained statistics", is_mel, [melanoma_probability(model, x, predictor)], predictor.alert_threshold))
    augment = transforms.train_transform(predictor.pre)
    views = (("augmented", lambda path: augment(images.prepare_image(images.load_image(path), predictor.pre))),
             ("not augmented", predictor.preprocess))  # exactly what scoring sees
    for balanced in (True, False):
        sample = training_sample(run, n, balanced)
        for name, view in views:
            torch.manual_seed(0)
            batch = torch.stack([view(path) for path in sample])
            probs = melanoma_probability(adapt(model, batch, 1.0), x, predictor)
            mix = "class-balanced" if balanced else "natural class mix"
            print(_line(f"{mix}, {name}", is_mel, [probs], predictor.alert_threshold), flush=True)


def check(run: Path, splits: int, statistics: bool = False) -> None:
    predictor = Predictor.load(run)
    if statistics:
        return statistics_check(run, predictor)
    if json.loads((run / "model.json").read_text())["training"].get("holdout_source"):  # a scripts/loso.sh row
        sets = {"held-out source (older archive)": (run / "val_predictions.csv", "melanoma", (),
                                                    [VARIANTS[0], VARIANTS[3]])}
    else:
        conflicts = json.loads((run / "heldout-eval" / "metrics.json").read_text())["label_conflicts"]["images"]
        in_source = [VARIANTS[0], VARIANTS[2]]  # where nothing should change
        sets = {"in-source (HAM10000 validation)": (run / "val_predictions.csv", "mel", (), in_source),
                "held-out source (older archive)": (run / "heldout-eval" / "predictions.csv", "melanoma", conflicts,
                                                    VARIANTS)}
    threshold = predictor.alert_threshold
    print(f"{run}: alert threshold {threshold:.4f}")
    for name, (csv_path, melanoma, leave_out, variants) in sets.items():
        x, is_mel = scored_images(predictor, csv_path, melanoma, leave_out)
        print(f" {name}: {len(x)} images, {is_mel.sum()} melanomas")
        print(_line("not adapted", is_mel, [melanoma_probability(predictor.backend.model, x, predictor)], threshold))
        for label, variant in variants:
            print(_line(label, is_mel, cross_adapted(predictor, x, is_mel, variant, splits), threshold), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--splits", type=int, default=2, help="random half splits (each scores every image once)")
    parser.add_argument("--statistics", action="store_true",
                        help="only: the in-source AUC with the statistics re-estimated on the model's training images")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for run in args.runs:
        check(run, args.splits, args.statistics)


if __name__ == "__main__":
    main()
