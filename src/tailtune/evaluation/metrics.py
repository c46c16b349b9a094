"""Accuracy overall, balanced, per class, per long-tail group, macro-F1 and summaries of per-class accuracy.

All accuracies are in percent. ``overall`` is the share of test images classified
correctly (the paper's headline number). Everything else is built on the per-class
accuracies, and only on the classes that have test images (a class without test images
has no accuracy and is left out of every mean, the group means included):

- ``balanced``: the mean per-class accuracy (scikit-learn's ``balanced_accuracy_score``);
- a group's accuracy (many / medium / few): the mean per-class accuracy of its classes,
  as the reference computes it (reference: utils/evaluator.py:110-112, Evaluator.evaluate;
  during training too, trainer.py:485-489). On a test set with the same number of images
  per class (the benchmarks') it equals the accuracy over the group's images; on an
  unbalanced one it does not, and the class mean is the one that keeps a group's rare
  classes from vanishing behind its frequent ones;
- worst class, harmonic and geometric mean.

Harmonic and geometric mean: a class at 0% makes both 0, their limits as that class's
accuracy goes to 0, so one forgotten class shows in them. The reference instead clamps
each class at 0.001% in the harmonic mean (reference: utils/evaluator.py:92), which gives
about C x 0.001% with one class at 0 out of C: a number that depends on the class count
and not on the model. The two definitions agree exactly whenever no class is at 0% (a
class with at least one correct image out of at most 100,000 is at 0.001% or more). The
reference's geometric mean is the product's n-th root (utils/evaluator.py:95), which
underflows to 0 for thousands of classes; here it is exp(mean(log)).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score


def confusion(preds: np.ndarray, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    return np.bincount(targets * num_classes + preds, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def harmonic_mean(values: np.ndarray) -> float:
    """n / sum(1 / v); 0 if any value is 0 (the limit; the reference clamps at 0.001 instead,
    see the module's doc), 0 for no values."""
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
    Keys: overall (image accuracy), balanced (mean per-class accuracy), one per group (the
    mean per-class accuracy of the group's classes that have test images; None when none
    has), macro_f1, per_class (None for classes without test images), mean_class (the same
    as balanced, kept for older readers), worst_class, worst_class_index, harmonic_mean,
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
    accs = 100.0 * recall[present]
    balanced = float(accs.mean()) if len(accs) else 0.0
    out: dict = {"overall": float(100.0 * correct.sum() / max(len(targets), 1)), "balanced": balanced}
    for g, name in enumerate(group_names):
        mask = (groups == g) & present
        out[name] = float(100.0 * recall[mask].mean()) if mask.any() else None
    # Over the classes with test images: a class only predicted counts against the others'
    # recall, not as a zero F1 of its own; a class never predicted has precision 0.
    out["macro_f1"] = (float(100.0 * f1_score(targets, preds, labels=np.flatnonzero(present), average="macro",
                                              zero_division=0)) if present.any() else 0.0)
    out["per_class"] = [float(100.0 * a) if p else None for a, p in zip(recall, present)]
    out["mean_class"] = balanced
    if len(accs):
        worst = int(np.flatnonzero(present)[np.argmin(accs)])
        out["worst_class"], out["worst_class_index"] = float(accs.min()), worst
    else:
        out["worst_class"], out["worst_class_index"] = 0.0, None
    out["harmonic_mean"] = harmonic_mean(accs)
    out["geometric_mean"] = geometric_mean(accs)
    out["num_samples"] = int(len(targets))
    return out


def differing_metrics(saved: dict, now: dict, tol: float = 1e-6) -> list[tuple[str, str, str]]:
    """(name, saved, now) of each number both metric dicts hold that differs by more than ``tol``
    (nested values named as per_class[3], ...); strings (tte, precision) and the views per image
    are settings, not compared. What ``tailtune eval`` reports when a run does not reproduce."""
    out = []

    def walk(name, a, b):
        if isinstance(a, bool) or isinstance(b, bool):
            return
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if a != b and not abs(a - b) <= tol:  # NaN differs from anything
                out.append((name, f"{a:.6g}", f"{b:.6g}"))
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                if k in b:
                    walk(f"{name}.{k}" if name else k, a[k], b[k])
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append((name, f"{len(a)} values", f"{len(b)} values"))
            else:
                for i, (x, y) in enumerate(zip(a, b)):
                    walk(f"{name}[{i}]", x, y)

    walk("", {k: v for k, v in saved.items() if k not in ("views_per_image",)},
         {k: v for k, v in now.items() if k not in ("views_per_image",)})
    return out
