"""'mean ± sd' over seeds or folds: the one formatter the experiment tables of scripts/ print (imported as a sibling
module; scripts/ is on sys.path when a script runs)."""

from __future__ import annotations

import statistics


def mean_sd(values, signed: bool = False, one_note: str = "") -> str:
    """'mean ± sd' of `values` (3 decimals; a leading '+' on differences with `signed`). One value alone has no
    spread: it is printed with `one_note` after it (e.g. ' (1 seed)'); none gives '-'."""
    values = [float(v) for v in values]
    form = "+.3f" if signed else ".3f"
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], form) + one_note
    return f"{format(statistics.mean(values), form)} ± {statistics.stdev(values):.3f}"
