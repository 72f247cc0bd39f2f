"""Test-time augmentation on the leave-one-source-out check: every seed of a recipe predicts its held-out images
again with N flip/rotation views (`predict --tta`); the table gives the held-out melanoma AUC without and with TTA,
per seed (mean +- sd), the paired difference, and the mean of the seeds (a seed ensemble) without and with TTA.

    .venv/bin/python scripts/tta_loso.py [RECIPE ...] [--root runs/loso] [--views 8]
    .venv/bin/python scripts/tta_loso.py --insource runs/loso-insource-base34 [--views 8] [--members 4]
    .venv/bin/python scripts/tta_loso.py --insource runs/loso-insource-base34 --alert 1 2 3 4

--insource reads a scripts/loso_insource.sh folder instead (full-seed<N>, checkpoint chosen in-source, the images
its heldout-eval scored): per seed and for every k-member ensemble of the seeds (k = --members), the never-seen
source's melanoma AUC and specificity at 90% sensitivity, plain (one view) and with TTA, both predicted alike.
--alert SEED...: the alert each of those runs (and their ensemble) would ship, its threshold chosen for 90% (--target)
sensitivity on the run's own validation images, and what it keeps on the never-seen source: plain; TTA probabilities
at the plain threshold (what `predict --tta` does with a model's stored threshold); TTA with the threshold re-chosen
on TTA probabilities. The TTA probabilities are cached in RUN/tta<N>_predictions.csv (the run's own validation
images: RUN/insource-tta<N>_predictions.csv), so a re-run only scores.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import statistics
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from compare_auc import paired_bootstrap
from ensemble_size import scored_probabilities
from insource_table import seed_runs
from loso_ensemble import melanoma_probabilities, shared_images  # scripts/ is on sys.path when run as a script
from loso_table import runs_by_recipe
from melanoma.labelmaps import is_melanoma_label
from melanoma.metrics import choose_alert_threshold, expected_alert_share, specificity_at_sensitivity
from seed_stats import mean_sd

ONE = " (1 seed)"  # as loso_table marks a figure of one seed


def tta_probabilities(run: Path, paths: list[str], views: int, stem: str = "tta",
                      resize: int | None = None) -> dict[str, float]:
    """{path: melanoma probability with `views` TTA views}, computed once and cached beside the run (RUN/<stem><views>
    _predictions.csv: one stem per image set and resize). resize: the eval view's shorter side before the centre
    crop instead of the model's own (scripts/tta_scales.py)."""
    cache = run / f"{stem}{views}_predictions.csv"
    if not cache.is_file():
        from melanoma.predict import Predictor

        predictor = Predictor.load(run)
        if resize is not None:
            predictor.pre["resize"] = resize
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


def in_order(run: Path, paths: list[str], views: int, stem: str = "tta", resize: int | None = None) -> np.ndarray:
    """tta_probabilities as an array in the order of `paths`."""
    probs = tta_probabilities(run, paths, views, stem, resize)
    return np.array([probs[x] for x in paths])


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


def ensemble_mean(by_seed: dict[int, np.ndarray], members) -> np.ndarray:
    """The members' mean melanoma probability per image, as `melanoma ensemble` averages them."""
    return np.mean([by_seed[s] for s in members], axis=0)


def never_seen(root: Path, seeds: list[int] | None = None) -> tuple[dict[int, Path], list[str], np.ndarray]:
    """(the scored runs of a loso_insource.sh folder, or of `seeds`; the never-seen images every one of them
    scored, label conflicts left out; whether each is a melanoma)."""
    runs = {s: r for s, r in seed_runs(root).items() if seeds is None or s in seeds}
    if not runs:
        raise SystemExit(f"{root}: no full-seed<N>/heldout-eval/metrics.json")
    if seeds is not None and sorted(runs) != sorted(seeds):
        raise SystemExit(f"{root}: seeds {sorted(set(seeds) - set(runs))} are not scored")
    shared, truth = shared_images([scored_probabilities(run) for run in runs.values()])
    return runs, shared, np.array(truth)


def insource_rows(root: Path, views: int, members: int) -> list[str]:
    """Rows of plain against TTA for a loso_insource.sh folder: each seed, then its k-member ensembles."""
    runs, shared, truth = never_seen(root)
    # plain = 1 view through the same predictor as the TTA views
    plain, tta = ({seed: in_order(run, shared, n) for seed, run in runs.items()} for n in (1, views))

    def figures(by_seed: dict, subset: tuple) -> tuple[float, float]:
        mean = ensemble_mean(by_seed, subset)
        return roc_auc_score(truth, mean), specificity_at_sensitivity(truth, mean, 0.9)

    gain = paired_bootstrap(truth, ensemble_mean(tta, runs), ensemble_mean(plain, runs))
    note = (f"ensemble of all {len(runs)} seeds, TTA - plain: {gain['difference']:+.3f} [{gain['ci'][0]:+.3f}, "
            f"{gain['ci'][1]:+.3f}] (paired bootstrap over the images, 95%)")
    rows = []
    for k in sorted({1, min(members, len(runs)), len(runs)}):
        subsets = list(itertools.combinations(sorted(runs), k))
        a = np.array([figures(plain, sub) for sub in subsets])
        b = np.array([figures(tta, sub) for sub in subsets])
        rows.append(f"| {k} | {len(subsets)} | {mean_sd(a[:, 0])} | {mean_sd(b[:, 0])} | "
                    f"{mean_sd(b[:, 0] - a[:, 0], signed=True)} | {mean_sd(a[:, 1])} | {mean_sd(b[:, 1])} |")
    print(f"{root}: seeds {', '.join(map(str, runs))}; {len(shared)} images, {int(truth.sum())} melanomas")
    return rows + ["", note]


def in_source_truth(run: Path) -> dict[str, bool]:
    """{path: is melanoma} of the run's own validation images (HAM10000 names melanoma `mel`)."""
    with (run / "val_predictions.csv").open(newline="") as fh:
        return {row["path"]: is_melanoma_label(row["label"]) for row in csv.DictReader(fh)}


def alert_rows(root: Path, seeds: list[int], views: int, target: float = 0.9) -> list[str]:
    """The alert as a run ships it, plain and with TTA: threshold for `target` sensitivity on the run's own validation
    images (metrics.choose_alert_threshold), applied to the never-seen source; each seed, then their ensemble."""
    runs, held, y_out = never_seen(root, seeds)
    inside = in_source_truth(next(iter(runs.values())))
    if any(in_source_truth(r) != inside for r in runs.values()):  # the ensemble's threshold needs one image set
        raise SystemExit(f"{root}: seeds {sorted(runs)} validated on different images (another --split-seed?)")
    y_in = np.array(list(inside.values()))

    def probs(n: int) -> tuple[dict, dict]:
        return ({s: in_order(r, list(inside), n, "insource-tta") for s, r in runs.items()},
                {s: in_order(r, held, n) for s, r in runs.items()})

    def cell(p_in: np.ndarray, p_out: np.ndarray) -> str:  # p_in chooses the threshold, p_out meets it
        alert = p_out >= choose_alert_threshold(y_in, p_in, target)
        sens, spec = float(alert[y_out].mean()), float(1 - alert[~y_out].mean())
        share = expected_alert_share(sens, spec)["referral clinic (10% melanoma)"]
        return f"{sens:.2f} / {spec:.2f}; {share:.0%}"

    (plain_in, plain_out), (tta_in, tta_out) = probs(1), probs(views)
    models = [(f"seed {s}", (s,)) for s in runs]
    if len(runs) > 1:
        models.append((f"ensemble of seeds {'-'.join(map(str, runs))}", tuple(runs)))
    rows = []
    for name, members in models:
        cells = (cell(ensemble_mean(plain_in, members), ensemble_mean(plain_out, members)),
                 cell(ensemble_mean(plain_in, members), ensemble_mean(tta_out, members)),
                 cell(ensemble_mean(tta_in, members), ensemble_mean(tta_out, members)))
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="*", default=["base"])
    ap.add_argument("--root", type=Path, default=Path("runs/loso"))
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--insource", type=Path, metavar="ROOT", help="a scripts/loso_insource.sh folder instead")
    ap.add_argument("--members", type=int, default=4, help="ensemble size scored with --insource (default 4)")
    ap.add_argument("--alert", type=int, nargs="+", metavar="SEED",
                    help="with --insource: the alert of these seeds and their ensemble, chosen in-source")
    ap.add_argument("--target", type=float, default=0.9, help="--alert's in-source sensitivity target (default 0.9)")
    args = ap.parse_args()
    if args.insource and args.alert:
        print(f"| model | at its own in-source alert ({args.target:.0%} sensitivity there), plain: sensitivity / "
              "specificity; alerted at 10% prevalence | "
              f"TTA x{args.views} at the plain threshold | TTA x{args.views}, threshold chosen on TTA probabilities |")
        print("|---|---|---|---|")
        print("\n".join(alert_rows(args.insource, args.alert, args.views, args.target)))
        return
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
