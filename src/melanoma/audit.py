"""Dataset audit: class counts, sizes, unreadable files, exact and near duplicates, label conflicts, overlap.

`data.py` re-exports `audit` and `format_audit`. This module must not import melanoma.data at import time
(data imports it); tables are used through their attributes only.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as _scipy_components

from melanoma.images import DEFAULT_MAX_PIXELS, phashes_as_uint64, scan_paths

ISIC_ID = re.compile(r"ISIC_\d{7}")
_CHUNK_ROWS = 512  # rows of the pairwise distance matrix per step: 512 x 10,015 uint64 = 41 MB
LIST_LIMIT = 10     # entries shown per list in the terminal report
# Across two sets the same picture is rarely pixel-identical (HAM10000 is 200x150, the 9-class copies 180x180
# resized from the same originals). Measured on the 1,381 ISIC ids present in both: phash distance 0 for 1,026,
# 2 for 346, 4 for 9; at distance 4 already 57 pairs with DIFFERENT ids (other lesions) match as well, at 2 only
# 11. So content matching across sets uses distance <= 2, and the ISIC id in the file name catches the rest.
CROSS_SET_PHASH_DISTANCE = 2


def connected_components(n_nodes: int, edges) -> np.ndarray:
    """Component label (int) of each node of an undirected graph given as (a, b) index pairs (scipy)."""
    edges = np.asarray(list(edges), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return _scipy_components(graph, directed=False)[1]


def hamming_pairs(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = 4):
    """Pairs (i, j, distance) with Hamming distance <= max_distance between uint64 hashes a[i] and b[j].

    Without `b`, compares `a` with itself and returns each pair once (i < j). Vectorised XOR + np.bitwise_count,
    chunked by rows so memory stays at _CHUNK_ROWS x len(b) x 8 bytes.
    """
    same = b is None
    b = a if same else b
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(a), _CHUNK_ROWS):
        dist = np.bitwise_count(a[start:start + _CHUNK_ROWS, None] ^ b[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i += start
        if same:
            keep = j > i
            i, j = i[keep], j[keep]
        found_i.append(i)
        found_j.append(j)
        found_d.append(dist[i - start, j])
    if not found_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(np.int64)


# ---------------------------------------------------------------- the report

def audit(table, against=None, near_distance: int = 4, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          workers: int | None = None, cross_distance: int | None = None) -> dict:
    """Audit a DatasetTable (and optionally its overlap with another) and return a JSON-able report.

    Each image is decoded once. Exact duplicates share the decoded-pixel hash; near duplicates are
    phash-Hamming-distance <= near_distance (pairs that are exact duplicates excluded). With `against`, lists the
    images of `against` that also occur in `table`: same pixels, same ISIC id in the file name, or phash distance
    <= cross_distance (default: min(near_distance, CROSS_SET_PHASH_DISTANCE)). Bad files become entries of
    "unreadable", never exceptions.
    """
    if not 0 <= near_distance <= 64:
        from melanoma.errors import ConfigError
        raise ConfigError(f"near distance {near_distance}: expected 0..64")
    entries = scan_paths([s.path for s in table.samples], max_pixels=max_pixels, workers=workers)
    report = {"data": _describe(table), "near_distance": near_distance}
    report.update(_basic_stats(table, entries))
    ok = [i for i, e in enumerate(entries) if not e.error]
    exact = _exact_groups(table, entries, ok)
    near = _near_groups(table, entries, ok, near_distance)
    report["exact_duplicates"] = _groups_section(exact)
    report["near_duplicates"] = _groups_section(near)
    report["label_conflicts"] = {"exact": _conflicts(exact), "near": _conflicts(near)}
    if against is not None:
        other = scan_paths([s.path for s in against.samples], max_pixels=max_pixels, workers=workers)
        distance = min(near_distance, CROSS_SET_PHASH_DISTANCE) if cross_distance is None else cross_distance
        report["overlap"] = _overlap(table, entries, against, other, distance)
    return report


def find_overlap(table, other, distance: int = CROSS_SET_PHASH_DISTANCE, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 workers: int | None = None) -> dict:
    """The images of `other` that also occur in `table` (same rule as `audit --against`), without the rest of the
    audit; each match carries `index`, the sample's position in `other`."""
    entries = scan_paths([s.path for s in table.samples], max_pixels=max_pixels, workers=workers)
    other_entries = scan_paths([s.path for s in other.samples], max_pixels=max_pixels, workers=workers)
    return _overlap(table, entries, other, other_entries, distance)


def _describe(table) -> dict:
    return {"root": str(table.root), "kind": table.kind, "n_images": len(table), "classes": list(table.classes)}


def _rel(table, path) -> str:
    """Path relative to the dataset folder (root, or the folder of a CSV root) for short, stable names."""
    base = Path(table.root)
    base = base.parent if base.is_file() else base
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _stats(values) -> dict:
    if not values:
        return {}
    arr = np.asarray(values)
    return {"min": int(arr.min()), "median": float(np.median(arr)), "max": int(arr.max())}


def _basic_stats(table, entries) -> dict:
    good = [e for e in entries if not e.error]
    bad = [{"path": _rel(table, s.path), "label": s.label, "reason": e.error}
           for s, e in zip(table.samples, entries) if e.error]
    return {
        "images_per_class": dict(sorted(Counter(s.label for s in table.samples if s.label is not None).items())),
        "n_readable": len(good),
        "sizes": dict(Counter(f"{e.width}x{e.height}" for e in good).most_common()),
        "width": _stats([e.width for e in good]),
        "height": _stats([e.height for e in good]),
        "modes": dict(Counter(e.mode for e in good).most_common()),
        "file_size_bytes": _stats([e.file_size for e in good]),
        "n_unreadable": len(bad),
        "unreadable": bad,
    }


def _group_record(table, members, distance=None) -> dict:
    files = [{"path": _rel(table, table.samples[i].path), "label": table.samples[i].label} for i in members]
    record = {"size": len(files), "classes": sorted({f["label"] for f in files if f["label"] is not None}),
              "files": files}
    if distance is not None:
        record["max_distance"] = int(distance)
    return record


def _sorted_groups(groups: list[dict]) -> list[dict]:
    """Cross-class groups first, then bigger groups first, then by first file: the interesting ones on top."""
    return sorted(groups, key=lambda g: (-len(g["classes"]), -g["size"], g["files"][0]["path"]))


def _exact_groups(table, entries, ok) -> list[dict]:
    by_hash = defaultdict(list)
    for i in ok:
        by_hash[entries[i].pixel_hash].append(i)
    return _sorted_groups([_group_record(table, m) for m in by_hash.values() if len(m) > 1])


def _near_groups(table, entries, ok, near_distance: int) -> list[dict]:
    """Union-find (connected components) of pictures with phash distance <= near_distance, where exact copies
    are collapsed first so a pair of exact duplicates never makes a near group on its own."""
    first_of_hash: dict[str, int] = {}
    copies = defaultdict(list)
    for i in ok:
        rep = first_of_hash.setdefault(entries[i].pixel_hash, i)
        copies[rep].append(i)
    reps = list(copies)
    if len(reps) < 2:
        return []
    a, b, d = hamming_pairs(phashes_as_uint64([entries[i] for i in reps]), max_distance=near_distance)
    if len(a) == 0:
        return []
    component = connected_components(len(reps), zip(a, b))
    max_d = defaultdict(int)
    for x, dist in zip(a, d):
        max_d[component[x]] = max(max_d[component[x]], int(dist))
    members = defaultdict(list)
    for r, c in enumerate(component):
        members[c].append(r)
    groups = [_group_record(table, sorted(i for r in m for i in copies[reps[r]]), max_d[c])
              for c, m in members.items() if len(m) > 1]
    return _sorted_groups(groups)


def _groups_section(groups: list[dict]) -> dict:
    return {"n_groups": len(groups), "n_images": sum(g["size"] for g in groups),
            "n_cross_class_groups": sum(len(g["classes"]) > 1 for g in groups), "groups": groups}


def _conflicts(groups: list[dict]) -> dict:
    spanning = [g for g in groups if len(g["classes"]) > 1]
    pairs = Counter(" / ".join(g["classes"]) for g in spanning)
    return {"n_groups": len(spanning), "n_images": sum(g["size"] for g in spanning),
            "class_pairs": dict(pairs.most_common())}


def _overlap(table, entries, other_table, other_entries, distance: int) -> dict:
    """Images of OTHER that also occur in DATA, by content (exact pixels or phash distance) and by ISIC id."""
    data_ok = [i for i, e in enumerate(entries) if not e.error]
    other_ok = [j for j, e in enumerate(other_entries) if not e.error]
    by_hash = defaultdict(list)
    for i in data_ok:
        by_hash[entries[i].pixel_hash].append(i)
    by_id = defaultdict(list)
    for i, s in enumerate(table.samples):
        for isic in ISIC_ID.findall(Path(s.path).stem):
            by_id[isic].append(i)
    near = defaultdict(dict)  # other index -> {data index: distance}
    if data_ok and other_ok:
        oi, di, dd = hamming_pairs(phashes_as_uint64([other_entries[j] for j in other_ok]),
                                   phashes_as_uint64([entries[i] for i in data_ok]), max_distance=distance)
        for o, d, dist in zip(oi, di, dd):
            near[other_ok[o]][data_ok[d]] = int(dist)
    matches = [_overlap_match(table, other_table, j, other_entries[j], by_hash, by_id, near.get(j, {}))
               for j in range(len(other_table))]
    matches = [m for m in matches if m]
    how = Counter(m["matched_by"] for m in matches)
    id_distances = Counter(_distance_text(other_entries[j], [entries[i] for i in by_id.get(isic, [])])
                           for j, s in enumerate(other_table.samples)
                           for isic in ISIC_ID.findall(Path(s.path).stem)[:1] if isic in by_id)
    return {"against": _describe(other_table), "rule": overlap_rule_text(distance), "phash_distance": distance,
            "n_overlap": len(matches), "matched_by": dict(how.most_common()),
            "same_id_phash_distances": dict(sorted(id_distances.items())),
            "n_label_pairs": dict(Counter(f"{m['label_other']} -> {' / '.join(m['labels_data'])}"
                                          for m in matches).most_common()),
            "images": matches}


def _distance_text(entry, data_entries) -> str:
    """Smallest phash distance between an image and the DATA images with the same ISIC id, as text (JSON keys)."""
    good = [e for e in data_entries if not e.error]
    if entry.error or not good:
        return "unreadable"
    diff = np.bitwise_count(phashes_as_uint64(good) ^ phashes_as_uint64([entry])[0])
    return str(int(diff.min()))


def overlap_rule_text(distance: int) -> str:
    return (f"an image of OTHER occurs in DATA when its decoded pixels are identical, its phash is within Hamming "
            f"distance {distance}, or its file name carries the same ISIC id (ISIC_nnnnnnn)")


def _overlap_match(table, other_table, j, entry, by_hash, by_id, near: dict) -> dict | None:
    sample = other_table.samples[j]
    exact = set(by_hash.get(entry.pixel_hash, [])) if not entry.error else set()
    same_id = {i for isic in ISIC_ID.findall(Path(sample.path).stem) for i in by_id.get(isic, [])}
    if not exact and not near and not same_id:
        return None
    how = "+".join(name for name, hit in (("pixels", exact), ("phash", set(near) - exact), ("isic-id", same_id)) if hit)
    hits = sorted(exact | set(near) | same_id)
    return {"index": j, "path": _rel(other_table, sample.path), "label_other": sample.label, "matched_by": how,
            "phash_distance": min((near[i] for i in hits if i in near), default=None) if not exact else 0,
            "data": [_rel(table, table.samples[i].path) for i in hits],
            "labels_data": sorted({str(table.samples[i].label) for i in hits})}


# ---------------------------------------------------------------- terminal text

def _more(items: list, limit: int | None = None) -> tuple[list, str | None]:
    """The first `limit` items (default LIST_LIMIT) and the "... and N more" line, or None."""
    limit = LIST_LIMIT if limit is None else limit
    extra = len(items) - limit
    return items[:limit], (f"  ... and {extra} more" if extra > 0 else None)


def format_audit(report: dict) -> str:
    """Readable terminal text of an audit report: headline counts, class table, top groups, truncated lists."""
    lines = _headline(report) + _class_table(report) + _unreadable_lines(report)
    lines += _group_lines("Exact duplicates (identical pixels)", report["exact_duplicates"])
    lines += _group_lines(f"Near duplicates (phash distance <= {report['near_distance']}, exact copies excluded)",
                          report["near_duplicates"])
    if "overlap" in report:
        lines += _overlap_lines(report["overlap"])
    return "\n".join(line for line in lines if line is not None)


def _headline(report: dict) -> list[str]:
    d, ex, nr, lc = report["data"], report["exact_duplicates"], report["near_duplicates"], report["label_conflicts"]
    modes = ", ".join(f"{m} {n}" for m, n in report["modes"].items())
    sizes = ", ".join(f"{s} {n}" for s, n in list(report["sizes"].items())[:3])
    return [f"Dataset {d['root']} ({d['kind']}): {d['n_images']} images, {len(d['classes'])} classes",
            f"  readable {report['n_readable']}, unreadable {report['n_unreadable']}",
            f"  sizes: {sizes or '-'}{' ...' if len(report['sizes']) > 3 else ''}; modes: {modes or '-'}",
            f"  exact duplicate groups {ex['n_groups']} ({ex['n_images']} images), "
            f"{ex['n_cross_class_groups']} across classes",
            f"  near duplicate groups {nr['n_groups']} ({nr['n_images']} images), "
            f"{nr['n_cross_class_groups']} across classes",
            f"  label conflicts: exact {lc['exact']['n_groups']} groups ({lc['exact']['n_images']} images), "
            f"near {lc['near']['n_groups']} groups ({lc['near']['n_images']} images)"]


def _class_table(report: dict) -> list[str]:
    counts = report["images_per_class"]
    if not counts:
        return []
    width = max(len(c) for c in counts)
    lines = ["", f"{'class':<{width}}  images"]
    lines += [f"{c:<{width}}  {n:>6}" for c, n in counts.items()]
    return lines + [f"{'total':<{width}}  {sum(counts.values()):>6}"]


def _unreadable_lines(report: dict) -> list[str]:
    if not report["unreadable"]:
        return []
    shown, more = _more(report["unreadable"], 50)
    return ["", f"Unreadable files ({report['n_unreadable']}):"] + \
        [f"  {u['path']}: {u['reason']}" for u in shown] + [more]


def _group_lines(title: str, section: dict) -> list[str]:
    lines = ["", f"{title}: {section['n_groups']} groups, {section['n_cross_class_groups']} across classes"]
    shown, more = _more(section["groups"])
    for g in shown:
        span = " / ".join(g["classes"]) if g["classes"] else "unlabelled"
        files = ", ".join(f["path"] for f in g["files"][:4]) + (" ..." if g["size"] > 4 else "")
        lines.append(f"  [{span}] {g['size']} files: {files}")
    return lines + [more]


def _overlap_lines(overlap: dict) -> list[str]:
    lines = ["", f"Overlap: {overlap['n_overlap']} of {overlap['against']['n_images']} images of "
                 f"{overlap['against']['root']} also occur in DATA",
             f"  rule: {overlap['rule']}",
             "  matched by: " + (", ".join(f"{k} {v}" for k, v in overlap["matched_by"].items()) or "-"),
             "  phash distance between images with the same ISIC id: " +
             (", ".join(f"{k}: {v}" for k, v in overlap["same_id_phash_distances"].items()) or "-"),
             "  labels (other -> data): " + (", ".join(f"{k} {v}" for k, v in
                                                       list(overlap["n_label_pairs"].items())[:8]) or "-")]
    shown, more = _more(overlap["images"])
    lines += [f"  {m['path']} [{m['label_other']}] = {', '.join(m['data'][:3])} [{' / '.join(m['labels_data'])}] "
              f"({m['matched_by']})" for m in shown]
    return lines + [more]
