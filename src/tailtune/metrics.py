"""Accuracy overall, per class, per long-tail group, and macro-F1."""

from __future__ import annotations

import numpy as np


def confusion(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(targets * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def compute_metrics(preds, targets, groups, group_names, num_classes: int) -> dict:
    """Metrics of predictions against targets; accuracies in percent.

    ``groups[c]`` is the group index of class c into ``group_names`` (e.g. many/medium/few).
    A group's accuracy is over its test images (the benchmark's convention).
    """
    preds = np.asarray(preds, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    groups = np.asarray(groups)
    cm = confusion(preds, targets, num_classes)
    support = cm.sum(1)
    correct = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
        predicted = cm.sum(0)
        precision = np.where(predicted > 0, correct / np.maximum(predicted, 1), 0.0)
        f1 = np.where(precision + np.nan_to_num(per_class) > 0,
                      2 * precision * np.nan_to_num(per_class) / (precision + np.nan_to_num(per_class) + 1e-12), 0.0)
    out = {"overall": 100.0 * correct.sum() / max(len(targets), 1)}
    for g, name in enumerate(group_names):
        mask = groups == g
        n = support[mask].sum()
        out[name] = float(100.0 * correct[mask].sum() / n) if n else None
    present = support > 0
    out["macro_f1"] = float(100.0 * f1[present].mean()) if present.any() else 0.0
    out["per_class"] = [None if np.isnan(a) else float(100.0 * a) for a in per_class]
    out["num_samples"] = int(len(targets))
    out["overall"] = float(out["overall"])
    return out
