"""A run's training log and resume point: which epochs a checkpoint holds, and a CSV log (logs/metrics.csv) that
holds every finished epoch exactly once, across kills and resumes (a partial epoch never reaches it)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from melanoma.artifacts import atomic_write_text

BEFORE_RESUME = "metrics-before-resume.csv"


def checkpoint_epochs(last: Path) -> int:
    """Epochs whose training AND validation finished in checkpoint `last` (0 when there is none): its log rows
    are final; rows of later epochs come from an interrupted epoch."""
    if not last.exists():
        return 0
    state = torch.load(last, map_location="cpu", weights_only=True)
    # saved at validation end (epoch not yet counted as processed) or at the end of training
    return int(state["epoch"]) + 1


def read_log_rows(log: Path) -> list[dict]:
    """Rows of a CSV log; a row cut short by a kill (fewer fields than the header) is dropped."""
    if not log.exists():
        return []
    with log.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return [row for row in reader if None not in row.values() and None not in row]


def _row_epoch(row: dict) -> float | None:
    return float(row["epoch"]) if row.get("epoch") not in (None, "") else None


def write_log_rows(log: Path, rows: list[dict]) -> None:
    fields = sorted({k for r in rows for k in r})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(log, buffer.getvalue())


def finished_log_rows(run: Path, epochs_done: int) -> list[dict]:
    """The log rows of the `epochs_done` finished epochs: the rows set aside at earlier resumes, then the current
    log's rows of later epochs (a resume from a validation-end checkpoint re-runs the end of that epoch, whose
    train metrics restart from empty states: the earlier rows win), cut at the first unfinished epoch."""
    logs = run / "logs"
    earlier = read_log_rows(logs / BEFORE_RESUME)
    last_earlier = max((e for e in map(_row_epoch, earlier) if e is not None), default=-1.0)
    current = [r for r in read_log_rows(logs / "metrics.csv") if _row_epoch(r) is None or _row_epoch(r) > last_earlier]
    return [r for r in earlier + current if _row_epoch(r) is None or _row_epoch(r) < epochs_done]


def set_aside_log(run: Path, epochs_done: int) -> None:
    """Before a resume: Lightning's CSVLogger deletes an existing metrics.csv, so keep the finished epochs aside."""
    rows = finished_log_rows(run, epochs_done)
    write_log_rows(run / "logs" / BEFORE_RESUME, rows)
    (run / "logs" / "metrics.csv").unlink(missing_ok=True)


def settle_log(run: Path, epochs_done: int | float) -> None:
    """metrics.csv = every finished epoch's rows, once (after a resumed fit, or cut back after an interruption)."""
    if not (run / "logs" / BEFORE_RESUME).exists() and epochs_done == float("inf"):
        return
    write_log_rows(run / "logs" / "metrics.csv", finished_log_rows(run, epochs_done))
    (run / "logs" / BEFORE_RESUME).unlink(missing_ok=True)
