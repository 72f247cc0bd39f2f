"""How the leave-one-source-out proxy's seed ensembles grow (scripts/loso_insource.sh): for every ensemble size k,
the never-seen source's melanoma AUC and specificity at 90% sensitivity of EVERY k-subset of a folder's seeds (the
mean of the members' melanoma probabilities, as `melanoma ensemble` averages them), mean ± sd over the subsets with
their range. The subsets share members, so their sd is the spread of one k-seed draw, not an error of the mean.

    .venv/bin/python scripts/ensemble_size.py runs/loso-insource-base

Scores the images each run's heldout-eval scored: its predictions.csv less the label conflicts metrics.json lists.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from compare_auc import read_predictions  # scripts/ is on sys.path when this file runs as a script
from insource_table import seed_runs
from melanoma.metrics import specificity_at_sensitivity
from seed_stats import mean_sd


def scored_probabilities(run: Path) -> dict[str, tuple[float, bool]]:
    """{image path: (melanoma probability, is melanoma)} of the images the run's heldout-eval scored."""
    scored = read_predictions(str(run / "heldout-eval" / "predictions.csv"))
    return {path: (probability, is_mel) for path, (is_mel, probability) in scored.items()}


def size_rows(runs: dict[int, dict]) -> list[str]:
    """One markdown row per ensemble size k = 1..len(runs)."""
    shared = sorted(set.intersection(*(set(p) for p in runs.values())))
    if not shared:
        raise ValueError("the runs scored no image in common")
    first = next(iter(runs.values()))
    truth = np.array([first[p][1] for p in shared])
    probs = {seed: np.array([r[p][0] for p in shared]) for seed, r in runs.items()}
    rows = []
    for k in range(1, len(runs) + 1):
        subsets = list(itertools.combinations(sorted(runs), k))
        scores = [np.mean([probs[s] for s in subset], axis=0) for subset in subsets]
        aucs = [roc_auc_score(truth, s) for s in scores]
        specs = [specificity_at_sensitivity(truth, s, 0.9) for s in scores]
        rows.append(f"| {k} | {len(subsets)} | {mean_sd(aucs)} [{min(aucs):.3f}, {max(aucs):.3f}] | "
                    f"{mean_sd(specs)} [{min(specs):.2f}, {max(specs):.2f}] |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a folder of scripts/loso_insource.sh (full-seed<N>/heldout-eval)")
    args = parser.parse_args(argv)
    seeds = seed_runs(args.root)  # the scored ones: heldout-eval holds metrics.json and predictions.csv
    try:
        if not seeds:
            raise ValueError(f"{args.root}: no full-seed<N>/heldout-eval/predictions.csv")
        runs = {seed: scored_probabilities(run) for seed, run in seeds.items()}
        rows = size_rows(runs)
    except (OSError, ValueError, KeyError) as error:  # a missing or foreign file: one line, no traceback
        print(f"ensemble_size: {error}", file=sys.stderr)
        return 1
    n = len(next(iter(runs.values())))
    print(f"{args.root}: seeds {', '.join(map(str, runs))}; {n} images scored")
    print("| ensemble size k | subsets | never-seen source: melanoma AUC, mean ± sd [min, max] | specificity at 90% "
          "sensitivity there |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
