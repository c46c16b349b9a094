"""Accuracy overall, per class, per long-tail group, macro-F1 and summaries of per-class accuracy.

All accuracies are in percent. Summaries of the per-class accuracies (worst class,
harmonic and geometric mean) are over the classes that have test images; a class with
0% accuracy makes the harmonic and geometric means 0 (their limits as that accuracy
goes to 0), so one forgotten class shows in them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def confusion(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    return np.bincount(targets * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def harmonic_mean(values: np.ndarray) -> float:
    """n / sum(1 / v); 0 if any value is 0 (the limit), 0 for no values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or (values <= 0).any():
        return 0.0
    return float(len(values) / np.sum(1.0 / values))


def geometric_mean(values: np.ndarray) -> float:
    """exp(mean(log v)); 0 if any value is 0, 0 for no values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or (values <= 0).any():
        return 0.0
    return float(np.exp(np.mean(np.log(values))))


def compute_metrics(preds, targets, groups, group_names, num_classes: int) -> dict:
    """Metrics of predictions against targets; accuracies in percent.

    ``groups[c]`` is the group index of class c into ``group_names`` (e.g. many/medium/few).
    A group's accuracy is over its test images (the benchmark's convention). Keys:
    overall, one per group, macro_f1, per_class (None for classes without test images),
    mean_class (mean per-class accuracy), worst_class, worst_class_index, harmonic_mean,
    geometric_mean, num_samples.
    """
    preds = np.asarray(preds, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    groups = np.asarray(groups)
    cm = confusion(preds, targets, num_classes)
    support = cm.sum(1)
    correct = np.diag(cm)
    present = support > 0
    recall = correct / np.maximum(support, 1)
    out: dict = {"overall": float(100.0 * correct.sum() / max(len(targets), 1))}
    for g, name in enumerate(group_names):
        mask = groups == g
        n = support[mask].sum()
        out[name] = float(100.0 * correct[mask].sum() / n) if n else None
    # Over the classes with test images: a class only predicted counts against the others'
    # recall, not as a zero F1 of its own; a class never predicted has precision 0.
    out["macro_f1"] = (float(100.0 * f1_score(targets, preds, labels=np.flatnonzero(present), average="macro",
                                              zero_division=0)) if present.any() else 0.0)
    out["per_class"] = [float(100.0 * a) if p else None for a, p in zip(recall, present)]
    accs = 100.0 * recall[present]
    out["mean_class"] = float(accs.mean()) if len(accs) else 0.0
    if len(accs):
        worst = int(np.flatnonzero(present)[np.argmin(accs)])
        out["worst_class"], out["worst_class_index"] = float(accs.min()), worst
    else:
        out["worst_class"], out["worst_class_index"] = 0.0, None
    out["harmonic_mean"] = harmonic_mean(accs)
    out["geometric_mean"] = geometric_mean(accs)
    out["num_samples"] = int(len(targets))
    return out
