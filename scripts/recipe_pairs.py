"""Two-member ensembles across recipes on the leave-one-source-out proxy (session 29): does a member trained with
another recipe add more to an ensemble than a second seed of the same one? For every pair of runs, the melanoma AUC
of the mean of their melanoma probabilities on the held-out images both scored (images filed under two classes
left out, as `melanoma evaluate` leaves them out), grouped by how many members come from the --good recipes.

    .venv/bin/python scripts/recipe_pairs.py --good base,greyworld,swalr runs/loso-insource-*/full-seed*

A run is RUN/heldout-eval/{predictions.csv,metrics.json}; its recipe is the name of RUN's parent folder without
the "loso-insource-" prefix.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

from compare_auc import read_predictions  # scripts/ is on sys.path when this file runs as a script


def scored_predictions(run: Path) -> dict[str, tuple[bool, float]]:
    """{path: (is melanoma, melanoma probability)} of the images `melanoma evaluate` scored for this run."""
    return read_predictions(str(run / "heldout-eval" / "predictions.csv"))


def pair_auc(a: dict, b: dict) -> float:
    shared = sorted(set(a) & set(b))
    return roc_auc_score([a[p][0] for p in shared], [(a[p][1] + b[p][1]) / 2 for p in shared])


def single_auc(a: dict) -> float:
    return roc_auc_score([v[0] for v in a.values()], [v[1] for v in a.values()])


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recipe(run: Path) -> str:
    return run.parent.name.removeprefix("loso-insource-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--good", default="", help="comma-separated recipes counted as good (e.g. the baseline's)")
    args = parser.parse_args(argv)
    good = set(filter(None, args.good.split(",")))
    preds = {run: scored_predictions(run) for run in args.runs}
    single = {run: single_auc(p) for run, p in preds.items()}
    for run in args.runs:
        print(f"{recipe(run):>12} {run.name:<12} alone {single[run]:.3f}")
    groups: dict[int, list[tuple[float, float, float]]] = {}  # (ensemble AUC, minus the better, minus the mean)
    for a, b in itertools.combinations(args.runs, 2):
        auc, alone = pair_auc(preds[a], preds[b]), (single[a], single[b])
        row = (auc, auc - max(alone), auc - statistics.fmean(alone))
        groups.setdefault((recipe(a) in good) + (recipe(b) in good), []).append(row)
    for n_good in sorted(groups, reverse=True):
        auc, better, mean = (mean_and_spread([row[i] for row in groups[n_good]]) for i in range(3))
        print(f"pairs with {n_good} good member(s): {len(groups[n_good]):3d}  ensemble AUC {auc[0]:.3f} +- {auc[1]:.3f}"
              f"  minus the better member {better[0]:+.3f} +- {better[1]:.3f}"
              f"  minus their mean alone {mean[0]:+.3f} +- {mean[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
