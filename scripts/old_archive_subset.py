"""Build the old-archive subset of the 9-class Train split: class folders of symlinks to the files that are NOT
HAM10000 images (same ISIC id in HAM10000_metadata.csv, a "(1)" copy suffix ignored) and that are not in a
conflicting-label group (identical or near-identical pictures filed under two classes, as `melanoma train` drops).
It is the held-out target of the HAM10000-only transfer check (a model trained on one source, scored on another):

    python scripts/old_archive_subset.py runs/old-archive-subset
    melanoma evaluate --model runs/ham-only-lite0 --data runs/old-archive-subset --label-map binary
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

from melanoma.data import discover, prepare_training_table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def old_archive_files(train: Path, ham_metadata: Path) -> list[tuple[str, Path]]:
    """(class, path) of the single-label, non-HAM10000 files of `train`."""
    ham = {line.split(",")[1] for line in ham_metadata.read_text().splitlines()[1:]}
    table, _ = prepare_training_table(discover(train), conflict_policy="drop")
    return [(s.label, s.path) for s in table.samples if re.sub(r"\(\d+\)$", "", s.path.stem) not in ham]


def main(out: Path, train: Path = SHARED / "isic-9class" / "Train",
         ham_metadata: Path = SHARED / "ham10000" / "HAM10000_metadata.csv") -> None:
    files = old_archive_files(train, ham_metadata)
    for label, path in files:
        link = out / label / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(path.resolve())
    counts = defaultdict(int)
    for label, _ in files:
        counts[label] += 1
    print(f"{out}: {len(files)} images: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/old-archive-subset"))
