"""Would a referral on EARLIER-layer features catch the non-dermoscopic inputs the pre-logit one misses, without
referring a new clinic's lesions? (Lee et al. 2018 score several layers; session 8's question.)

For one trained Lite0 run whose validation images are ONE source (e.g. `scripts/referral_heldout.sh`'s model,
trained and validated on HAM10000 alone): the channel means and standard deviations of every `blocks[i]` output
are scored by a Mahalanobis distance (one Gaussian, Ledoit-Wolf, 64 directions + residual, as referral.py),
thresholded at quantiles of the out-of-fold validation scores, then applied to `--new-source` lesions the model
never saw and to the synthetic non-dermoscopic inputs of bench/referral_check.py.

    .venv/bin/python scripts/referral_layers.py runs/referral/ham-only      (about 4 min on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from referral_check import _extra_lesions  # noqa: E402

from melanoma import referral  # noqa: E402
from melanoma.artifacts import load_model  # noqa: E402
from melanoma.data import load_image  # noqa: E402
from melanoma.predict import Predictor  # noqa: E402


def block_statistics(net, predictor: Predictor, images) -> dict[int, np.ndarray]:
    """{block index: [N, 2 * channels] channel means and standard deviations of that block's output}."""
    captured: dict[int, list] = {}
    hooks = [block.register_forward_hook(
        lambda _m, _i, out, i=i: captured.setdefault(i, []).append(torch.cat([out.mean((2, 3)), out.std((2, 3))], 1)))
        for i, block in enumerate(net.blocks)]
    try:
        with torch.no_grad():
            for start in range(0, len(images), 32):
                net(torch.stack([predictor.preprocess(im) for im in images[start:start + 32]]))
    finally:
        for hook in hooks:
            hook.remove()
    return {i: torch.cat(parts).double().numpy() for i, parts in captured.items()}


def from_paths(net, predictor, paths, chunk: int = 128) -> dict[int, np.ndarray]:
    parts = [block_statistics(net, predictor, [load_image(p) for p in paths[i:i + chunk]])
             for i in range(0, len(paths), chunk)]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def standardised_scores(val: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Out-of-fold validation distances and the distances of `others`, robustly standardised on the former."""
    one_class = np.zeros(len(val), int)
    oof = referral._out_of_fold_scores(val, one_class, 64, 5, 0)
    stats = referral._fit_ood_stats(val, one_class, 64)
    centre, scale = referral._robust_scale(oof)
    return [(s - centre) / scale for s in (oof, *(referral.ood_score(o, stats) for o in others))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a Lite0 run folder with val_predictions.csv (one source)")
    ap.add_argument("--new-source", type=Path, default=ROOT.parent / "shared/data/isic-9class/Train")
    ap.add_argument("--exclude", type=Path, default=ROOT.parent / "shared/data/ham10000/images",
                    help="images whose file names occur here are not new-source lesions")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.975, 0.99, 0.995])
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    predictor = Predictor.load(args.run)
    net, meta = load_model(args.run)
    with (args.run / "val_predictions.csv").open(newline="") as f:
        val_paths = [row["path"] for row in csv.DictReader(f)]
    new_paths = _extra_lesions(args.new_source, args.exclude, args.n, 0)
    synthetic = referral.synthetic_ood_images(int(meta["preprocessing"]["input_size"]), 10, 0)
    kinds = np.array([k for k, _ in synthetic])
    val, new = from_paths(net, predictor, val_paths), from_paths(net, predictor, new_paths)
    odd = block_statistics(net, predictor, [im for _, im in synthetic])
    print(f"{args.run}: {len(val_paths)} validation lesions, {len(new_paths)} new-source lesions, "
          f"{len(kinds)} non-dermoscopic inputs")
    print("| block | quantile | validation referred | new-source lesions referred | non-dermoscopic referred |")
    print("|---|---|---|---|---|")
    for block in sorted(val):
        v, n, o = standardised_scores(val[block], new[block], odd[block])
        for q in args.quantiles:
            t = np.quantile(v, q)
            print(f"| {block} ({val[block].shape[1]} values) | {q} | {(v > t).mean():.1%} | {(n > t).mean():.1%} | "
                  f"{(o > t).mean():.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
