"""Each member of a shipped ensemble alone, on the model's own validation images by source (the groups of
compare_defaults.py): melanoma AUC per member, their mean +- sd (the seed spread a recipe comparison needs) and the
ensemble's, for models whose member runs are gone (the shipped default keeps only the combined weights). A member
is scored as it votes in the ensemble: at its temperature, the model's prior correction applied (if any). Images are
scored as stored (no test-time augmentation; detail calibration only moves the alert threshold, not the ranking).

--changes: score them again after each change of the stored image that scripts/acquisition_robustness.py names
(e.g. noise2 jpeg75; default: stored only), to see which members a camera or storage difference moves (session 45).
The last column is the share of each group's images that each member alerts at its own threshold, the one that
keeps 90% sensitivity over all stored validation images (the shipped alert's target): a change that ranks alike but
moves every score up or down shows there, not in the AUC (session 50). A run folder of `melanoma train` is one
member. The stored images are scored even where --changes leaves them out: the thresholds come from them.

    .venv/bin/python scripts/ensemble_members.py MODEL [MODEL ...] [--changes stored noise2 noise6]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisition_robustness import apply_change, change_name  # noqa: E402
from compare_defaults import groups  # noqa: E402

from melanoma import priors  # noqa: E402
from melanoma.artifacts import load_model  # noqa: E402
from melanoma.errors import MelanomaError  # noqa: E402
from melanoma.images import load_image, prepare_image  # noqa: E402
from melanoma.labelmaps import is_melanoma_label  # noqa: E402
from melanoma.metrics import choose_alert_threshold  # noqa: E402
from melanoma.transforms import eval_transform  # noqa: E402


def member_probabilities(net, meta: dict, paths: list[str], batch: int = 64, change: str = "stored") -> np.ndarray:
    """[M, N, C] class probabilities of each member (one member for a single network), as the network gives them,
    of the images after `change` (acquisition_robustness.apply_change)."""
    pre = meta["preprocessing"]
    to_input = eval_transform(pre)
    head = getattr(net, "head", None)
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            x = torch.stack([to_input(prepare_image(apply_change(load_image(p), change), pre))
                             for p in paths[start:start + batch]])
            if hasattr(head, "member_logits"):  # an ensemble: each member's temperature-scaled logits
                logits = head.member_logits(net.pre_logits(net.feature_maps(x)))
            else:
                logits = (net(x) / float(meta.get("temperature", 1.0))).unsqueeze(0)
            out.append(torch.softmax(logits, -1).numpy())
    return np.concatenate(out, axis=1)


def main(models: list[Path], changes: tuple[str, ...] = ("stored",)) -> None:
    print("| model | change | validation images | members: melanoma AUC | mean +- sd | ensemble | members: alerted |\n"
          "|---|---|---|---|---|---|---|")
    for model in models:
        net, meta = load_model(model)
        with (model / "val_predictions.csv").open(newline="") as fh:
            labels = {r["path"]: r["label"] for r in csv.DictReader(fh) if r.get("label")}
        by_group = groups(model / "val_predictions.csv")
        paths = sorted(by_group["all"])
        is_mel = np.array([is_melanoma_label(labels[p]) for p in paths])
        score = melanoma_scorer(meta)
        stored = member_probabilities(net, meta, paths)
        thresholds = [choose_alert_threshold(is_mel, score(p)) for p in stored]
        masks = {name: np.array([p in only for p in paths]) for name, only in by_group.items()}
        masks = {name: keep for name, keep in masks.items()  # no AUC without both melanomas and other lesions
                 if is_mel[keep].any() and not is_mel[keep].all()}
        for change in changes:
            probs = stored if change == "stored" else member_probabilities(net, meta, paths, change=change)
            for name, keep in masks.items():
                cells = group_cells(probs[:, keep], is_mel[keep], score, thresholds)
                print(f"| {model} | {change} | {name} ({int(keep.sum())}, {int(is_mel[keep].sum())} melanoma) | "
                      f"{cells} |")


def melanoma_scorer(meta: dict):
    """probabilities [N, C] -> the melanoma score the ensemble alerts on (the model's prior correction applied)."""
    weights = priors.weights_of(meta)  # the prior correction predict applies (None: none)
    mel = meta["class_names"].index(meta.get("melanoma_class", "melanoma"))
    return lambda probs: priors.reweight(probs, weights)[:, mel]


def group_cells(probs: np.ndarray, is_mel: np.ndarray, score, thresholds: list[float]) -> str:
    """The row's last four cells for one group: member AUCs, their mean +- sd, the ensemble's AUC, and the share
    each member alerts at its threshold."""
    aucs = [roc_auc_score(is_mel, score(p)) for p in probs]
    ensemble = roc_auc_score(is_mel, score(probs.mean(0)))
    spread = f"{np.mean(aucs):.3f} +- {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else f"{aucs[0]:.3f}"
    alerted = [f"{np.mean(score(p) >= t):.0%}" for p, t in zip(probs, thresholds)]
    return f"{' / '.join(f'{a:.3f}' for a in aucs)} | {spread} | {ensemble:.3f} | {' / '.join(alerted)}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--changes", nargs="+", default=["stored"], type=change_name)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        for model in args.models:
            if not (model / "val_predictions.csv").is_file():
                raise MelanomaError(f"{model}: no val_predictions.csv (a model folder of melanoma ensemble / "
                                    "threshold)")
        main(args.models, tuple(args.changes))
    except MelanomaError as exc:
        sys.exit(f"error: {exc}")
