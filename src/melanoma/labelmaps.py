"""Label maps: score a model on a dataset whose classes differ from the model's (ISIC 2018, ISIC 2017, binary).

A label map says, for each TARGET class, which MODEL classes' probabilities are summed into it, and how the
DATASET's own label strings translate to target classes:

    # my_map.yaml -- target class: [model classes summed into it]
    melanoma: [melanoma]
    keratinocytic: [actinic keratosis, basal cell carcinoma, squamous cell carcinoma]
    other: ["*"]                 # "*" = every model class that no other target lists
    dataset_labels:              # optional: dataset label string -> target class
      MEL: melanoma
    melanoma_class: melanoma     # optional: the target the melanoma metrics and alert use

Rules (checked by `resolve_label_map`, ConfigError with one line otherwise):
- every model class goes to exactly one target, so probabilities still sum to 1 and nothing silently vanishes;
- every target gets at least one of the model's classes; names a model lacks are ignored (aliases);
- a dataset label is covered when it names (case, "_" and "-" ignored) a `dataset_labels` entry, a target, or a
  model class listed by a target. Other labels are NOT guessed into "*": they are counted as uncovered
  (`uncovered_labels` in metrics.json) and those images are left out of the metrics.
- the melanoma target is `melanoma_class` if given, else the target holding the model's melanoma class.

Presets: `isic2018` (the 7 ISIC 2018 / HAM10000 classes, also reads HAM10000 dx codes), `isic2019` (its 8
classes: AK and SCC apart, BKL = pigmented benign + seborrheic keratosis), `isic2017` (melanoma,
seborrheic keratosis, nevus + an explicit "other" bucket for the model's remaining classes), `binary`
(melanoma vs other; knows HAM10000 / ISIC 2019 codes and ISIC 2020's benign diagnosis names).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from melanoma.errors import ConfigError

MELANOMA_NAMES = ("melanoma", "mel")


def find_melanoma_class(class_names) -> str | None:
    """The class that triggers the alert: 'melanoma' or 'MEL'/'mel' (ISIC/HAM10000 codes), else None."""
    return next((c for c in class_names if c.lower() in MELANOMA_NAMES), None)


def is_melanoma_label(label: str | None) -> bool:
    """True for a ground-truth label that means melanoma: 'melanoma', or HAM10000's / ISIC's 'mel' / 'MEL' (any case,
    surrounding spaces ignored); False for any other label, '' or None."""
    return (label or "").strip().lower() in MELANOMA_NAMES


WILDCARD = "*"
# ISIC 2020 (SIIM-ISIC) benign diagnoses; "benign" is what data.discover names its "unknown" benign images
_ISIC2020_BENIGN = ("benign", "lentigo NOS", "solar lentigo", "lichenoid keratosis", "cafe-au-lait macule",
                    "atypical melanocytic proliferation")
# HAM10000 dx code -> the 9-class class name used for it (akiec holds AK and SCC; scripts/score_rules.py reads it)
HAM_DX = {"mel": "melanoma", "nv": "nevus", "bcc": "basal cell carcinoma", "akiec": "actinic keratosis",
          "bkl": "pigmented benign keratosis", "df": "dermatofibroma", "vasc": "vascular lesion"}


@dataclass(frozen=True)
class LabelMap:
    """A label map as written (before it meets a model's class list)."""

    name: str
    targets: dict[str, tuple[str, ...]]  # target class -> model class names (or "*"), in target order
    dataset_labels: dict[str, str] = field(default_factory=dict)  # dataset label -> target class
    melanoma_class: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ResolvedLabelMap:
    """A label map bound to one model's classes: which model columns are summed into each target."""

    name: str
    target_classes: list[str]
    groups: list[list[int]]  # model class indices per target
    label_lookup: dict[str, str]  # normalised dataset label -> target class
    melanoma_class: str | None

    def matrix(self, n_model_classes: int) -> np.ndarray:
        """[C_model, C_target] 0/1 matrix: mapped_probs = probs @ matrix."""
        m = np.zeros((n_model_classes, len(self.target_classes)))
        for t, group in enumerate(self.groups):
            m[group, t] = 1.0
        return m


def normalise_label(label: str) -> str:
    """Comparison key of a label: lower case, '_' and '-' as spaces, runs of spaces collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(label))).strip().lower()


PRESETS: dict[str, LabelMap] = {
    "isic2018": LabelMap(
        "isic2018",
        {"MEL": ("melanoma", "mel"), "NV": ("nevus", "nv"), "BCC": ("basal cell carcinoma", "bcc"),
         "AKIEC": ("actinic keratosis", "squamous cell carcinoma", "akiec"),
         "BKL": ("pigmented benign keratosis", "seborrheic keratosis", "bkl"),
         "DF": ("dermatofibroma", "df"), "VASC": ("vascular lesion", "vasc")},
        {dx: dx.upper() for dx in HAM_DX},  # HAM10000 dx codes: mel -> MEL, ...
        "MEL",
        "ISIC 2018 Task 3 / HAM10000 classes; AKIEC = actinic keratosis + squamous cell carcinoma (in situ), "
        "BKL = pigmented benign keratosis + seborrheic keratosis.",
    ),
    "isic2019": LabelMap(
        "isic2019",
        {"MEL": ("melanoma", "mel"), "NV": ("nevus", "nv"), "BCC": ("basal cell carcinoma", "bcc"),
         "AK": ("actinic keratosis",), "BKL": ("pigmented benign keratosis", "seborrheic keratosis", "bkl"),
         "DF": ("dermatofibroma", "df"), "VASC": ("vascular lesion", "vasc"), "SCC": ("squamous cell carcinoma",)},
        {dx: dx.upper() for dx in HAM_DX if dx != "akiec"},  # HAM10000 akiec mixes AK and SCC: left uncovered
        "MEL",
        "ISIC 2019 classes (BCN20000, HAM10000, MSK: several clinics); BKL = pigmented benign keratosis + "
        "seborrheic keratosis. Needs a model with separate actinic keratosis and squamous cell carcinoma classes "
        "(the 9-class models).",
    ),
    "isic2017": LabelMap(
        "isic2017",
        {"melanoma": ("melanoma", "mel"), "seborrheic keratosis": ("seborrheic keratosis",),
         "nevus": ("nevus", "nv"), "other": (WILDCARD,)},
        {"mel": "melanoma", "nv": "nevus", "sk": "seborrheic keratosis",
         "bcc": "other", "akiec": "other", "df": "other", "vasc": "other"},
        "melanoma",
        "ISIC 2017 classes; the model's other classes are summed into an explicit 'other' bucket (an image "
        "predicted 'other' counts as an error for the three ISIC 2017 classes). HAM10000 'bkl' mixes seborrheic "
        "keratosis with other keratoses, so it stays uncovered and is reported.",
    ),
    "binary": LabelMap(
        "binary",
        {"melanoma": ("melanoma", "mel"), "other": (WILDCARD,)},
        # HAM10000 codes AND the full lesion names, so a model with HAM10000 class codes can score a folder
        # of 9-class names ("nevus") and the other way round
        {"mel": "melanoma", **{key: "other" for dx, full in HAM_DX.items() if dx != "mel" for key in (dx, full)},
         "seborrheic keratosis": "other", "squamous cell carcinoma": "other", "ak": "other", "scc": "other",
         **{name: "other" for name in _ISIC2020_BENIGN}},
        "melanoma",
        "Melanoma vs every other lesion class (probabilities of all non-melanoma classes summed).",
    ),
}


# ------------------------------------------------------------------------------------------------- loading


def load_label_map(spec) -> LabelMap:
    """A LabelMap from a preset name, a YAML file path, a dict in the YAML layout, or a LabelMap (returned)."""
    if isinstance(spec, LabelMap):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec, "custom")
    key = str(spec)
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    path = Path(key).expanduser()
    if not path.is_file():
        raise ConfigError(f"label map {key!r}: not a preset ({', '.join(PRESETS)}) and no such YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read label map: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a label map is a mapping 'target class: [model classes]'")
    return _from_dict(raw, path.name)


def _from_dict(raw: dict, name: str) -> LabelMap:
    """Parse the YAML layout: target -> list of model classes, plus optional dataset_labels / melanoma_class."""
    raw = dict(raw)
    dataset_labels = raw.pop("dataset_labels", None) or {}
    melanoma_class = raw.pop("melanoma_class", None)
    description = str(raw.pop("description", ""))
    targets = {}
    for target, members in raw.items():
        members = [members] if isinstance(members, str) else members
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ConfigError(f"label map {name}: target {target!r} needs a list of model class names")
        targets[str(target)] = tuple(members)
    if not targets:
        raise ConfigError(f"label map {name}: no target classes")
    if not isinstance(dataset_labels, dict):
        raise ConfigError(f"label map {name}: dataset_labels must map dataset labels to target classes")
    bad = sorted({str(t) for t in dataset_labels.values()} - set(targets))
    if bad:
        raise ConfigError(f"label map {name}: dataset_labels point to unknown target classes: {', '.join(bad)}")
    if melanoma_class is not None and melanoma_class not in targets:
        raise ConfigError(f"label map {name}: melanoma_class {melanoma_class!r} is not a target class")
    return LabelMap(name, targets, {str(k): str(v) for k, v in dataset_labels.items()}, melanoma_class, description)


# ----------------------------------------------------------------------------------------------- resolution


def _claim_model_classes(lmap: LabelMap, model_classes: list[str]) -> list[list[int]]:
    """Model class indices per target ('*' takes the unclaimed ones); ConfigError on double or no claim."""
    index = {normalise_label(c): i for i, c in enumerate(model_classes)}
    groups, owner = [], {}
    for target, members in lmap.targets.items():
        group = [index[normalise_label(m)] for m in members if normalise_label(m) in index]
        for i in group:
            if i in owner and owner[i] != target:
                raise ConfigError(f"label map {lmap.name}: model class {model_classes[i]!r} is listed under both "
                                  f"{owner[i]!r} and {target!r}")
            owner[i] = target
        groups.append(sorted(set(group)))
    rest = [i for i in range(len(model_classes)) if i not in owner]
    wild = [t for t, (target, members) in enumerate(lmap.targets.items()) if WILDCARD in members]
    if len(wild) > 1:
        raise ConfigError(f"label map {lmap.name}: only one target may use '*'")
    if wild:
        groups[wild[0]] = sorted(groups[wild[0]] + rest)
    elif rest:
        raise ConfigError(f"label map {lmap.name}: model classes {', '.join(model_classes[i] for i in rest)} are "
                          f"in no target (their probability would vanish); list them or add a '*' target")
    empty = [t for t, g in zip(lmap.targets, groups) if not g]
    if empty:
        raise ConfigError(f"label map {lmap.name}: target(s) {', '.join(empty)} match none of the model's "
                          f"classes ({', '.join(model_classes)})")
    return groups


def resolve_label_map(spec, model_classes, model_melanoma_class: str | None = "melanoma") -> ResolvedLabelMap:
    """Bind a label map (preset name, YAML path, dict, LabelMap; None = identity) to a model's class list."""
    model_classes = list(model_classes)
    if spec is None:
        return identity_map(model_classes, model_melanoma_class)
    if isinstance(spec, ResolvedLabelMap):
        return spec
    lmap = load_label_map(spec)
    groups = _claim_model_classes(lmap, model_classes)
    targets = list(lmap.targets)
    lookup = {}
    for target, group in zip(targets, groups):
        lookup.update({normalise_label(model_classes[i]): target for i in group})
        lookup.update({normalise_label(m): target for m in lmap.targets[target] if m != WILDCARD})
        lookup[normalise_label(target)] = target
    lookup.update({normalise_label(k): v for k, v in lmap.dataset_labels.items()})  # explicit entries win
    melanoma = lmap.melanoma_class
    if melanoma is None and model_melanoma_class in model_classes:
        mel_index = model_classes.index(model_melanoma_class)
        melanoma = next(t for t, g in zip(targets, groups) if mel_index in g)
    return ResolvedLabelMap(lmap.name, targets, groups, lookup, melanoma)


def identity_map(model_classes, melanoma_class: str | None = "melanoma") -> ResolvedLabelMap:
    """No label map: targets are the model's classes; a dataset label is covered when it names one of them."""
    model_classes = list(model_classes)
    return ResolvedLabelMap("identity", model_classes, [[i] for i in range(len(model_classes))],
                            {normalise_label(c): c for c in model_classes},
                            melanoma_class if melanoma_class in model_classes else None)


# ------------------------------------------------------------------------------------------------ applying


def apply_label_map(probs, model_classes, mapping) -> tuple[np.ndarray, list[str]]:
    """Sum model-class probabilities into target classes: (mapped_probs [N, T], target_classes)."""
    resolved = resolve_label_map(mapping, model_classes)
    probs = np.asarray(probs, dtype=np.float64)
    return probs @ resolved.matrix(len(list(model_classes))), list(resolved.target_classes)


def map_dataset_labels(labels, resolved: ResolvedLabelMap) -> tuple[np.ndarray, dict[str, int]]:
    """Target index of each dataset label (-1 where the map does not cover it) and {uncovered label: count}."""
    index = {t: i for i, t in enumerate(resolved.target_classes)}
    targets, uncovered = [], Counter()
    for label in labels:
        target = None if label is None else resolved.label_lookup.get(normalise_label(label))
        if target is None:
            uncovered["(no label)" if label is None else str(label)] += 1
        targets.append(-1 if target is None else index[target])
    return np.array(targets, dtype=np.int64), dict(sorted(uncovered.items()))
