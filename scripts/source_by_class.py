"""Which source each class of the 9-class Train split comes from: per class folder, how many files are HAM10000
images (same ISIC id in HAM10000_metadata.csv) and which HAM10000 `dx` they carry there.

    python scripts/source_by_class.py [../shared/data/isic-9class/Train] [../shared/data/ham10000]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from melanoma.data import discover, read_lesion_ids


def main(train: Path, ham: Path) -> None:
    table = discover(train)
    dx = {r.split(",")[1]: r.split(",")[2] for r in (ham / "HAM10000_metadata.csv").read_text().splitlines()[1:]}
    lesions = read_lesion_ids(ham / "HAM10000_metadata.csv")
    print(f"{'class':28s} {'files':>5s} {'in HAM10000':>11s}  HAM10000 dx of those")
    for name in table.classes:
        stems = [s.path.stem for s in table.samples if s.label == name]
        found = Counter(dx[s] for s in stems if s in lesions)
        print(f"{name:28s} {len(stems):5d} {sum(found.values()):11d}  "
              + ", ".join(f"{k} {v}" for k, v in found.most_common()))


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    main(args[0] if args else root / "isic-9class" / "Train", args[1] if len(args) > 1 else root / "ham10000")
