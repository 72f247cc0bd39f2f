"""Seed ensembles on the leave-one-source-out check: per recipe, the held-out melanoma AUC of the mean of its
seeds' melanoma probabilities, next to each seed alone, on the held-out images every seed validated on (each
seed draws its own 2,000-image sample of the held-out source, so the shared images are a subset). With 6 or
more seeds, also the ensembles of disjoint groups of 3 seeds (seeds 1-3, 4-6, ...), mean +- sd: the spread of a
3-seed ensemble.

    .venv/bin/python scripts/loso_ensemble.py [runs/loso]
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

from loso_table import runs_by_recipe  # scripts/ is on sys.path when this file runs as a script
from seed_stats import mean_sd


def melanoma_probabilities(run: Path) -> dict[str, tuple[float, bool]]:
    """{image path: (melanoma probability, is melanoma)} from a run's val_predictions.csv."""
    with (run / "val_predictions.csv").open(newline="") as f:
        return {row["path"]: (float(row["melanoma_probability"]), row["label"] == "melanoma")
                for row in csv.DictReader(f)}


def shared_images(seeds: list[dict]) -> tuple[list[str], list[bool]]:
    """(the image paths every seed validated on, sorted; whether each is a melanoma)."""
    shared = sorted(set.intersection(*(set(s) for s in seeds)))
    return shared, [seeds[0][p][1] for p in shared]


def recipe_row(recipe: str, runs: list[Path], group: int = 3) -> str:
    seeds = [melanoma_probabilities(r) for r in runs]
    shared, truth = shared_images(seeds)

    def ensemble_auc(members) -> float:
        return roc_auc_score(truth, [statistics.fmean(s[p][0] for s in members) for p in shared])

    singles = [roc_auc_score(truth, [s[p][0] for p in shared]) for s in seeds]
    groups = [ensemble_auc(seeds[i:i + group]) for i in range(0, len(seeds) - group + 1, group)]
    grouped = f"{mean_sd(groups)} ({len(groups)})" if len(groups) > 1 else "-"
    return (f"| {recipe} | {len(runs)} | {len(shared)} ({sum(truth)} melanoma) | "
            f"{mean_sd(singles)} | {grouped} | {ensemble_auc(seeds):.3f} |")


def main(root: Path) -> None:
    print("| recipe | seeds | shared held-out images | one seed: melanoma AUC | mean of 3 seeds (groups) | "
          "mean of all seeds |")
    print("|---|---|---|---|---|---|")
    for recipe, runs in runs_by_recipe(root).items():
        if len(runs) >= 2:
            print(recipe_row(recipe, runs))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loso"))
