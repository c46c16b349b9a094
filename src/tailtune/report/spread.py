"""Mean and spread of a metric over runs that differ only in their seed.

The standard deviation is the sample one (ddof=1), as "mean ± std over seeds" is usually
read: with three seeds it estimates the spread a fourth seed would show. One run has no
spread (None), and missing values (a group without test images) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the values that are not None (None where undefined)."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    n = len(present)
    return {"mean": float(present.mean()) if n else None,
            "std": float(present.std(ddof=1)) if n > 1 else None, "n": int(n)}


def aggregate(rows: Sequence[dict], settings: Sequence[str], columns: Sequence[str]) -> list[dict]:
    """One entry per setting (in order of first appearance): its runs and mean / std of each column.

    ``rows[i]`` is run i's summary (a dict with "run" and the columns), ``settings[i]`` the
    setting it belongs to (its config without the seed).
    """
    if len(rows) != len(settings):
        raise ValueError(f"{len(rows)} rows but {len(settings)} settings")
    out = []
    for setting in dict.fromkeys(settings):
        members = [row for row, s in zip(rows, settings) if s == setting]
        out.append({"setting": setting, "runs": [m["run"] for m in members], "n": len(members),
                    **{c: mean_std([m.get(c) for m in members]) for c in columns}})
    return out


def format_mean_std(stat: dict) -> str:
    """'81.70 ± 0.35' (or '81.70' for one run, '–' for none)."""
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:.2f}" if stat["std"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"
