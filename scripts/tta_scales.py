"""Test-time scales on the leave-one-source-out proxy (session 43): every seed of a scripts/loso_insource.sh folder
predicts the never-seen source's images and its own validation images again with the eval view's resize (shorter
side before the centre crop; the members' 183 px) replaced by each of --resizes, one view each. A smaller resize
shows more of the field around the lesion, a larger one less. The table gives, per resize and for the mean of the
resizes' probabilities, the never-seen melanoma AUC per seed (mean +- sd), paired against the shipped resize, the
ensemble of the seeds, and the in-source AUC. Probabilities are cached beside each run (RUN/scale<R>-1_predictions.csv,
RUN/insource-scale<R>-1_predictions.csv), so a re-run only scores.

    .venv/bin/python scripts/tta_scales.py runs/loso-insource-std [--resizes 160 183 210]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from compare_auc import paired_bootstrap
from seed_stats import mean_sd
from tta_loso import in_order, in_source_truth, never_seen  # scripts/ is on sys.path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--resizes", type=int, nargs="+", default=[160, 183, 210])
    ap.add_argument("--shipped", type=int, default=183, help="the members' own eval resize (default 183)")
    args = ap.parse_args()
    runs, held, y_out = never_seen(args.root)
    inside = in_source_truth(next(iter(runs.values())))
    y_in = np.array(list(inside.values()))
    # one view at each resize, cached beside the run as <stem><resize>-1_predictions.csv
    out = {r: {s: in_order(run, held, 1, f"scale{r}-", r) for s, run in runs.items()} for r in args.resizes}
    ins = {r: {s: in_order(run, list(inside), 1, f"insource-scale{r}-", r) for s, run in runs.items()}
           for r in args.resizes}
    mean = lambda by_r: {s: np.mean([by_r[r][s] for r in args.resizes], axis=0) for s in runs}  # noqa: E731
    out["mean"], ins["mean"] = mean(out), mean(ins)
    print(f"{args.root}: seeds {', '.join(map(str, runs))}; {len(held)} never-seen images, {int(y_out.sum())} "
          f"melanomas; in-source {len(y_in)}")
    print("| resize | never seen, per seed | paired against the shipped resize | ensemble of the seeds | "
          "ensemble against the shipped resize | in-source, per seed |")
    print("|---|---|---|---|---|---|")
    base = out[args.shipped]
    base_auc = [roc_auc_score(y_out, base[s]) for s in runs]
    ens_base = np.mean(list(base.values()), axis=0)
    for key in [*args.resizes, "mean"]:
        per_seed = [roc_auc_score(y_out, out[key][s]) for s in runs]
        paired = [a - b for a, b in zip(per_seed, base_auc)]
        ens = np.mean(list(out[key].values()), axis=0)
        against = ""  # the shipped resize against itself: no interval to draw
        if key != args.shipped:
            gain = paired_bootstrap(y_out, ens, ens_base)
            against = f"{gain['difference']:+.3f} [{gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}]"
        inside_auc = [roc_auc_score(y_in, ins[key][s]) for s in runs]
        print(f"| {key} | {mean_sd(per_seed)} | {mean_sd(paired, signed=True)} | {roc_auc_score(y_out, ens):.3f} | "
              f"{against} | {mean_sd(inside_auc)} |")


if __name__ == "__main__":
    main()
