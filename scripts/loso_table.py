"""Leave-one-source-out table: per recipe, the held-out source's melanoma AUC, balanced accuracy and alert
operating point, mean +- sd over seeds (runs/loso/<recipe>-seed<N>/result.json, written by scripts/loso.sh).

    .venv/bin/python scripts/loso_table.py [runs/loso]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from seed_stats import mean_sd  # scripts/ is on sys.path when this file runs as a script

FIGURES = ("melanoma_auc", "balanced_accuracy", "melanoma_sensitivity", "melanoma_specificity")


def runs_by_recipe(root: Path) -> dict[str, list[Path]]:
    """{recipe: its finished run folders} from root/<recipe>-seed<N>/result.json, in name order."""
    runs: dict[str, list[Path]] = defaultdict(list)
    for result in sorted(root.glob("*-seed*/result.json")):
        runs[result.parent.name.rsplit("-seed", 1)[0]].append(result.parent)
    return runs


def main(root: Path) -> None:
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for recipe, runs in runs_by_recipe(root).items():
        for run in runs:
            data = json.loads((run / "result.json").read_text())
            for key in FIGURES:
                if data.get(key) is not None:
                    rows[recipe][key].append(float(data[key]))
    if not rows:
        sys.exit(f"{root}: no finished runs (run scripts/loso.sh first)")
    print("| recipe | seeds | " + " | ".join(FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for recipe, figures in rows.items():
        seeds = len(figures["melanoma_auc"])
        cells = " | ".join(mean_sd(figures[k], one_note=" (1 seed)") for k in FIGURES)
        print(f"| {recipe} | {seeds} | {cells} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/loso"))
