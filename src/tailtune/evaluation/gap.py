"""The generalisation gap: training against test accuracy, per group of classes.

The paper's claim is that heavy fine-tuning overfits the tail: the training accuracy of
few-shot classes climbs while their test accuracy falls behind. This module measures it
on any run. The model is evaluated on the training images with the test transforms, on a
stratified, seeded subset (at most ``eval.gap_per_class`` images per class, so a large
dataset stays cheap), and compared with the test accuracy class by class.

Both sides are class-balanced: a group's accuracy is the mean accuracy of its classes.
Capping the training images per class changes a group's mix of images, but not the mean
over its classes; on a balanced test set it is the usual group accuracy. The gap is
train - test: positive when the model does better on the images it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tailtune.data.base import Subset
from tailtune.data.longtail import class_groups
from tailtune.evaluation.evaluate import evaluate_model


def stratified_indices(targets: Sequence[int], per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` items of each class (every item of a smaller
    class), drawn without replacement, class by class, from one generator seeded by ``seed``."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    chosen = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        chosen.append(idx if len(idx) <= per_class else rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _as_array(per_class: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in per_class], dtype=np.float64)


def group_gap(train_per_class: Sequence[float | None], test_per_class: Sequence[float | None],
              groups: Sequence[int], group_names: Sequence[str]) -> dict:
    """Class-balanced train and test accuracy (%) overall and per group, and the gap train - test.

    ``*_per_class`` hold one accuracy per class (None: the class has no images on that side);
    only classes with both enter the means. Returns ``{"train": {...}, "test": {...},
    "gap": {...}, "classes": {...}}`` keyed by "overall" and each group name; a group without
    such classes has None.
    """
    train, test = _as_array(train_per_class), _as_array(test_per_class)
    groups = np.asarray(groups)
    both = ~np.isnan(train) & ~np.isnan(test)
    out: dict = {"train": {}, "test": {}, "gap": {}, "classes": {}}
    masks = [("overall", both), *[(name, both & (groups == g)) for g, name in enumerate(group_names)]]
    for name, mask in masks:
        out["classes"][name] = int(mask.sum())
        if mask.any():
            tr, te = float(train[mask].mean()), float(test[mask].mean())
            out["train"][name], out["test"][name], out["gap"][name] = tr, te, tr - te
        else:
            out["train"][name] = out["test"][name] = out["gap"][name] = None
    return out


def measure_gap(exp, test: dict, quiet: bool = True) -> dict | None:
    """Train accuracy of ``exp``'s model and its gap to ``test`` (metrics of the test split), per group.

    The training images are seen through ``test``'s own test-time-ensemble mode, so both
    sides are measured alike. The subset is drawn with ``data.subset_seed``: runs on the same
    data measure the same images. None when ``eval.gap_per_class`` is 0.
    """
    per_class = exp.cfg.eval.gap_per_class
    if per_class == 0:
        return None
    idx = stratified_indices(exp.data.train.targets, per_class, exp.cfg.data.subset_seed)
    # The same evaluation path as the test split (transforms, precision, devices), on the subset.
    on_subset = replace(exp, data=replace(exp.data, train=Subset(exp.data.train, idx)))
    train = evaluate_model(on_subset, test["tte"], "train", quiet)
    return {"tte": test["tte"], "views_per_image": train["views_per_image"], "images_per_class": per_class,
            "train_images": int(len(idx)),
            **group_gap(train["per_class"], test["per_class"], exp.data.groups, exp.data.group_names),
            "train_per_class": train["per_class"]}


def saved_test_for(metrics: dict, tte: str) -> dict | None:
    """A run's saved test metrics measured with test-time-ensemble mode ``tte``, if it has them."""
    for key in ("test", "test_no_tte"):
        test = metrics.get(key)
        if test and test.get("tte") == tte:
            return test
    return None


def gap_against(metrics: dict, train: dict) -> dict | None:
    """The gap of a train-split evaluation (``train``) to a run's saved test metrics measured
    with the same test-time-ensemble mode; None when the run saved none with that mode."""
    test = saved_test_for(metrics, train["tte"])
    if test is None:
        return None
    data = metrics["data"]
    return {"tte": train["tte"], "train_images": train.get("num_samples"),
            **group_gap(train["per_class"], test["per_class"], class_groups(data), data["group_names"])}


