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

From the predicted classes alone, also: per-class precision, recall and F1 (scikit-learn's
``precision_recall_fscore_support``) and the group confusion summary. Given the (N, C)
logits (with a test-time ensemble: the mean logits over the views, whose softmax is the
probability), also the probability metrics (:func:`probability_metrics`): top-5, NLL, Brier
score, ECE and classwise ECE, overall and per group (the true class's group), and the
reliability bins.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import f1_score, precision_recall_fscore_support, top_k_accuracy_score

ECE_BINS = 15  # equal-width bins on the confidence (Guo et al. 2017; the long-tail papers' number)
TOP_K = 5
_CHUNK = 2048  # rows at a time: (rows, C) float64 temporaries stay small for thousands of classes
# Keys that sum float probabilities: a last-bit change of a logit moves them by about 1e-6
# without changing a prediction, so a reproduction compares them with a looser tolerance.
PROBABILITY_KEYS = ("nll", "brier", "ece", "classwise_ece", "group_calibration", "reliability")


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


def compute_metrics(preds, targets, groups, group_names, num_classes: int, logits=None, probs=None) -> dict:
    """Metrics of predictions against targets; accuracies in percent.

    ``logits`` (or ``probs``, their softmax), (N, C): also the probability metrics of
    :func:`probability_metrics` (top5, nll, brier, ece, classwise_ece, group_calibration,
    reliability); without either those keys are absent.

    ``groups[c]`` is the group index of class c into ``group_names`` (e.g. many/medium/few).
    Keys: overall (image accuracy), balanced (mean per-class accuracy), one per group (the
    mean per-class accuracy of the group's classes that have test images; None when none
    has), macro_f1, per_class (None for classes without test images), mean_class (the same
    as balanced, kept for older readers), worst_class, worst_class_index, harmonic_mean,
    geometric_mean, num_samples; precision_per_class, recall_per_class, f1_per_class (percent;
    None for a class without test images; precision 0 for a class never predicted) and
    group_confusion (:func:`group_confusion`).
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
    out.update(per_class_scores(preds, targets, num_classes, present))
    out["group_confusion"] = group_confusion(cm, groups, group_names)
    if logits is not None or probs is not None:
        out.update(probability_metrics(targets, groups, group_names, num_classes, logits=logits, probs=probs))
    return out


def per_class_scores(preds, targets, num_classes: int, present) -> dict:
    """precision_per_class, recall_per_class, f1_per_class in percent (scikit-learn, zero_division=0):
    None for a class without test images."""
    if len(targets):
        p, r, f, _ = precision_recall_fscore_support(targets, preds, labels=np.arange(num_classes),
                                                     average=None, zero_division=0)
    else:
        p = r = f = np.zeros(num_classes)
    return {f"{name}_per_class": [float(100.0 * v) if has else None for v, has in zip(values, present)]
            for name, values in (("precision", p), ("recall", r), ("f1", f))}


def group_confusion(cm: np.ndarray, groups, group_names) -> dict:
    """Row = the true class's group, column = the predicted class's group, percent of the row's
    images (a row of None for a group without test images)."""
    groups = np.asarray(groups, dtype=np.int64)
    n = len(group_names)
    onehot = np.zeros((len(groups), n), dtype=np.int64)
    onehot[np.arange(len(groups)), groups] = 1
    counts = onehot.T @ cm @ onehot  # (groups, groups) image counts
    rows = counts.sum(1)
    matrix = [[float(100.0 * c / rows[i]) for c in counts[i]] if rows[i] else [None] * n for i in range(n)]
    return {"groups": list(group_names), "matrix": matrix}


def calibration_bins(confidence, correct, bins: int = ECE_BINS) -> dict:
    """Reliability bins: equal-width on the confidence, bin i holding (i/bins, (i+1)/bins] (the
    first also 0). confidence: the mean confidence in [0, 1]; accuracy in percent; None for an
    empty bin; count: images."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    idx = _bin_index(confidence, bins)
    count = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, weights=confidence, minlength=bins)
    hit = np.bincount(idx, weights=correct, minlength=bins)
    return {"confidence": [float(c / n) if n else None for c, n in zip(conf, count)],
            "accuracy": [float(100.0 * h / n) if n else None for h, n in zip(hit, count)],
            "count": [int(n) for n in count]}


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float | None:
    """ECE in percent: sum over bins of (images in bin / images) * |accuracy - mean confidence|;
    None for no images. No library has it (torchmetrics' is torch-only); it is these lines."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if len(confidence) == 0:
        return None
    idx = _bin_index(confidence, bins)
    gap = np.bincount(idx, weights=np.asarray(correct, dtype=np.float64) - confidence, minlength=bins)
    return float(100.0 * np.abs(gap).sum() / len(confidence))


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.ceil(values * bins).astype(np.int64) - 1, 0, bins - 1)


def softmax_rows(logits=None, probs=None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, log-probabilities) in float64 from logits (exact log-softmax) or probs."""
    if logits is not None:
        logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=1)
        return np.exp(logp), logp
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return p, np.log(p)


def probability_metrics(targets, groups, group_names, num_classes: int, logits=None, probs=None,
                        bins: int = ECE_BINS) -> dict:
    """Metrics of the (N, C) logits (or their softmax ``probs``) against the targets:

    - top5: percent of images whose label is among the min(5, C) highest scores (scikit-learn's
      ``top_k_accuracy_score``; 100 when C <= 5);
    - nll: mean -log p(label) in nats, from the logits' log-softmax (exact where scikit-learn's
      ``log_loss`` clips a probability that underflows; they agree otherwise, see the tests);
    - brier: mean over images of sum_c (p_c - onehot_c)^2;
    - ece: in percent, ``bins`` equal-width bins on the top-1 confidence;
    - classwise_ece: in percent, the mean over all C classes of the ECE of p_c against
      "the label is c" over all images (Kull et al. 2019), the same bins;
    - group_calibration: {group: ece, nll, brier, top5} over the images of the group's classes
      (None without images); reliability: {"bins", "overall", group: :func:`calibration_bins`}.

    Rows are taken ``_CHUNK`` at a time so that a few thousand classes need no (N, C) float64 copy.
    Scores that are not all finite (a model whose weights diverged, train.on_nan=skip) have no
    probabilities: every value is None (the accuracies, from the argmax, are still measured).
    """
    targets = np.asarray(targets, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    scores = np.asarray(logits if logits is not None else probs)
    n = len(targets)
    if scores.shape != (n, num_classes):
        raise ValueError(f"scores of shape {scores.shape} for {n} targets and {num_classes} classes")
    if not np.isfinite(scores).all():
        n = 0  # the same keys, every value None
        targets, scores = targets[:0], scores[:0]
    k = min(TOP_K, num_classes)
    conf, correct, nll, brier = (np.zeros(n) for _ in range(4))
    hits = np.zeros(len(group_names))  # top-k hits per group
    cw_conf, cw_hit = np.zeros((num_classes, bins)), np.zeros((num_classes, bins))
    image_group = groups[targets] if n else np.zeros(0, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        y = targets[rows]
        p, logp = softmax_rows(logits=scores[rows]) if logits is not None else softmax_rows(probs=scores[rows])
        m = len(y)
        conf[rows] = p.max(1)
        correct[rows] = p.argmax(1) == y
        nll[rows] = -logp[np.arange(m), y]
        onehot = np.zeros_like(p)
        onehot[np.arange(m), y] = 1.0
        brier[rows] = ((p - onehot) ** 2).sum(1)
        if k < num_classes:  # else every image is a hit
            for g in range(len(group_names)):
                sel = image_group[rows] == g
                if sel.any():
                    hits[g] += top_k_accuracy_score(y[sel], scores[rows][sel], k=k, labels=np.arange(num_classes),
                                                    normalize=False)
        idx = _bin_index(p, bins) + bins * np.arange(num_classes)  # (m, C): class c's bins at c * bins
        cw_conf += np.bincount(idx.ravel(), weights=p.ravel(), minlength=num_classes * bins).reshape(
            num_classes, bins)
        cw_hit += np.bincount(idx.ravel(), weights=onehot.ravel(), minlength=num_classes * bins).reshape(
            num_classes, bins)
    if k >= num_classes:
        hits = np.bincount(image_group, minlength=len(group_names)).astype(np.float64)

    def summary(sel) -> dict:
        count = int(sel.sum())
        if not count:
            return {"ece": None, "nll": None, "brier": None, "top5": None}
        return {"ece": expected_calibration_error(conf[sel], correct[sel], bins), "nll": float(nll[sel].mean()),
                "brier": float(brier[sel].mean()), "top5": None}

    everything = np.ones(n, dtype=bool)
    out = summary(everything)
    out["top5"] = float(100.0 * hits.sum() / n) if n else None
    out["classwise_ece"] = float(100.0 * np.abs(cw_hit - cw_conf).sum(1).mean() / n) if n else None
    per_group, reliability = {}, {"bins": bins, "overall": calibration_bins(conf, correct, bins)}
    for g, name in enumerate(group_names):
        sel = image_group == g
        per_group[name] = summary(sel)
        if sel.any():
            per_group[name]["top5"] = float(100.0 * hits[g] / sel.sum())
        reliability[name] = calibration_bins(conf[sel], correct[sel], bins)
    out["group_calibration"] = per_group
    out["reliability"] = reliability
    return {key: out[key] for key in ("top5", "nll", "brier", "ece", "classwise_ece", "group_calibration",
                                      "reliability")}


def differing_metrics(saved: dict, now: dict, tol: float = 1e-6, probability_tol: float = 1e-4
                      ) -> list[tuple[str, str, str]]:
    """(name, saved, now) of each number both metric dicts hold that differs by more than ``tol``
    (nested values named as per_class[3], ...); strings (tte, precision) and the views per image
    are settings, not compared. A number against None (a group or class that lost or gained its
    images) differs. Keys only one side has are not compared: metrics.json of older runs lacks
    the probability metrics; those (``PROBABILITY_KEYS``) are compared within ``probability_tol``.
    What ``tailtune eval`` reports when a run does not reproduce."""
    out = []

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def walk(name, a, b, tol):
        if isinstance(a, bool) or isinstance(b, bool):
            return
        if number(a) and number(b):
            if a != b and not abs(a - b) <= tol:  # NaN differs from anything
                out.append((name, f"{a:.6g}", f"{b:.6g}"))
        elif (a is None and number(b)) or (number(a) and b is None):
            out.append((name, "-" if a is None else f"{a:.6g}", "-" if b is None else f"{b:.6g}"))
        elif isinstance(a, dict) and isinstance(b, dict):
            for k in a:
                if k in b:
                    key = f"{name}.{k}" if name else k
                    walk(key, a[k], b[k], probability_tol if not name and k in PROBABILITY_KEYS else tol)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.append((name, f"{len(a)} values", f"{len(b)} values"))
            else:
                for i, (x, y) in enumerate(zip(a, b)):
                    walk(f"{name}[{i}]", x, y, tol)

    walk("", {k: v for k, v in saved.items() if k not in ("views_per_image",)},
         {k: v for k, v in now.items() if k not in ("views_per_image",)}, tol)
    return out
