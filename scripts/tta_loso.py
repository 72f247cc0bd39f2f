"""Test-time augmentation on the leave-one-source-out check: every seed of a recipe predicts its held-out images
again with N flip/rotation views (`predict --tta`); the table gives the held-out melanoma AUC without and with TTA,
per seed (mean +- sd), the paired difference, and the mean of the seeds (a seed ensemble) without and with TTA.

    .venv/bin/python scripts/tta_loso.py [RECIPE ...] [--root runs/loso] [--views 8]
    .venv/bin/python scripts/tta_loso.py --insource runs/loso-insource-base34 [--views 8] [--members 4]

--insource reads a scripts/loso_insource.sh folder instead (full-seed<N>, checkpoint chosen in-source, the images
its heldout-eval scored): per seed and for every k-member ensemble of the seeds (k = --members), the never-seen
source's melanoma AUC and specificity at 90% sensitivity, plain (one view) and with TTA, both predicted alike.
The TTA probabilities are cached in RUN/tta<N>_predictions.csv, so a re-run only scores.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ensemble_size import scored_probabilities
from insource_table import seed_runs
from loso_ensemble import melanoma_probabilities, shared_images  # scripts/ is on sys.path when run as a script
from loso_table import runs_by_recipe
from melanoma.metrics import specificity_at_sensitivity
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


def insource_rows(root: Path, views: int, members: int) -> list[str]:
    """Rows of plain against TTA for a loso_insource.sh folder: each seed, then its k-member ensembles."""
    runs = seed_runs(root)
    if not runs:
        raise SystemExit(f"{root}: no full-seed<N>/heldout-eval/metrics.json")
    scored = {seed: scored_probabilities(run) for seed, run in runs.items()}
    shared, truth = shared_images(list(scored.values()))
    truth = np.array(truth)

    def scores(n: int) -> dict[int, np.ndarray]:  # plain = 1 view through the same predictor as the TTA views
        by_seed = {seed: tta_probabilities(run, shared, n) for seed, run in runs.items()}
        return {seed: np.array([probs[x] for x in shared]) for seed, probs in by_seed.items()}

    plain, tta = scores(1), scores(views)

    def figures(by_seed: dict, subset: tuple) -> tuple[float, float]:
        mean = np.mean([by_seed[s] for s in subset], axis=0)
        return roc_auc_score(truth, mean), specificity_at_sensitivity(truth, mean, 0.9)

    rows = []
    for k in sorted({1, min(members, len(runs)), len(runs)}):
        subsets = list(itertools.combinations(sorted(runs), k))
        a = np.array([figures(plain, sub) for sub in subsets])
        b = np.array([figures(tta, sub) for sub in subsets])
        rows.append(f"| {k} | {len(subsets)} | {mean_sd(a[:, 0])} | {mean_sd(b[:, 0])} | "
                    f"{mean_sd(b[:, 0] - a[:, 0], signed=True)} | {mean_sd(a[:, 1])} | {mean_sd(b[:, 1])} |")
    print(f"{root}: seeds {', '.join(map(str, runs))}; {len(shared)} images, {int(truth.sum())} melanomas")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=["base"])
    ap.add_argument("--root", type=Path, default=Path("runs/loso"))
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--insource", type=Path, metavar="ROOT", help="a scripts/loso_insource.sh folder instead")
    ap.add_argument("--members", type=int, default=4, help="ensemble size scored with --insource (default 4)")
    args = ap.parse_args()
    if args.insource:
        rows = insource_rows(args.insource, args.views, args.members)
        print(f"| seeds per model | models | AUC, plain | AUC, TTA x{args.views} | TTA - plain (paired) | "
              "specificity at 90% sensitivity, plain | the same, TTA |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        return
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
