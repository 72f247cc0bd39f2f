"""The leave-one-source-out proxy's table rows (scripts/loso_insource.sh): per recipe folder, the never-seen
source's melanoma AUC by seed with its bootstrap CI and the ensembles' AUC, the difference to the baseline's run of
the same seed (mean ± sd over the seeds both have), the alert at each run's own in-source threshold, and the
in-source figures. One markdown row per folder, the baseline first, in the columns of docs/results.md's tables.

    .venv/bin/python scripts/insource_table.py --baseline runs/loso-insource-base runs/loso-insource-ls0 ...

A folder holds full-seed<N>/{result.json,heldout-eval/metrics.json} and ensemble-<seeds>/heldout-eval/metrics.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

from seed_stats import mean_sd  # scripts/ is on sys.path when this file runs as a script

REFERRAL_CLINIC = "referral clinic (10% melanoma)"  # key of metrics.json's expected_alert_share


def seed_list(seeds) -> str:
    """'seed 2' or 'seeds 1, 2'."""
    seeds = list(seeds)
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


@functools.cache  # each cell reads it again, and the baseline's for every recipe
def heldout(run: Path) -> dict:
    """metrics.json's melanoma block of the run's score on the never-seen source."""
    return json.loads((run / "heldout-eval" / "metrics.json").read_text())["melanoma"]


@functools.cache  # the rows and the machine notes ask for every folder again
def seed_runs(root: Path) -> dict[int, Path]:
    """{seed: run folder} of root's finished and scored seeds."""
    runs = {int(run.name.removeprefix("full-seed")): run for run in root.glob("full-seed*")
            if run.name.removeprefix("full-seed").isdigit() and (run / "heldout-eval" / "metrics.json").is_file()}
    return dict(sorted(runs.items()))


def auc_cell(root: Path, runs: dict[int, Path]) -> str:
    """Mean ± sd over seeds, each seed's AUC [95% CI], then every scored ensemble of the folder."""
    aucs = [heldout(run)["auc"] for run in runs.values()]
    seeds = " / ".join(f"{a['value']:.3f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]" for a in aucs)
    cell = f"{mean_sd([a['value'] for a in aucs])} ({seeds})"
    ensembles = [f"seeds {ens.name.removeprefix('ensemble-')} {heldout(ens)['auc']['value']:.3f}"
                 for ens in sorted(root.glob("ensemble-*"))
                 if (ens / "heldout-eval" / "metrics.json").is_file()]
    return cell + (f"; ensemble of {', of '.join(ensembles)}" if ensembles else "")


def paired_cell(runs: dict[int, Path], baseline: dict[int, Path]) -> str:
    """The AUC difference to the baseline's run of the same seed: mean ± sd (each seed's difference)."""
    shared = [seed for seed in runs if seed in baseline]
    if not shared or runs == baseline:
        return ""
    diffs = [heldout(runs[s])["auc"]["value"] - heldout(baseline[s])["auc"]["value"] for s in shared]
    return f"{mean_sd(diffs, signed=True)} ({' / '.join(f'{d:+.3f}' for d in diffs)}; {seed_list(shared)})"


def alert_cell(runs: dict[int, Path]) -> str:
    """Sensitivity / specificity on the never-seen source at each run's own threshold; share alerted at 10%."""
    blocks = [heldout(run) for run in runs.values()]
    points = ", ".join(f"{m['sensitivity']['value']:.2f} / {m['specificity']['value']:.2f}" for m in blocks)
    shares = ", ".join(f"{m['expected_alert_share'][REFERRAL_CLINIC]:.0%}" for m in blocks)
    return f"{points}; {shares}"


@functools.cache  # the in-source cell and the machine notes read it
def result_of(run: Path) -> dict:
    return json.loads((run / "result.json").read_text())


def insource_cell(runs: dict[int, Path]) -> str:
    """The in-source validation's melanoma AUC (mean, per seed) / balanced accuracy; each run's best epoch."""
    results = [result_of(run) for run in runs.values()]
    aucs = [r["melanoma_auc"] for r in results]
    epochs = ", ".join(f"{r['best_epoch']}" for r in results)
    return (f"{statistics.mean(aucs):.3f} ({' / '.join(f'{a:.3f}' for a in aucs)}) / "
            f"{statistics.mean(r['balanced_accuracy'] for r in results):.2f}; epochs {epochs} of "
            f"{results[0]['epochs_run']}")


def machine_of(run: Path) -> str | None:
    """'CPU, N threads, torch V[, GPU], precision' from result.json (runs since session 35 record it), else None."""
    result = result_of(run)
    box = result.get("machine")
    if not box:
        return None
    parts = [box["cpu"], f"{box['threads']} threads", f"torch {box['torch']}", box.get("gpu"), result.get("precision")]
    return ", ".join(str(part) for part in parts if part)


def machine_notes(roots: list[Path], baseline: dict[int, Path]) -> list[str]:
    """The machines the runs trained on, and a warning for each pair whose two runs trained on different ones
    (a seed repeats bit for bit only on one machine: docs/training.md)."""
    runs = [run for root in roots for run in seed_runs(root).values()]
    machines = sorted({machine_of(run) for run in runs} - {None})
    notes = [f"trained on: {'; '.join(machines)}"] if machines else []
    unknown = sum(machine_of(run) is None for run in runs)
    if unknown:
        notes.append(f"{unknown} of {len(runs)} runs carry no machine record (trained before session 35): pair "
                     "them only with runs of the same session")
    for root in roots:
        for seed, run in seed_runs(root).items():
            mine, theirs = machine_of(run), seed in baseline and machine_of(baseline[seed])
            if mine and theirs and mine != theirs:
                notes.append(f"warning: {run} trained on {mine}, the baseline's seed {seed} on {theirs}: "
                             "their difference is not a paired comparison")
    return notes


def table_row(root: Path, baseline: dict[int, Path]) -> str:
    runs = seed_runs(root)
    if not runs:
        raise ValueError(f"{root}: no full-seed<N> run with heldout-eval/metrics.json")
    cells = [f"{root.name.removeprefix('loso-insource-')}, {seed_list(runs)}", auc_cell(root, runs),
             paired_cell(runs, baseline), alert_cell(runs), insource_cell(runs)]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the recipe folder the others pair against")
    parser.add_argument("recipes", type=Path, nargs="*", help="recipe folders (runs/loso-insource-NAME)")
    args = parser.parse_args(argv)
    try:
        baseline = seed_runs(args.baseline)
        roots = [args.baseline, *args.recipes]
        rows = [table_row(root, baseline) for root in roots]
        notes = machine_notes(roots, baseline)
    except (OSError, ValueError) as error:  # a missing or unreadable file: one line, no traceback
        print(f"insource_table: {error}", file=sys.stderr)
        return 1
    except KeyError as error:  # a metrics.json or result.json of another version
        print(f"insource_table: no {error} in a run's metrics.json or result.json", file=sys.stderr)
        return 1
    print("| recipe | never-seen source: melanoma AUC | paired against the baseline's same seed | sensitivity / "
          "specificity there at the run's own alert; share alerted at 10% prevalence | in-source: AUC / balanced "
          "accuracy; best epoch |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    for note in notes:
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
