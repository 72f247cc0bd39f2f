"""Dataset layer: discovery of the supported layouts, image loading, scanning, leak-free splits.

Public API (see docs/DESIGN.md): discover, load_image, scan, audit, format_audit, prepare_training_table,
stratified_group_split, stratified_group_kfold, Sample, DatasetTable (+ ScanEntry).
Image decoding lives in images.py and the audit report in audit.py; both are re-exported here.
"""

from __future__ import annotations

import warnings

import csv
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from melanoma.audit import ISIC_ID, audit, connected_components, format_audit, hamming_pairs
from melanoma.errors import ConfigError, DataError
from melanoma.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ScanEntry, is_image_file, load_image,
                             phashes_as_uint64, scan_paths)

__all__ = ["Sample", "DatasetTable", "ScanEntry", "discover", "load_image", "scan", "audit", "format_audit",
           "prepare_training_table", "stratified_group_split", "stratified_group_kfold", "CONFLICT_POLICIES"]

HAM_METADATA = "HAM10000_metadata.csv"
AUGMENTED_DIR = "output"  # Augmentor writes its copies to <class folder>/output/
# Augmentor names a copy "<class>_original_<source file name>_<uuid4>.<ext>"
_AUGMENTED_NAME = re.compile(
    r"^.+?_original_(?P<source>.+)_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.\w+$", re.I)
CONFLICT_POLICIES = ("drop", "keep", "first", "reference")


@dataclass(frozen=True)
class Sample:
    """One image: absolute path, class name (None if unlabelled), leak group, source image for a copy, and origin
    (None: the primary dataset; else the extra dataset it comes from, which only ever trains, see sources.py).
    A coarse sample (`allowed` set, extra sources with --coarse-labels) trains and is sampled under `label`, its
    loss counts any of `allowed`, and it never validates."""

    path: Path
    label: str | None
    group: str
    source: Path | None = None
    origin: str | None = None
    allowed: tuple[str, ...] | None = None  # a coarse label: the classes it allows (`label` = the first of them)
    also_in: str | None = None  # a primary image whose picture or lesion an extra source holds too: that origin


@dataclass
class DatasetTable:
    """The images of one dataset with their labels; `classes` is the sorted list of class names."""

    root: Path
    kind: str  # "folders" | "manifest" | "isic-csv" | "ham10000" | "files"
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def label_indices(self) -> np.ndarray:
        """Index of each sample's label in `classes` (int64). DataError if a sample is unlabelled."""
        index = {name: i for i, name in enumerate(self.classes)}
        try:
            return np.array([index[s.label] for s in self.samples], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{self.root}: sample label {exc.args[0]!r} is not one of the classes") from None

    def subset(self, indices) -> DatasetTable:
        """A table with the samples at `indices` (same root, kind and class list, so label indices still match)."""
        return DatasetTable(self.root, self.kind, list(self.classes), [self.samples[int(i)] for i in indices])


# ---------------------------------------------------------------- discovery

def discover(path) -> DatasetTable:
    """Read a dataset in any supported layout and return its table (samples sorted by path).

    Accepts (a dataset CSV inside a given folder wins over its sub-folders): a folder of class folders
    (optionally with Augmentor `output/` copies inside them); a CSV manifest
    `image,label[,group,source]` (paths relative to the CSV); an ISIC ground-truth CSV with one-hot class columns
    (images beside it or in a sibling folder); an ISIC 2017 or ISIC 2020 ground-truth CSV; a HAM10000 folder or
    its `HAM10000_metadata.csv`; a plain folder
    of images or a single image (kind "files", label None). Raises DataError with a one-line message.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return _discover_csv(root)
        if is_image_file(root):
            return DatasetTable(root.parent, "files", [], [Sample(root, None, root.name)])
        raise DataError(f"{root}: not a dataset (expected a folder, a .csv file or an image)")
    if (root / HAM_METADATA).is_file():
        return _discover_ham(root / HAM_METADATA)
    return _discover_folder(root)


def _discover_folder(root: Path) -> DatasetTable:
    """A dataset CSV in the folder (it says more than folder names), else class folders, else loose images."""
    for csv_path in sorted(root.glob("*.csv")):
        try:
            return _discover_csv(csv_path)
        except DataError:
            continue  # not a dataset CSV (e.g. a predictions file): look at the folders
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
    class_dirs = [d for d in subdirs if _has_images(d)]
    if class_dirs and loose:
        raise DataError(f"{root}: has both loose images ({loose[0].name}...) and class folders; "
                        "move the images into class folders")
    if class_dirs:
        return _discover_class_folders(root, subdirs)
    if not loose:
        raise DataError(f"{root}: no images, class folders or dataset CSV found")
    return DatasetTable(root, "files", [], [Sample(p, None, p.name) for p in loose])


def _has_images(folder: Path) -> bool:
    return any(is_image_file(p) for p in folder.rglob("*"))


def _discover_class_folders(root: Path, class_dirs: list[Path]) -> DatasetTable:
    samples: list[Sample] = []
    for class_dir in class_dirs:
        originals = sorted(p for p in class_dir.iterdir() if p.is_file() and is_image_file(p))
        copies = _augmented_copies(root, class_dir)
        if not originals and not copies:
            raise DataError(f"{class_dir}: empty class folder (no {'/'.join(sorted(IMAGE_EXTENSIONS))} images)")
        label = class_dir.name
        samples += [Sample(p, label, p.relative_to(root).as_posix()) for p in originals]
        samples += [replace(c, label=label) for c in copies]
    return DatasetTable(root, "folders", sorted({s.label for s in samples}), sorted(samples, key=_sort_key))


def _augmented_copies(root: Path, class_dir: Path) -> list[Sample]:
    """Samples for the Augmentor copies in <class_dir>/output/, grouped with the image they were made from."""
    out_dir = class_dir / AUGMENTED_DIR
    if not out_dir.is_dir():
        return []
    copies = []
    for p in sorted(q for q in out_dir.rglob("*") if q.is_file() and is_image_file(q)):
        match = _AUGMENTED_NAME.match(p.name)
        if not match:
            raise DataError(f"{p}: file in an augmentation output/ folder whose name does not say its source image "
                            "(expected <class>_original_<source file>_<uuid>.<ext>)")
        # The source may be missing from the class folder; its would-be path still keeps its copies together.
        source = class_dir / match["source"]
        copies.append(Sample(p, None, source.relative_to(root).as_posix(), source=source))
    return copies


def _sort_key(sample: Sample):
    return str(sample.path)


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = [h.strip() for h in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read CSV ({exc})") from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    if not rows:
        raise DataError(f"{csv_path}: CSV has no data rows")
    return header, rows


def _discover_csv(csv_path: Path) -> DatasetTable:
    """Dispatch on the CSV header: HAM10000 metadata, image/label manifest, or ISIC one-hot ground truth."""
    header, rows = _read_csv(csv_path)
    columns = set(header)
    if {"lesion_id", "image_id", "dx"} <= columns:
        return _discover_ham(csv_path, header_rows=(header, rows))
    if {"image", "label"} <= columns:
        return _discover_manifest(csv_path, rows)
    if set(ISIC2017_COLUMNS) <= columns:
        return _discover_isic2017(csv_path, rows)
    if set(ISIC2020_COLUMNS) <= columns:
        return _discover_isic2020(csv_path, rows)
    if "image" in columns and len(header) > 2 and _is_one_hot(header, rows):
        return _discover_isic_csv(csv_path, header, rows)
    raise DataError(f"{csv_path}: CSV lacks the needed columns: expected image,label (manifest), "
                    "image + one-hot class columns (ISIC ground truth), image_id,melanoma,seborrheic_keratosis "
                    "(ISIC 2017), image_name,target (ISIC 2020) or lesion_id,image_id,dx (HAM10000); "
                    f"found {','.join(header)}")


def _discover_manifest(csv_path: Path, rows: list[dict]) -> DatasetTable:
    samples = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        if not row["image"] or not row["label"]:
            raise DataError(f"{csv_path}: line {n}: empty image or label")
        path = (csv_path.parent / row["image"]).resolve()
        if not path.is_file():
            raise DataError(f"{csv_path}: line {n}: missing file {row['image']}")
        source = (csv_path.parent / row["source"]).resolve() if row.get("source") else None
        group = row.get("group") or row.get("source") or row["image"]  # a copy without a group joins its source
        samples.append(Sample(path, row["label"], group, source))
    return DatasetTable(csv_path, "manifest", sorted({s.label for s in samples}), sorted(samples, key=_sort_key))


def _is_one_hot(header: list[str], rows: list[dict]) -> bool:
    try:
        return all(float(row[c] or "nan") in (0.0, 1.0) for row in rows for c in header if c != "image")
    except ValueError:
        return False


def _discover_isic_csv(csv_path: Path, header: list[str], rows: list[dict]) -> DatasetTable:
    class_cols = [c for c in header if c != "image"]
    images = _find_image_index(csv_path, [r["image"] for r in rows])
    samples = []
    for n, row in enumerate(rows, start=2):
        marked = [c for c in class_cols if float(row[c]) == 1.0]
        if len(marked) != 1:
            raise DataError(f"{csv_path}: line {n}: image {row['image']} has {len(marked)} classes marked "
                            f"({','.join(marked) or 'none'}); expected exactly one")
        samples.append(Sample(images[row["image"]], marked[0], row["image"]))
    # Class columns never marked (e.g. ISIC 2019 "UNK") are not classes of this data.
    return DatasetTable(csv_path, "isic-csv", sorted({s.label for s in samples}), sorted(samples, key=_sort_key))


ISIC2017_COLUMNS = ("image_id", "melanoma", "seborrheic_keratosis")


def _discover_isic2017(csv_path: Path, rows: list[dict]) -> DatasetTable:
    """ISIC 2017 Part 3 ground truth: two 0/1 columns; neither marked means nevus."""
    images = _find_image_index(csv_path, [r["image_id"] for r in rows])
    samples = []
    for n, row in enumerate(rows, start=2):
        try:
            mel, sk = (float(row["melanoma"]), float(row["seborrheic_keratosis"]))
        except ValueError:
            raise DataError(f"{csv_path}: line {n}: melanoma / seborrheic_keratosis must be 0 or 1") from None
        if mel not in (0.0, 1.0) or sk not in (0.0, 1.0) or mel + sk > 1:
            raise DataError(f"{csv_path}: line {n}: image {row['image_id']} needs melanoma, seborrheic_keratosis "
                            f"= 0 or 1 and at most one of them 1; found {row['melanoma']},{row['seborrheic_keratosis']}")
        label = "melanoma" if mel else "seborrheic keratosis" if sk else "nevus"
        samples.append(Sample(images[row["image_id"]], label, row["image_id"]))
    return DatasetTable(csv_path, "isic-csv", sorted({s.label for s in samples}), sorted(samples, key=_sort_key))


ISIC2020_COLUMNS = ("image_name", "target")


def _isic2020_label(row: dict) -> str:
    """target 1 = melanoma (the only malignant class of ISIC 2020); a benign image keeps its diagnosis when one is
    given, else "benign" (ISIC 2020 calls most benign lesions "unknown")."""
    if row["target"] == "1":
        return "melanoma"
    diagnosis = row.get("diagnosis", "")
    return diagnosis if diagnosis and diagnosis.lower() != "unknown" else "benign"


def _discover_isic2020(csv_path: Path, rows: list[dict]) -> DatasetTable:
    """ISIC 2020 (SIIM-ISIC) ground truth: image_name, target 0/1 [, diagnosis, patient_id, lesion_id]. Images of
    one patient share a group (patient_id, else lesion_id), so a split never puts a patient on both sides."""
    images = _find_image_index(csv_path, [r["image_name"] for r in rows])
    samples = []
    for n, row in enumerate(rows, start=2):
        if row["target"] not in ("0", "1"):
            raise DataError(f"{csv_path}: line {n}: image {row['image_name']} has target {row['target']!r}; "
                            "expected 0 or 1")
        if row["target"] == "0" and row.get("diagnosis", "").lower() == "melanoma":
            raise DataError(f"{csv_path}: line {n}: image {row['image_name']} has diagnosis melanoma but target 0")
        group = row.get("patient_id") or row.get("lesion_id") or row["image_name"]
        samples.append(Sample(images[row["image_name"]], _isic2020_label(row), group))
    return DatasetTable(csv_path, "isic-csv", sorted({s.label for s in samples}), sorted(samples, key=_sort_key))


def _find_image_index(csv_path: Path, stems: list[str]) -> dict[str, Path]:
    """Map each image id of a CSV to its file: beside the CSV, in `images/`, or in any sibling folder."""
    folders = [csv_path.parent] + sorted(p for p in csv_path.parent.iterdir() if p.is_dir())
    index: dict[str, Path] = {}
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if is_image_file(p):
                index.setdefault(p.stem, p)
                index.setdefault(p.name, p)  # manifests sometimes keep the extension
    missing = [s for s in stems if s not in index]
    if missing:
        raise DataError(f"{csv_path}: {len(missing)} image(s) not found beside the CSV or in a sibling folder, "
                        f"e.g. {missing[0]}")
    return index


def _discover_ham(csv_path: Path, header_rows=None) -> DatasetTable:
    header, rows = header_rows or _read_csv(csv_path)
    if not {"lesion_id", "image_id", "dx"} <= set(header):
        raise DataError(f"{csv_path}: HAM10000 metadata needs columns lesion_id,image_id,dx; found {','.join(header)}")
    images = _find_image_index(csv_path, [r["image_id"] for r in rows])
    samples = []
    for n, row in enumerate(rows, start=2):
        if not row["dx"] or not row["lesion_id"]:
            raise DataError(f"{csv_path}: line {n}: empty dx or lesion_id for {row['image_id']}")
        samples.append(Sample(images[row["image_id"]], row["dx"], row["lesion_id"]))
    return DatasetTable(csv_path.parent, "ham10000", sorted({s.label for s in samples}),
                        sorted(samples, key=_sort_key))


# ---------------------------------------------------------------- scanning

def scan(table: DatasetTable, max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int | None = None
         ) -> list[ScanEntry]:
    """Decode every image of `table` once (process pool, default os.cpu_count()); one ScanEntry per sample,
    in sample order, with pixel hash, phash, size, mode, file size, or the error reason."""
    return scan_paths([s.path for s in table.samples], max_pixels=max_pixels, workers=workers)


# ---------------------------------------------------------------- leak-free training table

def read_lesion_ids(csv_path) -> dict[str, str]:
    """{ISIC id: lesion_id} from a HAM10000-style metadata CSV (columns image_id, lesion_id)."""
    header, rows = _read_csv(Path(csv_path))
    if not {"image_id", "lesion_id"} <= set(header):
        raise DataError(f"{csv_path}: lesion metadata needs the columns image_id and lesion_id")
    return {Path(r["image_id"]).stem: r["lesion_id"] for r in rows if r.get("image_id") and r.get("lesion_id")}


def prepare_training_table(table: DatasetTable, conflict_policy: str = "drop",
                           max_pixels: int | None = DEFAULT_MAX_PIXELS, workers: int | None = None,
                           scan_entries: list[ScanEntry] | None = None, near_distance: int | None = 4,
                           lesion_ids: dict[str, str] | None = None, extras=()) -> tuple[DatasetTable, dict]:
    """Make a table safe to split: drop unreadable files, merge leak groups, resolve conflicting labels.

    Groups are merged (connected components) over the existing `group` (lesion_id, augmented copy -> source),
    identical decoded pixels, near-identical pictures (phash Hamming distance <= near_distance; None: off) and,
    with `lesion_ids` ({ISIC id: lesion_id}, see `read_lesion_ids`), other photos of the same lesion, so every
    picture of a lesion ends up on one side of a split. A merged group whose
    images carry different labels is handled by `conflict_policy`: "drop" removes it, "keep" keeps every copy,
    "first" keeps the copies with the first label in sorted class order, "reference" keeps the copies whose label
    the `extras` (sources.ExtraSource list) in the same group allow and drops the group when they allow none or
    several (it also drops a one-label group its references contradict). Extra samples join the table (origin set)
    unless they share a group with a primary one. `scan_entries`: a scan already made of `table`'s samples then the
    extras' samples, in order (None: scan here). Returns (table, JSON-able summary).
    """
    if conflict_policy not in CONFLICT_POLICIES:
        raise ConfigError(f"conflict policy {conflict_policy!r}: expected one of {', '.join(CONFLICT_POLICIES)}")
    everything = table.samples + [s for src in extras for s in src.samples]
    entries = scan_entries if scan_entries is not None else scan_paths(
        [s.path for s in everything], max_pixels=max_pixels, workers=workers)
    if len(entries) != len(everything):
        raise DataError(f"{table.root}: {len(entries)} scan entries for {len(everything)} samples")
    unreadable = [{"path": str(s.path), "reason": e.error} for s, e in zip(everything, entries) if e.error]
    good = [i for i, e in enumerate(entries) if not e.error]
    samples = [everything[i] for i in good]
    hashes = [entries[i].pixel_hash for i in good]
    near_pairs = _near_pairs([entries[i] for i in good], near_distance)
    lesions = _lesion_keys(samples, lesion_ids or {})
    merged = _merge_groups(samples, hashes, near_pairs, lesions)
    primary = [s for s in merged if s.origin is None]
    extra = [s for s in merged if s.origin is not None]
    refs = reference_classes(extra, {p: c for src in extras for p, c in src.compatible.items()})
    kept, conflicts = _apply_conflict_policy(primary, table.classes, conflict_policy, refs)
    classes = sorted({s.label for s in kept})
    extra_kept, extra_removed = _extras_to_train(extra, primary, classes)
    kept = _mark_shared(kept, extra)
    summary = {
        "policy": conflict_policy,
        "n_images_in": len(table),
        "n_images": len(kept),
        "counts": {c: sum(s.label == c for s in kept) for c in classes},
        "n_unreadable": len(unreadable),
        "unreadable": unreadable,
        "n_exact_duplicate_groups": sum(n > 1 for n in Counter(hashes).values()),
        "near_distance": near_distance,
        "n_near_duplicate_pairs": len(near_pairs),
        "n_images_with_lesion_id": sum(k is not None for k in lesions),
        "n_lesions_with_several_images": sum(n > 1 for k, n in Counter(lesions).items() if k is not None),
        "n_groups": len({s.group for s in kept}),
        **conflicts,
        "n_images_dropped": len(table) - len(kept),
        "classes_removed": [c for c in table.classes if c not in classes],
    }
    if extras:
        summary["extra"] = _extra_summary(extras, extra_kept, extra_removed, classes)
    return DatasetTable(table.root, table.kind, classes, kept + extra_kept), summary


def _mark_shared(primary: list[Sample], extra: list[Sample]) -> list[Sample]:
    """Primary samples whose group (picture, near-duplicate or lesion) an extra source also holds, marked with
    that source (`also_in`): leaving the primary source out must not validate on another source's images."""
    holders = {s.group: s.origin for s in extra}
    return [replace(s, also_in=holders[s.group]) if s.group in holders else s for s in primary]


def _extras_to_train(extra: list[Sample], primary: list[Sample], classes: list[str]) -> tuple[list[Sample], dict]:
    """Extra samples that may train: not sharing a group with a primary image (extras_for_training)
    and labelled with a class the primary data still has. Returns (kept, {reason: count removed})."""
    kept, removed = extras_for_training(extra, {s.group for s in primary})
    in_classes = [c for c in map(partial(_within_classes, classes=classes), kept) if c is not None]
    if len(kept) > len(in_classes):
        removed["class_not_in_primary"] = len(kept) - len(in_classes)
    return in_classes, removed


def _within_classes(sample: Sample, classes: list[str]) -> Sample | None:
    """The sample with its label (a coarse sample: the classes it allows) restricted to `classes`; None if none
    is left. A coarse label left with one class becomes that fine label."""
    allowed = [c for c in (sample.allowed or (sample.label,)) if c in classes]
    if not allowed:
        return None
    return replace(sample, label=allowed[0], allowed=tuple(allowed) if len(allowed) > 1 else None)


def _extra_summary(extras, kept: list[Sample], removed: dict, classes: list[str]) -> dict:
    return {"sources": [src.summary for src in extras], "n_images": len(kept),
            "counts": {c: sum(s.label == c for s in kept) for c in classes}, "removed": removed}


def _near_pairs(entries: list[ScanEntry], near_distance: int | None) -> list[tuple[int, int]]:
    """Index pairs of near-identical pictures (phash distance <= near_distance, exact copies included)."""
    if near_distance is None or len(entries) < 2:
        return []
    i, j, _ = hamming_pairs(phashes_as_uint64(entries), max_distance=near_distance)
    return list(zip(i.tolist(), j.tolist()))


def _lesion_keys(samples: list[Sample], lesion_ids: dict[str, str]) -> list[str | None]:
    """The lesion_id of each sample whose file name carries a known ISIC id, else None."""
    keys = []
    for s in samples:
        found = [lesion_ids[isic] for isic in ISIC_ID.findall(s.path.stem) if isic in lesion_ids]
        keys.append(found[0] if found else None)
    return keys


def _merge_groups(samples: list[Sample], hashes: list[str], near_pairs=(), lesions=None) -> list[Sample]:
    """Give samples linked by a group, a pixel hash, a near-duplicate pair or a lesion id one group name (the
    smallest of the merged names)."""
    keys = {}
    edges = list(near_pairs)
    for i, (s, h) in enumerate(zip(samples, hashes)):
        lesion = lesions[i] if lesions else None
        for key in (("group", s.group), ("pixels", h), ("lesion", lesion)):
            if key[1] is None:
                continue
            node = keys.setdefault(key, len(samples) + len(keys))
            edges.append((i, node))
    component = connected_components(len(samples) + len(keys), edges)
    name: dict[int, str] = {}
    for i, s in enumerate(samples):
        c = component[i]
        name[c] = min(name.get(c, s.group), s.group)
    return [replace(s, group=name[component[i]]) for i, s in enumerate(samples)]


def _apply_conflict_policy(samples: list[Sample], classes: list[str], policy: str, refs: dict | None = None
                           ) -> tuple[list[Sample], dict]:
    """Returns (kept samples, counts): groups with several labels and their images, and with reference labels
    (`refs`: {group: allowed classes}) the groups they settle and the one-label groups they contradict."""
    refs = refs or {}
    labels_by_group = group_labels(samples)
    conflicts = {g for g, labels in labels_by_group.items() if len(labels) > 1}
    order = {c: i for i, c in enumerate(classes)}
    # the label each group keeps (None: dropped); a group without references keeps its label unless conflicting
    chosen = {g: (min(ls, key=lambda c: order.get(c, len(order))) if policy == "first" else
                  next(iter(ls)) if len(ls) == 1 else None) for g, ls in labels_by_group.items()}
    settled = contradicted = 0
    for g, allowed in refs.items():
        if g not in labels_by_group:
            continue
        candidates = labels_by_group[g] & allowed
        contradicted += len(labels_by_group[g]) == 1 and not candidates
        if policy == "reference":
            chosen[g] = next(iter(candidates)) if len(candidates) == 1 else None
            settled += g in conflicts and chosen[g] is not None
    if policy == "keep":
        kept = samples
    else:
        kept = [s for s in samples if s.label == chosen[s.group]]
    counts = {"n_conflict_groups": len(conflicts), "n_conflict_images": sum(s.group in conflicts for s in samples)}
    if refs:
        counts.update(n_conflict_groups_settled_by_reference=settled,
                      n_groups_contradicted_by_reference=contradicted)
    return kept, counts


# ---------------------------------------------------------------- extra sources (sources.py joins them)

def group_labels(samples) -> dict[str, set]:
    """{group: the set of labels its samples carry}."""
    out: dict[str, set] = {}
    for s in samples:
        out.setdefault(s.group, set()).add(s.label)
    return out


def reference_classes(extra_samples, compatible: dict) -> dict[str, frozenset]:
    """{group: classes every extra sample of that group allows} (intersection of their mapped labels)."""
    refs: dict[str, frozenset] = {}
    for s in extra_samples:
        allowed = frozenset(compatible.get(s.path, (s.label,)))
        refs[s.group] = refs[s.group] & allowed if s.group in refs else allowed
    return refs


def extras_for_training(extra_samples, primary_groups: set) -> tuple[list, dict]:
    """Extra samples that may train: a training target, no primary sample in their group, no conflict inside
    their own group. Returns (samples, counts of what was removed and why)."""
    labels = group_labels(extra_samples)
    kept, removed = [], Counter()
    for s in extra_samples:
        if s.group in primary_groups:
            removed["shares_a_group_with_primary"] += 1
        elif s.label is None:
            removed["reference_only"] += 1
        elif len(labels[s.group]) > 1:
            removed["conflicting_labels"] += 1
        else:
            kept.append(s)
    return kept, dict(removed)


# ---------------------------------------------------------------- splits

class SparseClassWarning(UserWarning):
    """A class has fewer independent groups than folds (it cannot be in every validation fold)."""


def sparse_classes(table: DatasetTable, k: int) -> dict[str, int]:
    """Classes with fewer independent groups than `k` folds: {class: number of groups}. Such a class can only
    appear in the validation side of some folds (e.g. seborrheic keratosis of the ISIC 9-class Train split keeps
    2 images once its 75 copies filed under melanoma are dropped)."""
    y = table.label_indices()
    groups = np.unique([s.group for s in table.samples], return_inverse=True)[1]
    counts = {name: len(np.unique(groups[y == ci])) for ci, name in enumerate(table.classes)}
    return {name: n for name, n in counts.items() if 0 < n < k}


def stratified_group_kfold(table: DatasetTable, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds (train_idx, val_idx) stratified by label, with every `group` on one side only (sklearn
    StratifiedGroupKFold, shuffled with `seed`). A class with fewer groups than k is warned about (see
    `sparse_classes`), not refused; fewer groups in total than k is a DataError."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ConfigError(f"number of folds {k}: need at least 2")
    y = table.label_indices()
    groups = np.unique([s.group for s in table.samples], return_inverse=True)[1]
    if groups.size == 0 or groups.max() + 1 < k:
        raise DataError(f"{table.root}: only {0 if groups.size == 0 else groups.max() + 1} independent "
                        f"group(s) (images/lesions); need at least {k} for {k} folds")
    for name, n_groups in sparse_classes(table, k).items():
        warnings.warn(f"class {name!r} has only {n_groups} independent group(s) (images/lesions): it appears in "
                      f"the validation side of at most {n_groups} of {k} folds and its metrics rest on "
                      f"{n_groups} group(s)", SparseClassWarning, stacklevel=2)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    x = np.zeros((len(y), 1))
    with warnings.catch_warnings():  # sklearn repeats our warning in its own words
        warnings.simplefilter("ignore", UserWarning)
        return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in splitter.split(x, y, groups)]


def stratified_group_split(table: DatasetTable, val_fraction: float, seed: int = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """One (train_idx, val_idx) split: fold 0 of round(1/val_fraction) stratified group folds."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"validation fraction {val_fraction}: expected a number between 0 and 1")
    k = max(2, round(1.0 / val_fraction))
    return stratified_group_kfold(table, k, seed)[0]
