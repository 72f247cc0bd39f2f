"""Test-time augmentation on the leave-one-source-out check: every seed of a recipe predicts its held-out images
again with N flip/rotation views (`predict --tta`); the table gives the held-out melanoma AUC without and with TTA,
per seed (mean +- sd), the paired difference, and the mean of the seeds (a seed ensemble) without and with TTA.

    .venv/bin/python scripts/tta_loso.py [RECIPE ...] [--root runs/loso] [--views 8]

The TTA probabilities are cached in RUN/tta<N>_predictions.csv, so a re-run only scores.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from sklearn.metrics import roc_auc_score

from loso_ensemble import melanoma_probabilities, shared_images  # scripts/ is on sys.path when run as a script
from loso_table import runs_by_recipe
from seed_stats import mean_sd

ONE = " (1 seed)"  # as loso_table marks a figure of one seed


def tta_probabilities(run: Path, paths: list[str], views: int) -> dict[str, float]:
    """{path: melanoma probability with `views` TTA views}, computed once and cached beside the run."""
    cache = run / f"tta{views}_predictions.csv"
    if not cache.is_file():
        from melanoma.predict import Predictor

        predictor = Predictor.load(run)
        result = predictor.predict_paths(paths, tta=True, tta_views=views)
        if result.errors:
            raise SystemExit(f"{run}: {len(result.errors)} images failed under TTA")
        mel = predictor.class_names.index(predictor.meta["melanoma_class"])
        tmp = cache.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "melanoma_probability"])
            writer.writerows(zip(result.paths, result.probs[:, mel].tolist()))
        tmp.replace(cache)
    with cache.open(newline="") as f:
        return {row["path"]: float(row["melanoma_probability"]) for row in csv.DictReader(f)}


def recipe_row(recipe: str, runs: list[Path], views: int) -> str:
    plain = [melanoma_probabilities(run) for run in runs]
    shared, truth = shared_images(plain)
    tta = [tta_probabilities(run, sorted(p), views) for run, p in zip(runs, plain)]
    auc_plain = [roc_auc_score(truth, [p[x][0] for x in shared]) for p in plain]
    auc_tta = [roc_auc_score(truth, [t[x] for x in shared]) for t in tta]
    diffs = [b - a for a, b in zip(auc_plain, auc_tta)]
    ens_plain = roc_auc_score(truth, [statistics.fmean(p[x][0] for p in plain) for x in shared])
    ens_tta = roc_auc_score(truth, [statistics.fmean(t[x] for t in tta) for x in shared])
    cells = " | ".join(mean_sd(values, one_note=ONE) for values in (auc_plain, auc_tta, diffs))
    return f"| {recipe} | {len(runs)} | {len(shared)} | {cells} | {ens_plain:.3f} | {ens_tta:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=["base"])
    ap.add_argument("--root", type=Path, default=Path("runs/loso"))
    ap.add_argument("--views", type=int, default=8)
    args = ap.parse_args()
    runs = runs_by_recipe(args.root)
    print(f"| recipe | seeds | held-out images | one seed | one seed, TTA x{args.views} | TTA - plain (paired) | "
          "mean of seeds | mean of seeds, TTA |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        if recipe not in runs:
            raise SystemExit(f"{args.root}: no finished runs of recipe {recipe!r} (have {sorted(runs)})")
        print(recipe_row(recipe, runs[recipe], args.views), flush=True)


if __name__ == "__main__":
    main()
