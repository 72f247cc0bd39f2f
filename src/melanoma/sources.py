"""Training on several sources: one PRIMARY dataset (split into train / validation folds, so every reported number
is on it) plus EXTRA datasets (e.g. HAM10000) that only ever join the training side.

Extra labels are mapped into the primary's class names by a training label map: `dataset label: class` (a
training target), `dataset label: [class, class]` (ambiguous: the image is a *reference* only, never a target),
or `dataset label: null` (left out). References settle the primary's conflicting labels
(`--conflict-policy reference`, see `data.prepare_training_table`).

Leakage: extra images are grouped with the primary ones (identical pixels, near-duplicates, lesion ids); an extra
image that shares a group with any primary image is removed (the primary copy is already there, and a same-lesion
photo on the training side of the fold that validates its twin would leak).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from melanoma.data import discover, stratified_group_kfold, stratified_group_split
from melanoma.errors import ConfigError
from melanoma.labelmaps import normalise_label

# HAM10000 dx codes -> ISIC 9-class names, following what the 9-class set itself did with the HAM10000 images it
# contains (measured on the shared Train split): its 462 HAM 'bkl' images are all filed as pigmented benign
# keratosis, but its HAM 'akiec' images are split between actinic keratosis (114) and squamous cell carcinoma (181),
# so 'akiec' is ambiguous: a reference (it tells a nevus/actinic keratosis duplicate apart), never a target.
HAM10000_TO_ISIC9 = {
    "mel": "melanoma", "nv": "nevus", "bcc": "basal cell carcinoma", "df": "dermatofibroma",
    "vasc": "vascular lesion", "bkl": "pigmented benign keratosis",
    "akiec": ["actinic keratosis", "squamous cell carcinoma"],
}
# With --coarse-labels: HAM10000's coarse labels train through the summed probability of the classes they cover
# (akiec = actinic keratosis or intraepithelial carcinoma; bkl = pigmented benign keratosis, seborrheic keratosis
# or solar lentigo -- the 9-class set files solar lentigines as pigmented benign keratosis).
HAM10000_COARSE = {**HAM10000_TO_ISIC9, "bkl": ["pigmented benign keratosis", "seborrheic keratosis"]}
TRAINING_LABEL_PRESETS = {"ham10000": HAM10000_TO_ISIC9, "ham10000-coarse": HAM10000_COARSE}


@dataclass
class ExtraSource:
    """Samples of one extra dataset, labels already mapped (None = reference only), origin = the source name."""

    name: str
    samples: list = field(default_factory=list)
    compatible: dict = field(default_factory=dict)  # path -> classes the source's own label allows
    summary: dict = field(default_factory=dict)


def _target_names(target) -> list[str]:
    """The class names of one map entry: `class`, `[class, ...]` or None."""
    return [] if target is None else list(target) if isinstance(target, list) else [target]


def _preset_within(preset: dict, classes: list[str]) -> dict:
    """A preset restricted to the training classes (a target the training data lacks leaves that label out)."""
    out = {}
    for label, target in preset.items():
        names = [n for n in _target_names(target) if n in classes]
        out[label] = None if not names else names if isinstance(target, list) and len(names) > 1 else names[0]
    return out


def load_training_labels(spec, table, classes: list[str], coarse: bool = False) -> dict:
    """{normalised dataset label: class | [classes] | None} from "auto" (HAM10000 layout -> the `ham10000`
    preset, `ham10000-coarse` with coarse=True; otherwise labels must already be class names), a preset name, or
    a YAML file (whose targets must all be training classes; a preset's targets missing from `classes` just leave
    those labels out)."""
    if spec in (None, "auto"):
        ham = HAM10000_COARSE if coarse else HAM10000_TO_ISIC9
        raw = (_preset_within(ham, classes) if table.kind == "ham10000"
               else {c: c for c in table.classes if c in classes})
    elif str(spec).lower() in TRAINING_LABEL_PRESETS:
        raw = _preset_within(TRAINING_LABEL_PRESETS[str(spec).lower()], classes)
    else:
        path = Path(spec).expanduser()
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"training label map {spec!r}: not a preset ({', '.join(TRAINING_LABEL_PRESETS)}) "
                              f"and not a readable YAML file ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a training label map is a mapping 'dataset label: class'")
    return {normalise_label(k): v for k, v in raw.items()}


def _check_targets(mapping: dict, classes: list[str], where: str) -> None:
    for label, target in mapping.items():
        for name in _target_names(target):
            if name not in classes:
                raise ConfigError(f"{where}: label {label!r} maps to {name!r}, which is not a class of the "
                                  f"training data ({', '.join(classes)})")


def load_extra_source(path, spec, classes: list[str], coarse: bool = False) -> ExtraSource:
    """Discover an extra dataset and map its labels into `classes`; unmapped labels are left out and counted.
    An ambiguous label ([class, class]) is a reference only, or with coarse=True a coarse training label."""
    table = discover(path)
    mapping = load_training_labels(spec, table, classes, coarse)
    _check_targets(mapping, classes, str(path))
    source = ExtraSource(name=str(path))
    unmapped: Counter = Counter()
    for s in table.samples:
        target = mapping.get(normalise_label(s.label)) if s.label is not None else None
        if target is None:
            unmapped[str(s.label)] += 1
            continue
        allowed = tuple(target) if isinstance(target, list) else (target,)
        if len(allowed) == 1:
            s = replace(s, label=allowed[0])
        else:
            s = replace(s, label=allowed[0], allowed=allowed) if coarse else replace(s, label=None)
        source.samples.append(replace(s, origin=source.name))
        source.compatible[s.path] = allowed
    if not source.samples:
        raise ConfigError(f"{path}: none of its labels ({', '.join(table.classes)}) maps to a training class; "
                          f"give a training label map (--extra-labels)")
    source.summary = {"source": str(Path(path).resolve()), "images": len(table), "mapped": len(source.samples),
                      "reference_only": sum(s.label is None for s in source.samples),
                      "coarse": sum(s.allowed is not None for s in source.samples),
                      "unmapped_labels": dict(unmapped)}
    return source


def load_extra_sources(paths, spec, classes: list[str], coarse: bool = False) -> list[ExtraSource]:
    return [load_extra_source(p, spec, classes, coarse) for p in paths or []]


def primary_indices(table) -> np.ndarray:
    """Indices of the primary dataset's samples (the ones that may be validated on)."""
    return np.flatnonzero([s.origin is None for s in table.samples]).astype(np.int64)


def _group_splits(sub, folds: int | None, val_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return stratified_group_kfold(sub, folds, seed) if folds else [stratified_group_split(sub, val_fraction, seed)]


def splits_with_extras(table, folds: int | None, val_fraction: float, seed: int, validate_extras: bool = False
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, val_idx) pairs: the primary samples split group-aware and stratified (K folds, or one hold-out
    split), every extra sample added to each training side. Without extras this is exactly the plain split.

    validate_extras=True: every extra source is split the same way too and its validation share joins the
    validation side, so checkpoints, thresholds and referral statistics see every training source."""
    primary = primary_indices(table)
    pairs = [(primary[tr], primary[va]) for tr, va in _group_splits(table.subset(primary), folds, val_fraction, seed)]
    for origin in sorted({s.origin for s in table.samples if s.origin is not None}):
        members = np.flatnonzero([s.origin == origin and s.allowed is None for s in table.samples]).astype(np.int64)
        if not validate_extras:
            pairs = [(np.concatenate([tr, members]), va) for tr, va in pairs]
            continue
        extra = _group_splits(table.subset(members), folds, val_fraction, seed)
        pairs = [(np.concatenate([tr, members[etr]]), np.concatenate([va, members[eva]]))
                 for (tr, va), (etr, eva) in zip(pairs, extra)]
    coarse = coarse_indices(table)  # no single class to validate against: always on the training side
    return [(np.concatenate([tr, coarse]), va) for tr, va in pairs] if len(coarse) else pairs


def coarse_indices(table) -> np.ndarray:
    return np.flatnonzero([s.allowed is not None for s in table.samples]).astype(np.int64)


def loss_targets(table) -> tuple[np.ndarray, list[list[int]]]:
    """(target per sample, coarse groups): a fine sample's target is its class index; a coarse sample's is
    len(classes) + g, where groups[g] lists the class indices its label allows (LesionClassifier._loss)."""
    index = {c: i for i, c in enumerate(table.classes)}
    groups: list[tuple[int, ...]] = sorted({tuple(index[c] for c in s.allowed) for s in table.samples if s.allowed})
    targets = table.label_indices()
    for i, s in enumerate(table.samples):
        if s.allowed:
            targets[i] = len(table.classes) + groups.index(tuple(index[c] for c in s.allowed))
    return targets, [list(g) for g in groups]


def source_names(table, primary_data: str) -> dict[str, str | None]:
    """{name a user may type: origin} for every source of `table`: the primary dataset (origin None) by its folder
    name or path, each extra source by its folder name or path."""
    names: dict[str, str | None] = {}
    for origin in [None, *sorted({s.origin for s in table.samples if s.origin is not None})]:
        path = Path(primary_data if origin is None else origin)
        names.update({path.name: origin, str(path): origin, str(path.resolve()): origin})
    return names


def source_origin(table, source: str, primary_data: str) -> str | None:
    """The `origin` of the source a user named (ConfigError naming the known sources otherwise)."""
    names = source_names(table, primary_data)
    if source not in names:
        known = ", ".join(sorted({Path(k).name for k in names}))
        raise ConfigError(f"--holdout-source {source}: not a training source (sources: {known})")
    return names[source]


def shared_with_source(table, origin: str | None) -> np.ndarray:
    """Mask of the images that the source `origin` and another source both hold (`Sample.also_in`)."""
    return np.array([s.also_in is not None and origin in (s.origin, s.also_in) for s in table.samples], bool)


def holdout_source_split(table, source: str, primary_data: str, max_val: int | None, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Leave one source out: train on every other source, validate on `source` (the question a new clinic asks).
    No image the held-out source holds trains; at most `max_val` of its images validate (a stratified, group-aware
    sample, so photos of one lesion stay together); the rest is unused. Images that the held-out source AND a
    training source hold (`shared_with_source`: the 9-class Train split's ~1,300 HAM10000 pictures) do neither:
    validating on them made the "new source" two-thirds HAM10000 pictures with none of its 362 melanomas, so its
    melanoma AUC was partly a which-collection score; training on them (holding HAM10000 out) would train on the
    held-out source (docs/results.md, session 9)."""
    origin = source_origin(table, source, primary_data)
    own = np.array([s.origin == origin for s in table.samples])
    shared = shared_with_source(table, origin)
    held, train = np.flatnonzero(own & ~shared).astype(np.int64), np.flatnonzero(~own & ~shared).astype(np.int64)
    held = np.setdiff1d(held, coarse_indices(table))  # a coarse label neither trains here nor validates
    if len(train) == 0:
        raise ConfigError(f"--holdout-source {source}: nothing left to train on; add --extra-data")
    if max_val and len(held) > max_val:
        _, keep = stratified_group_split(table.subset(held), max_val / len(held), seed)
        held = held[np.sort(keep)]
    return train, held
