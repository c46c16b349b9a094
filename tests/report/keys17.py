"""Adds issue 17's metrics.json keys (/work/wt/KEYS17.md: top-5, calibration, reliability,
post hoc) to a finished tiny run, with hand-made numbers, so the report and compare can be
tested before the evaluation computes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BINS = 15
GROUPS = ("many", "medium", "few")


def reliability_curve(shift: float, counts: list[int]) -> dict:
    """15 bins: the mean confidence at the bin's centre, accuracy ``shift`` points below it (%)."""
    conf, acc = [], []
    for b, n in enumerate(counts):
        centre = (b + 0.5) / BINS
        conf.append(round(centre, 4) if n else None)
        acc.append(round(max(0.0, min(100.0, 100 * centre - shift)), 2) if n else None)
    return {"confidence": conf, "accuracy": acc, "count": counts}


def _counts(total: int, first: int) -> list[int]:
    """``total`` images over bins ``first`` .. 14, as evenly as whole numbers allow."""
    out = [0] * BINS
    for i in range(total):
        out[first + i % (BINS - first)] += 1
    return out


def calibration_keys(test: dict, offset: float = 0.0, empty: tuple[str, ...] = ("many",)) -> dict:
    """The per-split keys for one evaluation; the groups in ``empty`` have no test images (None)."""
    gc = {}
    rel = {"bins": BINS}
    total = 0
    for k, g in enumerate(GROUPS):
        if g in empty:
            gc[g] = {"ece": None, "nll": None, "brier": None, "top5": None}
            rel[g] = {"confidence": [None] * BINS, "accuracy": [None] * BINS, "count": [0] * BINS}
            continue
        n = 12
        total += n
        gc[g] = {"ece": 4.5 + 3 * k + offset, "nll": 0.8 + 0.3 * k + offset / 10, "brier": 0.3 + 0.1 * k,
                 "top5": 99.0 - 4 * k - offset}
        rel[g] = reliability_curve(4.5 + 3 * k + offset, _counts(n, 5))
    rel["overall"] = reliability_curve(6.0 + offset, _counts(total, 5))
    classes = len(test["per_class"])
    return {"top5": 97.5 - offset, "nll": 0.912 + offset / 10, "brier": 0.41, "ece": 6.25 + offset,
            "classwise_ece": 3.1 + offset, "group_calibration": gc, "reliability": rel,
            "precision_per_class": [50.0] * classes, "recall_per_class": list(test["per_class"]),
            "f1_per_class": [50.0] * classes,
            "group_confusion": {"groups": list(GROUPS), "matrix": [[0.0] * 3, [0.0, 80.0, 20.0], [0.0, 30.0, 70.0]]}}


def add_keys17(run: Path, offset: float = 0.0, posthoc: bool = False, calibration: bool = False) -> dict:
    """Write the keys into ``run``'s metrics.json (test and test_no_tte); returns the new metrics."""
    path = Path(run) / "metrics.json"
    m = json.loads(path.read_text())
    for split in ("test", "test_no_tte"):
        if m.get(split):
            m[split].update(calibration_keys(m[split], offset))
    t = m["test"]
    if calibration:
        m["calibration"] = {"method": "temperature", "temperature": 1.734, "fitted_on": "val",
                            "test": {"ece": 2.05, "nll": 0.7012, "brier": 0.3876}}
    if posthoc:
        before = {"overall": t["overall"], "balanced": t["balanced"], "many": t.get("many"),
                  "medium": t.get("medium"), "few": t.get("few"), "top5": t["top5"], "ece": t["ece"], "nll": t["nll"]}
        after = {**before, "overall": 71.25, "balanced": 70.5, "few": 68.0, "top5": 98.0, "ece": 9.5, "nll": 1.25}
        m["posthoc"] = [{"method": "la", "tau": 1.0, "tau_from": "val", "split": "test", "before": before,
                         "after": after},
                        {"method": "taunorm", "tau": 0.5, "tau_from": "given", "split": "test", "before": before,
                         "after": {**before, "few": 65.0}}]
    path.write_text(json.dumps(m, indent=2))
    return m


SPLIT_KEYS = ("top5", "nll", "brier", "ece", "classwise_ece", "group_calibration", "reliability",
              "precision_per_class", "recall_per_class", "f1_per_class", "group_confusion")


def strip_keys17(run: Path) -> None:
    """Make ``run`` an old run: its metrics.json without any of the keys (as written before issue 17)."""
    path = Path(run) / "metrics.json"
    m = json.loads(path.read_text())
    for split in m.values():
        if isinstance(split, dict):
            for k in SPLIT_KEYS:
                split.pop(k, None)
    m.pop("calibration", None)
    m.pop("posthoc", None)
    path.write_text(json.dumps(m, indent=2))


def copy_run(run: Path, dst: Path) -> Path:
    """A copy of a run folder (its report files left behind)."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("report", "report.html"))
    return dst
