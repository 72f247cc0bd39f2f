"""Which out-of-distribution scores should the referral combine? (session 9: referral version 3)

Embeds a model's validation lesions, optionally lesions of a source the model never saw, and the synthetic
non-dermoscopic inputs of bench/referral_check.py; scores each with the robustly standardised out-of-fold
Mahalanobis distance (referral.py's: per-class means, Ledoit-Wolf, 64 directions + residual) of the pre-logit
features and of the channel means / standard deviations of blocks 0, 5 and 6 of every network, and the energy;
then prints, per combination, the share referred (low confidence, the input check, and the combined score above
its worst-source quantile, all as referral.py fits them):

    .venv/bin/python scripts/referral_variants.py models/default                          (about 4 min on 2 cores)
    .venv/bin/python scripts/referral_variants.py runs/referral/ham-only --new-source ../shared/data/isic-9class/Train

`--sweep`: version 3 only, over the low-confidence quantile (5% ... 1%) and the distance quantile (97.5% ... 99.9%).
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

from melanoma import input_check, referral  # noqa: E402
from melanoma.artifacts import load_model  # noqa: E402
from melanoma.data import load_image  # noqa: E402
from melanoma.finalize import source_of, training_sources  # noqa: E402
from melanoma.predict import Predictor  # noqa: E402

BLOCKS = (0, 5, 6)


def _embed(net, predictor, images, layers: list[str], widths: list[int]) -> dict[str, np.ndarray]:
    """Pre-logits, logits, input statistics and the statistics of BLOCKS of every network, for one batch."""
    x = torch.stack([predictor.preprocess(im) for im in images])
    features, logits = referral.embed(net, x, layers)
    pre_width = features.shape[1] - sum(widths)
    out = {"pre": features[:, :pre_width].double().numpy(), "logits": logits.double().numpy(),
           "stats": np.asarray(predictor.input_statistics(x))}
    parts = np.split(features[:, pre_width:].double().numpy(), np.cumsum(widths)[:-1], axis=1)
    for k in BLOCKS:
        out[f"b{k}"] = np.hstack([p for p, name in zip(parts, layers) if name.endswith(f"blocks.{k}")])
    return out


def embed_all(net, predictor, items, batch: int = 32) -> dict[str, np.ndarray]:
    networks = list(net.members) if hasattr(net, "members") else [net]
    layers = [f"members.{i}.blocks.{k}" if hasattr(net, "members") else f"blocks.{k}"
              for k in BLOCKS for i in range(len(networks))]
    size = int(predictor.meta["preprocessing"]["input_size"])
    widths = [referral.layer_width(net, [name], size) for name in layers]  # once, not per batch
    parts = [_embed(net, predictor, [load_image(p) if isinstance(p, str) else p for p in items[i:i + batch]],
                    layers, widths)
             for i in range(0, len(items), batch)]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model folder with val_predictions.csv")
    ap.add_argument("--new-source", type=Path, help="lesions of a source the model never saw")
    ap.add_argument("--exclude", type=Path, default=ROOT.parent / "shared/data/ham10000/images",
                    help="images whose file names occur here are not new-source lesions")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--cache", type=Path, help="an .npz file: the embeddings are read from it when it exists, "
                    "else computed and written to it (same model and arguments!)")
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.975],
                    help="one table per quantile of the combined score (the add-on scores keep their own)")
    ap.add_argument("--sweep", action="store_true",
                    help="version 3 only, over the two quantiles (low-confidence and not-like-the-training-images)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    predictor = Predictor.load(args.model)
    net, meta = load_model(args.model)
    net.eval()
    with (args.model / "val_predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = np.array([meta["class_names"].index(r["label"]) for r in rows])
    sources = np.array([source_of(r["path"], training_sources(meta)) for r in rows])
    synthetic = referral.synthetic_ood_images(int(meta["preprocessing"]["input_size"]), 10, 0)
    kinds = np.array([k for k, _ in synthetic])
    if args.cache and args.cache.is_file():  # the embeddings of an earlier run with the same arguments
        with np.load(args.cache) as saved:
            data = {}
            for key in saved.files:
                name, part = key.split("/")
                data.setdefault(name, {})[part] = saved[key]
    else:
        data = {"val": embed_all(net, predictor, [r["path"] for r in rows]),
                "junk": embed_all(net, predictor, [im for _, im in synthetic])}
        if args.new_source:
            data["new"] = embed_all(net, predictor, _extra_lesions(args.new_source, args.exclude, args.n, 0))
        if args.cache:
            np.savez(args.cache, **{f"{name}/{part}": v for name, parts in data.items() for part, v in parts.items()})
    if args.sweep:
        print_sweep(data, labels, sources)
    else:
        print_table(data, labels, sources, kinds, args.quantiles)
    return 0


def _scores(data, labels) -> tuple[dict, dict, dict, dict]:
    """Standardised distances per feature set, standardised energy, confidence and the input check's verdict,
    each as {set name: per-image array}, fitted on the validation lesions as referral.py fits them."""
    sets = list(data)

    def standardised_distance(key):
        val = data["val"][key]
        oof = referral._out_of_fold_scores(val, labels, 64, 5, 0)
        stats = referral._fit_ood_stats(val, labels, 64)
        centre, scale = referral._robust_scale(oof)
        return {n: ((oof if n == "val" else referral.ood_score(data[n][key], stats)) - centre) / scale for n in sets}

    energy = {n: referral.energy_score(data[n]["logits"]) for n in sets}
    centre, scale = referral._robust_scale(energy["val"])
    energy = {n: (e - centre) / scale for n, e in energy.items()}
    confidence = {n: referral.softmax(data[n]["logits"]).max(1) for n in sets}
    check = input_check.fit(data["val"]["stats"])
    outside = {n: input_check.outside(data[n]["stats"], check) for n in sets}
    dist = {k: standardised_distance(k) for k in ("pre", *(f"b{b}" for b in BLOCKS))}
    return dist, energy, confidence, outside


def _shares(refer: dict, sources) -> list[str]:
    row = [f"{refer['val'][m].mean():.1%}" for _, m in referral.source_masks(sources)]
    row += [f"{refer['new'].mean():.1%}"] if "new" in refer else []
    return row + [f"{refer['junk'].mean():.0%}"]


def print_sweep(data, labels, sources) -> None:
    """Version 3 at other quantiles: the share referred per set (worst-source limits, as referral.py fits them)."""
    groups = referral._source_groups(sources, len(labels), 50)
    dist, energy, confidence, outside = _scores(data, labels)
    score = {n: np.max([dist["pre"][n], dist["b5"][n], energy[n]], axis=0) for n in data}
    print("| low-confidence quantile | distance quantile | "
          + " | ".join(f"validation {s} (out of fold)" for s, _ in referral.source_masks(sources))
          + (" | new-source lesions" if "new" in data else "") + " | non-dermoscopic |")
    print("|---" * (3 + len(set(sources.tolist())) + ("new" in data)) + "|")
    for cq in (0.05, 0.03, 0.01):
        low_limit = min(float(np.quantile(confidence["val"][m], cq)) for _, m in groups)
        for oq in (0.975, 0.985, 0.99, 0.995, 0.999):
            limit = max(float(np.quantile(score["val"][m], oq)) for _, m in groups)
            refer = {n: (confidence[n] < low_limit) | outside[n] | (score[n] > limit) for n in data}
            print(f"| {cq:.0%} | {oq:.1%} | " + " | ".join(_shares(refer, sources)) + " |")


def print_table(data, labels, sources, kinds, quantiles=(0.975,)) -> None:
    for q in quantiles:
        print(f"\ncombined score above its {q:.1%} quantile (worst source); low confidence below the 5% quantile")
        _print_variants(data, labels, sources, kinds, q)


def _print_variants(data, labels, sources, kinds, q_main: float) -> None:
    sets = list(data)
    groups = referral._source_groups(sources, len(labels), 50)
    dist, energy, confidence, outside = _scores(data, labels)
    low_limit = min(float(np.quantile(confidence["val"][m], 0.05)) for _, m in groups)
    base = {n: (confidence[n] < low_limit) | outside[n] for n in sets}
    variants = {
        "max(pre-logits, energy) [version 2]": [(("pre", "E"), q_main)],
        "max(block 5, energy) [replace]": [(("b5", "E"), q_main)],
        "max(pre-logits, block 5, energy) [version 3]": [(("pre", "b5", "E"), q_main)],
        "version 2 + block 5 at its 99% quantile": [(("pre", "E"), q_main), (("b5",), 0.99)],
        "version 2 + block 5 at its 99.5% quantile": [(("pre", "E"), q_main), (("b5",), 0.995)],
        "version 2 + block 6 at its 99% quantile": [(("pre", "E"), q_main), (("b6",), 0.99)],
        "version 2 + block 0 at its 99.5% quantile": [(("pre", "E"), q_main), (("b0",), 0.995)],
        "max(pre-logits, block 0, block 5, energy)": [(("pre", "b0", "b5", "E"), q_main)],
        "max(pre-logits, block 0, energy)": [(("pre", "b0", "E"), q_main)],
        "max(pre-logits, block 6, energy)": [(("pre", "b6", "E"), q_main)],
    }
    names = sorted(set(kinds.tolist()))
    print("| scores | " + " | ".join(f"validation {s} (out of fold)" for s, _ in referral.source_masks(sources))
          + (" | new-source lesions" if "new" in data else "") + " | non-dermoscopic | " + " | ".join(names) + " |")
    print("|---" * (2 + len(names) + len(set(sources.tolist())) + ("new" in data)) + "|")
    for title, parts in variants.items():
        refer = {n: base[n].copy() for n in sets}
        for keys, q in parts:
            score = {n: np.max([energy[n] if k == "E" else dist[k][n] for k in keys], axis=0) for n in sets}
            limit = max(float(np.quantile(score["val"][m], q)) for _, m in groups)
            refer = {n: refer[n] | (score[n] > limit) for n in sets}
        row = _shares(refer, sources) + [f"{refer['junk'][kinds == k].mean():.0%}" for k in names]
        print(f"| {title} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
