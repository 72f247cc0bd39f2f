"""Ensembles as one model: `melanoma ensemble RUN... --out DIR` writes ONE model folder (model.safetensors +
model.json) whose output is the mean of the members' temperature-scaled probabilities.

The model is an `EnsembleNet`, rebuilt by `artifacts.load_model` from model.json's architecture field
("ensemble(seed-cnn,seed-cnn,seed-cnn)": the member architectures in order), so Predictor, evaluate, predict,
explain, export and the service use it like any single network:

* forward returns ensemble logits z with softmax(z) = mean_m softmax(z_m / T_m) (T_m: member m's calibration
  temperature, stored in the weights). z = log(mean probabilities) + mean_m logsumexp(z_m / T_m): the added
  per-image constant leaves the softmax unchanged and makes the referral's energy score the members' mean energy
  (for one member z is exactly z_1 / T_1). model.json's own temperature is 1.
* features (the input of `get_classifier()`, which referral and export read): the members' pre-logit features
  side by side; the ensemble's classifier applies each member's classifier to its slice. The referral also reads
  each member's intermediate layer (`referral.tap_layers`: members.0.blocks.5, ...), appended after them.
* Grad-CAM: the members' last feature maps pass side by side through one layer (`gradcam_layer`), so one
  Grad-CAM of an ensemble output sums every member's channel-weighted map: the ensemble's (mean) CAM.
  Needs equal feature-map grids (same input size and network stride); otherwise explain says so.

Alert threshold, referral statistics and metrics are fitted on the ensemble's own held-out predictions: the images
of the members' validation sets. Runs sharing data and split seed (--split-seed, else --seed) share their split:
the whole ensemble scores it. The folds of one CV run (or runs of other split seeds) hold out different images:
each image is then scored by the members that did not train on it (out-of-fold, a conservative stand-in for the
whole ensemble).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from melanoma.errors import ModelError

PREFIX = "ensemble("
MIN_HELDOUT = 4  # referral fitting needs at least 4 held-out images (far more for stable thresholds)
PREPROCESSING_KEYS = ("input_size", "resize", "interpolation", "mean", "std", "color_constancy", "detail_size")


def ensemble_name(architectures: list[str]) -> str:
    """The architecture field of an ensemble: "ensemble(a,b,c)"."""
    return PREFIX + ",".join(architectures) + ")"


def member_architectures(name: str) -> list[str]:
    """The member architectures of an ensemble name, in order; ModelError for a malformed name."""
    inner = name[len(PREFIX):-1] if name.startswith(PREFIX) and name.endswith(")") else ""
    members = [m.strip() for m in inner.split(",") if m.strip()]
    if not members:
        raise ModelError(f"malformed ensemble architecture {name!r}: expected 'ensemble(ARCH,ARCH,...)'")
    return members


# --------------------------------------------------------------------------------------------------- network
class EnsembleHead(nn.Module):
    """Classifier of the ensemble. Input: the members' pre-logit features side by side [N, sum D_m]; output:
    logits whose softmax is the mean of the members' temperature-scaled probabilities.

    The member classifiers are used, not owned (a plain list): they stay registered inside their members, so the
    weights are stored once and every member still runs alone exactly as trained."""

    def __init__(self, classifiers: list[nn.Module], widths: list[int]):
        super().__init__()
        self.classifiers = list(classifiers)  # a list attribute is not registered as submodules (on purpose)
        self.widths = [int(w) for w in widths]
        self.register_buffer("temperatures", torch.ones(len(classifiers)))  # saved with the weights

    def member_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled logits of every member [M, N, C]."""
        parts = torch.split(features, self.widths, dim=1)
        logits = torch.stack([clf(part) for clf, part in zip(self.classifiers, parts)])
        return logits / self.temperatures.view(-1, 1, 1)

    @staticmethod
    def combine(scaled: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ensemble logits [N, C] from member logits [M, N, C]; `mask` [M, N] (bool) limits image n to the
        members where mask[:, n] is True (out-of-fold scoring). log of the mean probability, plus the mean
        logsumexp per image (softmax-invariant; keeps the referral's energy score informative)."""
        log_probs = torch.log_softmax(scaled, dim=-1)
        lse = torch.logsumexp(scaled, dim=-1)  # [M, N]
        if mask is None:
            count = scaled.shape[0]
            return torch.logsumexp(log_probs, dim=0) - math.log(count) + lse.mean(0).unsqueeze(-1)
        weight = mask.to(scaled.dtype)
        count = weight.sum(0)  # [N]
        log_probs = log_probs.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        shift = (lse * weight).sum(0) / count
        return torch.logsumexp(log_probs, dim=0) - count.log().unsqueeze(-1) + shift.unsqueeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.combine(self.member_logits(features))


class EnsembleNet(nn.Module):
    """Members run on the same (identically preprocessed) input; see the module docstring for the outputs."""

    def __init__(self, members: list[nn.Module], image_size: int):
        super().__init__()
        from melanoma.referral import classifier_module

        for member in members:
            if not (callable(getattr(member, "forward_features", None))
                    and callable(getattr(member, "forward_head", None))):
                raise ModelError(f"{type(member).__name__} has no forward_features/forward_head: it cannot be an "
                                 "ensemble member")
        self.members = nn.ModuleList(members)
        classifiers = [classifier_module(m) for m in members]
        self.head = EnsembleHead(classifiers, [c.in_features for c in classifiers])
        self.cam_layer = nn.Identity()  # Grad-CAM hooks this: all members' last feature maps, side by side
        self.image_size = int(image_size)
        self.cam_grids_match = self._feature_grids_match()

    def _feature_grids_match(self) -> bool:
        """True when every member's last feature map is [C_m, h, w] with the same h, w at image_size."""
        was_training = self.training
        with torch.no_grad():
            maps = [m.eval().forward_features(torch.zeros(1, 3, self.image_size, self.image_size))
                    for m in self.members]
        self.train(was_training)
        return all(f.ndim == 4 for f in maps) and len({tuple(f.shape[2:]) for f in maps}) == 1

    def get_classifier(self) -> nn.Module:
        """The module whose input is the pre-logit features (timm-style; read by referral and export)."""
        return self.head

    def gradcam_layer(self) -> nn.Module:
        """The layer a Grad-CAM of the whole ensemble hooks (models.find_gradcam_layer)."""
        if not self.cam_grids_match:
            raise ModelError("the ensemble's members have last feature maps of different sizes: Grad-CAM over "
                             "the ensemble needs members of the same network stride at the same input size")
        return self.cam_layer

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's last feature map; passed jointly through `cam_layer` when the grids match."""
        maps = [m.forward_features(x) for m in self.members]
        if not self.cam_grids_match:
            return maps
        joined = self.cam_layer(torch.cat(maps, dim=1))
        return list(torch.split(joined, [f.shape[1] for f in maps], dim=1))

    def pre_logits(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The members' pre-logit features side by side [N, sum D_m]."""
        return torch.cat([m.forward_head(f, pre_logits=True).flatten(1) for m, f in zip(self.members, maps)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_logits(self.feature_maps(x)))


def create_ensemble(name: str, num_classes: int, image_size: int | None) -> EnsembleNet:
    """An EnsembleNet of fresh members (weights come from the model file), for models.create_model."""
    from melanoma.models import create_model

    if not image_size:
        raise ModelError(f"{name}: building an ensemble needs its input size")
    members = [create_model(arch, num_classes, pretrained=False, image_size=image_size)
               for arch in member_architectures(name)]
    return EnsembleNet(members, image_size)


# --------------------------------------------------------------------------------------------------- members
def expand_runs(runs) -> list[Path]:
    """The member model folders: a CV run (cv_summary.json + fold-*/model.json) stands for all its folds."""
    members = []
    for run in map(Path, runs):
        folds = sorted(run.glob("fold-*/model.json"))
        if (run / "cv_summary.json").is_file() and folds:
            members.extend(f.parent for f in folds)
        else:
            members.append(run)
    if len(members) < 2:
        raise ModelError(f"an ensemble needs at least 2 members, got {len(members)} ({', '.join(map(str, runs))})")
    if len({m.resolve() for m in members}) < len(members):
        raise ModelError("the same run is named twice: each member must be a different run")
    return members


def check_compatible(members: list[Path], metas: list[dict]) -> None:
    """Same classes (same order), melanoma class and preprocessing, else a one-line error naming the run."""
    for run, meta in zip(members, metas):
        if str(meta["architecture"]).startswith(PREFIX):
            raise ModelError(f"{run}: is itself an ensemble; name its member runs instead")
    first = metas[0]
    for run, meta in zip(members[1:], metas[1:]):
        if list(meta["class_names"]) != list(first["class_names"]):
            raise ModelError(f"{run}: its classes {meta['class_names']} differ from {members[0]}'s "
                             f"{first['class_names']}")
        if meta.get("melanoma_class") != first.get("melanoma_class"):
            raise ModelError(f"{run}: melanoma class {meta.get('melanoma_class')!r} differs from {members[0]}'s")
        for key in PREPROCESSING_KEYS:
            mine, theirs = meta["preprocessing"].get(key), first["preprocessing"].get(key)
            if mine != theirs:
                raise ModelError(f"{run}: preprocessing {key} = {mine} differs from {members[0]}'s {theirs}; "
                                 "ensemble members must share input size and preprocessing")


def _warn_about_prior_corrections(members: list[Path], metas: list[dict]) -> None:
    """The ensemble combines the members' outputs as trained: a member's prior correction does not carry over."""
    import warnings

    from melanoma.errors import MelanomaWarning

    corrected = [str(run) for run, meta in zip(members, metas) if meta.get("prior_correction")]
    if corrected:
        warnings.warn(f"{corrected[0]}" + (f" and {len(corrected) - 1} more" if len(corrected) > 1 else "")
                      + ": a prior correction the ensemble does not carry over (it averages the members' outputs as "
                      "trained); add one to the ensemble with `melanoma threshold ENSEMBLE --prior-correction "
                      "training-mix`", MelanomaWarning, stacklevel=2)


def _heldout_labels(run: Path, class_names: list[str]) -> dict[str, str]:
    """{image path: true label} of a member's validation set (its val_predictions.csv)."""
    from melanoma.evaluate import read_predictions_csv

    csv_path = run / "val_predictions.csv"
    if not csv_path.is_file():
        raise ModelError(f"{csv_path}: missing; ensemble members must be run folders written by `melanoma train` "
                         "(their validation predictions say which images they did not train on)")
    table = read_predictions_csv(csv_path, class_names)
    return {str(Path(p).resolve()): label for p, label in zip(table.paths, table.labels) if label is not None}


def heldout_set(members: list[Path], class_names: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(paths, labels, mask [M, N]: member m did not train on image n) over the union of the members' validation
    sets. Runs on one split (same data and seed) share it and the mask is all True; otherwise (folds of a CV
    run, other seeds) each image will be scored out-of-fold, by the members that held it out."""
    per_member = [_heldout_labels(run, class_names) for run in members]
    paths = sorted(set.union(*(set(d) for d in per_member)))
    if len(paths) < MIN_HELDOUT:
        raise ModelError(f"the members' validation sets hold {len(paths)} labelled images; at least "
                         f"{MIN_HELDOUT} are needed to fit the ensemble's threshold and referral")
    labels = []
    for path in paths:
        seen = {d[path] for d in per_member if path in d}
        if len(seen) > 1:
            raise ModelError(f"{path}: the members' validation sets label it differently ({sorted(seen)})")
        labels.append(seen.pop())
    mask = np.array([[p in d for p in paths] for d in per_member])
    return paths, labels, mask


def _union_fingerprint(extras: list[dict]) -> dict[str, torch.Tensor]:
    """All members' training-set fingerprints (fingerprint.* tensors), duplicates removed."""
    from melanoma import fingerprint

    keys = [fingerprint.PREFIX + n for n in fingerprint.NAMES]
    parts = [e for e in extras if all(k in e for k in keys)]
    if not parts:
        return {}
    rows = torch.unique(torch.stack([torch.cat([e[k] for e in parts]) for k in keys], dim=1), dim=0)
    return {k: rows[:, i].contiguous() for i, k in enumerate(keys)}


# --------------------------------------------------------------------------------------------------- building
def build_ensemble(runs, out, target_sensitivity: float | None = None, bootstrap: int = 1000,
                   seed: int = 0, weights_dtype: str = "float32") -> dict:
    """Write the ensemble of `runs` (run folders; a CV run = its folds) to the model folder `out`; returns
    {"out", "members", "heldout", "metrics", "melanoma_alert"}. weights_dtype "float16" / "int8" stores the
    members at a half / a quarter of the size; they are rounded BEFORE the held-out predictions, so the
    threshold, referral and metrics are those of the weights that ship."""
    from melanoma import metrics
    from melanoma.artifacts import atomic_write_text, checked_weights_dtype, load_model, round_weights, save_model
    from melanoma.finalize import (calibration_record, fit_referral_on_validation, headline_metrics,
                                   infer_validation_images, source_of, training_sources, write_predictions)
    from melanoma.referral import softmax, tap_layers

    out = Path(out)
    if (out / "model.json").exists():
        raise ModelError(f"{out}: already holds a model; choose another --out")
    weights_dtype = checked_weights_dtype(weights_dtype)  # before minutes of loading and predicting
    members = expand_runs(runs)
    loaded = [(round_weights(model, weights_dtype), meta) for model, meta in map(load_model, members)]
    metas = [meta for _, meta in loaded]
    check_compatible(members, metas)
    _warn_about_prior_corrections(members, metas)
    first = metas[0]
    classes, pre, mel_class = list(first["class_names"]), first["preprocessing"], first.get("melanoma_class")
    net = EnsembleNet([model for model, _ in loaded], int(pre["input_size"]))
    net.head.temperatures.copy_(torch.tensor([float(m.get("temperature") or 1.0) for m in metas]))
    net.eval()

    paths, label_names, mask = heldout_set(members, classes)
    labels = np.array([classes.index(name) for name in label_names])
    layers = tap_layers(net)  # each member's intermediate layer, for the referral (referral.py)
    (logits, features, image_stats), job = infer_validation_images(
        net, paths, pre, layers, f"ensemble ({weights_dtype} weights)", metas)
    scoring = "every member held these images out"
    if not mask.all():  # CV folds: each image scored by the members that did not train on it
        scoring = "out-of-fold: each image scored by the members that did not train on it"
        with torch.no_grad():
            scaled = net.head.member_logits(torch.from_numpy(features[:, :sum(net.head.widths)]))
            logits = EnsembleHead.combine(scaled, torch.from_numpy(mask)).numpy()

    target = float(target_sensitivity if target_sensitivity is not None
                   else (first.get("thresholds") or {}).get("target_sensitivity") or 0.9)
    # The ensemble's output is already calibrated member by member (temperature 1); the record also says what a
    # refitted temperature would give, for the model card.
    calibration = calibration_record(logits, labels)
    probs = softmax(logits, 1.0)
    threshold = None
    if mel_class is not None:
        mel = classes.index(mel_class)
        threshold = float(metrics.choose_alert_threshold(labels == mel, probs[:, mel], target))
    roots = training_sources(first)
    sources = [source_of(p, roots) for p in paths]  # several sources: worst-source referral limits
    referral_meta, tensors, refer, reasons = fit_referral_on_validation(
        net, layers, (logits, features, image_stats), probs, labels, 1.0, sources, int(pre["input_size"]), seed)
    full = metrics.compute_metrics(labels, probs, classes, melanoma_class=mel_class, alert_threshold=threshold,
                                   bootstrap=bootstrap, seed=seed)
    head = headline_metrics(full)

    heldout = {"images": len(paths), "scoring": scoring, "per_member_images": mask.sum(1).tolist()}
    meta = _ensemble_meta(members, metas, net, calibration, threshold, target, referral_meta, head, heldout)
    meta["weights_dtype"] = weights_dtype
    extra = {**tensors, **_union_fingerprint([m.get("extra") or {} for m in metas])}
    out.mkdir(parents=True, exist_ok=True)
    save_model(net, meta, out, extra)
    atomic_write_text(out / "val_metrics.json", json.dumps(full, indent=2))
    table = SimpleNamespace(classes=classes, samples=[SimpleNamespace(path=p, label=lab)
                                                      for p, lab in zip(paths, label_names)])
    write_predictions(out / "val_predictions.csv", table, range(len(paths)), probs, refer, reasons, threshold,
                      mel_class)
    job.finish()
    return {"out": str(out), "members": [str(m) for m in members], "heldout": heldout, "metrics": head,
            "melanoma_alert": threshold}


def shared_training(metas) -> dict:
    """The training options every member shares (how the data was split and validated, the recipe), plus the
    members' seeds; what differs between members (seed, best epoch) is left out."""
    trainings = [m.get("training") or {} for m in metas]
    shared = {k: v for k, v in trainings[0].items() if all(t.get(k) == v for t in trainings[1:])}
    return {**shared, "member_seeds": [t.get("seed") for t in trainings]}


def _ensemble_meta(members, metas, net, calibration, threshold, target, referral_meta, head, heldout) -> dict:
    """model.json: the first member's (data, model card, preprocessing) with the ensemble's own fitted values."""
    dropped = ("extra", "cv", "calibration", "format", "format_version", "package_version")
    first = {k: v for k, v in metas[0].items() if k not in dropped}
    card = dict(first.get("model_card") or {})
    card["output"] = ("probability per class: the mean of the members' temperature-scaled probabilities; melanoma "
                      "alert and referral fitted on the ensemble's own held-out predictions")
    card["ensemble"] = (f"{len(members)} members; threshold, referral and metrics from {heldout['images']} "
                        f"held-out images ({heldout['scoring']})")
    # imported here: loading an ensemble (every `predict` of the shipped default) needs no scipy / scikit-learn
    from melanoma.metrics import expected_alert_share

    card["expected_alert_share"] = expected_alert_share(  # the ensemble's own operating point, not a member's
        head.get("melanoma_sensitivity"), head.get("melanoma_specificity"))
    return {
        **first,
        "architecture": ensemble_name([m["architecture"] for m in metas]),
        "training": shared_training(metas),
        "temperature": 1.0,
        "calibration": calibration,
        "thresholds": {"melanoma_alert": threshold, "target_sensitivity": target,
                       **referral_meta.get("thresholds", {})},
        "referral": referral_meta,
        "metrics": head,
        "model_card": card,
        "ensemble": {
            "members": [{"run": str(run.resolve()), "architecture": meta["architecture"],
                         "temperature": float(t), "metrics": meta.get("metrics")}
                        for run, meta, t in zip(members, metas, net.head.temperatures.tolist())],
            "combination": "mean of temperature-scaled member probabilities",
            "heldout": heldout,
        },
    }
